"""One module per pipeline stage, each with a ``run`` function; :mod:`meiscope.pipeline` lists them in order.

Kept empty on purpose: a stage module's code dependencies (dvc.yaml ``deps``) are what it imports,
and this package's ``__init__`` is imported with every one of them.
"""
