"""meiscope: Most Exciting Inputs of mouse V1 neurons from Allen Brain Observatory natural scenes.

The pipeline, one module per stage: ``synthetic`` / ``allen`` (raw sessions) -> ``responses``
(extract) -> ``ranking`` -> ``model`` (train) -> ``tuning`` -> ``mei`` -> ``gabor`` ->
``validation`` -> ``report``.
"""

__version__ = "0.1.0"
