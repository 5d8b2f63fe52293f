"""The range methods' names, importable without numpy (the CLI's ``--method`` choices): each observer's
``method`` (``observers.OBSERVERS``; a test keeps the two equal) plus ``auto`` (MSE on conv inputs)."""

OBSERVER_METHODS = ("minmax", "percentile", "entropy", "mse")
METHODS = ("auto", *OBSERVER_METHODS)
