"""Hyperparameter search with Optuna (``modelcycle tune``): space.py reads and checks the space
file, study.py holds the Optuna side (storage, samplers, pruners), search.py runs the trials as
ordinary runs and the workers, report.py writes the study report.

Named ``tuning``, not ``tune``: importing a subpackage ``modelcycle.tune`` would set the attribute
``modelcycle.tune`` to the package and hide the function ``modelcycle.tune(...)``."""
