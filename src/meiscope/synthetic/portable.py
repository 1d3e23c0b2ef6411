"""exp, log and power with the same bits on every x86-64 CPU, for everything the synthetic data is made of.

numpy's float64 ``exp`` and ``log`` take an AVX-512 code path on CPUs that have it (numpy 1.23),
whose results differ in the last bit from the scalar path other CPUs take, and the functions numpy
takes from Intel's SVML may too (``power``, which ``**`` calls but for the exponents 2, 0.5, 1, 0 and
-1); a last-bit change in a cell's parameters changes the bytes of its ground truth. These go through
the C library's scalar functions on every CPU instead, which is what numpy computes on a CPU without
AVX-512 (~0.1 us per element, in blocks of bounded memory).
"""

from __future__ import annotations

import math
from itertools import repeat

import numpy as np


BLOCK = 1 << 20  # elements per Python list: a (300, 100k) trace converts 8 MB at a time, not 2 GB


def _elementwise(function, *operands) -> np.ndarray:
    operands = [np.asarray(a, dtype=np.float64) for a in operands]
    shape = np.broadcast_shapes(*(a.shape for a in operands))
    # a scalar operand (an exponent) is repeated, not broadcast into a copy of the whole array
    flat = [float(a.reshape(-1)[0]) if a.size == 1 else np.broadcast_to(a, shape).reshape(-1) for a in operands]
    out = np.empty(int(np.prod(shape)), dtype=np.float64)
    for start in range(0, out.size, BLOCK):
        stop = min(start + BLOCK, out.size)
        block = [repeat(a, stop - start) if isinstance(a, float) else a[start:stop].tolist() for a in flat]
        out[start:stop] = np.fromiter(map(function, *block), dtype=np.float64, count=stop - start)
    return out.reshape(shape)


def exp(values) -> np.ndarray:
    """``np.exp`` of float64 values, CPU-independent."""
    return _elementwise(math.exp, values)


def log(values) -> np.ndarray:
    """``np.log`` of positive float64 values, CPU-independent."""
    return _elementwise(math.log, values)


def power(base, exponent) -> np.ndarray:
    """``base ** exponent`` of float64 values (broadcast), CPU-independent (C's ``pow``)."""
    return _elementwise(math.pow, base, exponent)


def log_uniform(rng: np.random.Generator, low, high, size=None) -> np.ndarray:
    """Draws whose log is uniform between ``log(low)`` and ``log(high)`` (bounds may be arrays)."""
    return exp(rng.uniform(log(low), log(high), size))
