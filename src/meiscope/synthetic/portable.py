"""exp and log with the same bits on every x86-64 CPU, for everything the synthetic data is made of.

numpy's float64 ``exp`` and ``log`` take an AVX-512 code path on CPUs that have it (numpy 1.23),
whose results differ in the last bit from the scalar path other CPUs take; a last-bit change in a
cell's parameters changes the bytes of its ground truth. These go through the C library's scalar
functions on every CPU instead (~0.1 us per element: fine for the arrays the generator uses).
"""

from __future__ import annotations

import math

import numpy as np


def _elementwise(function, values) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    out = np.fromiter(map(function, array.ravel().tolist()), dtype=np.float64, count=array.size)
    return out.reshape(array.shape)


def exp(values) -> np.ndarray:
    """``np.exp`` of float64 values, CPU-independent."""
    return _elementwise(math.exp, values)


def log(values) -> np.ndarray:
    """``np.log`` of positive float64 values, CPU-independent."""
    return _elementwise(math.log, values)


def log_uniform(rng: np.random.Generator, low, high, size=None) -> np.ndarray:
    """Draws whose log is uniform between ``log(low)`` and ``log(high)`` (bounds may be arrays)."""
    return exp(rng.uniform(log(low), log(high), size))
