"""meiscope: Most Exciting Inputs of mouse V1 neurons from Allen Brain Observatory natural scenes.

The pipeline, one module per stage: ``synthetic`` / ``allen`` (raw sessions) -> ``responses``
(extract) -> ``ranking`` -> ``model`` (train) -> ``tuning`` -> ``mei`` -> ``gabor`` ->
``validation`` -> ``report``.

From Python, ``meiscope.load_study(path)`` reads a trained study (:mod:`meiscope.api`). It is
imported on first use, so ``import meiscope`` itself loads nothing heavy (no numpy, no torch).
"""

import importlib
from typing import Any

__version__ = "0.1.0"
__all__ = ["load_study", "__version__"]


def __getattr__(name: str) -> Any:
    """``meiscope.load_study``: imported from :mod:`meiscope.api` when first asked for."""
    if name == "load_study":
        # by name, not an import statement: `meiscope dvcfile` counts every import statement of this
        # file as code that every stage runs, and no stage runs the API (editing it reruns nothing)
        return importlib.import_module("meiscope.api").load_study
    raise AttributeError(f"module 'meiscope' has no attribute {name!r}")
