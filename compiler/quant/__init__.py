"""Quantization specs, plans, target profiles, recipes and the planner."""
