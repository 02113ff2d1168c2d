"""IdGlow core: framework-free code shared by the Dagster assets, training and evaluation.

Nothing in this package imports Dagster, so a torchrun worker, a notebook or a test can use it.
"""

__version__ = "0.1.0"
