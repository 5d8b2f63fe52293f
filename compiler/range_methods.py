"""The range methods' names, importable without numpy (the CLI's ``--method`` choices): each observer's
``method`` (``observers.OBSERVERS``; a test keeps the two equal) plus ``auto`` (MSE on conv inputs) and
``select`` (min/max or percentile, whichever moves the output less on calibration samples:
``quant/range_select``; the default)."""

OBSERVER_METHODS = ("minmax", "percentile", "entropy", "mse")
METHODS = ("select", "auto", *OBSERVER_METHODS)
DEFAULT_METHOD = "select"
