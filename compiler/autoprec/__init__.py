"""Automatic mixed precision: plan space, switch model, sensitivity, precision search, plan recipes."""
