"""How alike two images are, with and without regard to phase.

Used on both sides of the closed loop: the MEI stage compares the starts of one neuron's MEI
(:func:`seed_consistency`, :func:`phase_aware_consistency`), the validate stage compares MEIs
with true optima (:func:`span_correlation` for phase-invariant cells). Every measure centres and
normalises the images first, so it ignores mean luminance and contrast.
"""

from __future__ import annotations

import numpy as np


def _unit(x: np.ndarray) -> np.ndarray:
    """``x`` flattened, centred and scaled to unit norm (all zeros stays all zeros)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    x = x - x.mean()
    n = np.linalg.norm(x)
    return x / n if n > 0 else x


def image_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two images (signed: a contrast-reversed copy scores -1)."""
    return float(_unit(a) @ _unit(b))


def quadrature_partner(image: np.ndarray) -> np.ndarray:
    """The image with every spatial frequency shifted by 90 degrees of phase.

    The sign of the shift follows the half-plane of the image's dominant frequency, which makes
    this the 2-D Hilbert transform that turns an even Gabor into the odd one. ``(H, W)`` -> ``(H, W)``.
    """
    spectrum = np.fft.fft2(image - image.mean())
    fy, fx = np.meshgrid(np.fft.fftfreq(image.shape[0]), np.fft.fftfreq(image.shape[1]), indexing="ij")
    peak = np.unravel_index(np.argmax(np.abs(spectrum)), spectrum.shape)
    direction = np.array([fy[peak], fx[peak]])
    side = np.sign(fy * direction[0] + fx * direction[1])
    return np.real(np.fft.ifft2(-1j * side * spectrum))


def span_correlation(image: np.ndarray, basis: np.ndarray) -> float:
    """Largest correlation of ``image`` with any image in the span of ``basis`` ``(k, H, W)``.

    The norm of the centred, unit-norm image's projection onto the orthonormalised, centred basis:
    for a complex cell's two quadrature filters this is ``max over phi of corr(image, cos(phi) g1 +
    sin(phi) g2)``, so every phase of its optimum scores 1. In [0, 1].
    """
    vectors = np.stack([_unit(b) for b in basis], axis=1)  # (P, k)
    q, r = np.linalg.qr(vectors)
    keep = np.abs(np.diag(r)) > 1e-8 * max(np.abs(np.diag(r)).max(), 1e-300)
    return float(np.linalg.norm(q[:, keep].T @ _unit(image)))


def phase_invariant_correlation(image: np.ndarray, reference: np.ndarray) -> float:
    """Largest correlation of ``image`` with ``reference`` shifted to any phase (in [0, 1])."""
    return span_correlation(image, np.stack([reference, quadrature_partner(reference)]))


def phase_aware_consistency(all_starts: np.ndarray) -> np.ndarray:
    """``(n_neurons,)`` how alike the starts of each neuron's MEI are, ignoring phase, in [0, 1].

    For each pair of starts ``(i, j)``: the mean of :func:`phase_invariant_correlation` both ways
    (the measure is not symmetric); averaged over pairs. Two MEIs that are the same pattern at
    another phase -- equally good optima for a phase-invariant (complex) cell -- score ~1, while the
    signed correlation would call them opposite (-1). A different orientation, frequency or place
    scores low. NaN with a single start.

    Args:
        all_starts: ``(n_neurons, n_starts, H, W)``.
    """
    n_neurons, n_starts = all_starts.shape[:2]
    if n_starts < 2:
        return np.full(n_neurons, np.nan)
    out = np.empty(n_neurons)
    pairs = [(i, j) for i in range(n_starts) for j in range(i + 1, n_starts)]
    for n in range(n_neurons):
        starts = all_starts[n]
        out[n] = np.mean([(phase_invariant_correlation(starts[i], starts[j])
                           + phase_invariant_correlation(starts[j], starts[i])) / 2 for i, j in pairs])
    return out


def seed_consistency(all_starts: np.ndarray) -> np.ndarray:
    """``(n_neurons,)`` mean pairwise Pearson correlation between the starts ``(n_neurons, n_starts, H, W)``."""
    n_neurons, n_starts = all_starts.shape[:2]
    if n_starts < 2:
        return np.full(n_neurons, np.nan)
    flat = all_starts.reshape(n_neurons, n_starts, -1).astype(np.float64)
    flat = flat - flat.mean(axis=2, keepdims=True)
    flat /= np.maximum(np.linalg.norm(flat, axis=2, keepdims=True), 1e-12)
    corr = flat @ flat.transpose(0, 2, 1)  # (n_neurons, n_starts, n_starts)
    upper = np.triu_indices(n_starts, k=1)
    return corr[:, upper[0], upper[1]].mean(axis=1)
