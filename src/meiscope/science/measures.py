"""The measures: correlations of responses, one implementation each (numpy only, pure functions).

Conventions: ``responses`` is ``(n_trials, n_neurons)`` single trials, ``trial_image`` ``(n_trials,)``
the non-negative integer image index of each trial. A correlation that is undefined (a column
that does not vary) is NaN here; a caller that wants another convention (the model's scores report
0, "no information") says so where it calls.
"""

from __future__ import annotations

import numpy as np

# A column is constant when its spread (root-mean-square deviation from its mean) is at most this
# fraction of its largest magnitude: equal values up to float rounding (the mean of n copies of 0.1 is
# not exactly 0.1), never a real signal in float64.
CONSTANT_RTOL = 1e-12


def _constant(x: np.ndarray, centred_ss: np.ndarray) -> np.ndarray:
    """``(k,)`` bool: which columns of ``x (n, k)`` are constant (see :data:`CONSTANT_RTOL`)."""
    spread = np.sqrt(centred_ss / x.shape[0])
    return spread <= CONSTANT_RTOL * np.abs(x).max(axis=0)


def pearson_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each column of ``a`` with the same column of ``b``.

    Args:
        a, b: ``(n, k)``: n paired samples of k variables (e.g. images x neurons).

    Returns:
        ``(k,)`` float64 in [-1, 1]; NaN where a column of either is constant (the correlation is
        undefined), and everywhere when ``n < 2``.

    Raises:
        ValueError: if ``a`` and ``b`` are not 2-D arrays of the same shape.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"pearson_columns: a and b must be (n, k) of one shape (got {a.shape} and {b.shape})")
    if a.shape[0] < 2:
        return np.full(a.shape[1], np.nan)
    da = a - a.mean(axis=0)
    db = b - b.mean(axis=0)
    ss_a = (da * da).sum(axis=0)
    ss_b = (db * db).sum(axis=0)
    denom = np.sqrt(ss_a * ss_b)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (da * db).sum(axis=0) / denom
    defined = (denom > 0) & ~_constant(a, ss_a) & ~_constant(b, ss_b)
    return np.where(defined, r, np.nan)


def image_sums(responses: np.ndarray, trial_image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-image sums of the trials and trial counts.

    Args:
        responses: ``(n_trials, n_neurons)`` float64; trial_image: ``(n_trials,)`` int, >= 0.

    Returns:
        ``sums (n_images, n_neurons)`` (0 for an image without trials) and ``counts (n_images,)``, for
        images ``0 .. trial_image.max()``. Each image's trials are added in trial order.
    """
    n_images = int(trial_image.max()) + 1 if trial_image.size else 0
    counts = np.bincount(trial_image, minlength=n_images)
    order = np.argsort(trial_image, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    sums = np.zeros((n_images, responses.shape[1]))
    present = counts > 0
    # reduceat over the image-sorted trials: one pass, no Python loop over images
    sums[present] = np.add.reduceat(responses[order], starts[present], axis=0)
    return sums, counts


def oracle_correlation(responses: np.ndarray, trial_image: np.ndarray) -> np.ndarray:
    """Leave-one-repeat-out oracle correlation: the noise ceiling of predicting single trials.

    Every trial of an image with >= 2 repeats is paired with the mean of the OTHER repeats of the
    same image; the pairs are correlated (:func:`pearson_columns`) across all such trials, per neuron.
    With signal variance ``s2`` across images, noise variance ``n2`` and R repeats it is about
    ``s2 / sqrt((s2 + n2) (s2 + n2 / (R - 1)))``.

    Args:
        responses: ``(n_trials, n_neurons)`` single-trial responses.
        trial_image: ``(n_trials,)`` non-negative int image index of each trial.

    Returns:
        ``(n_neurons,)``: 1 for noiseless repeats, ~0 for pure noise; NaN for a neuron whose
        responses do not vary, and for every neuron when fewer than 2 trials have a repeat.
    """
    responses = np.asarray(responses, dtype=np.float64)
    trial_image = np.asarray(trial_image).astype(np.int64, copy=False)
    sums, counts = image_sums(responses, trial_image)
    keep = counts[trial_image] >= 2
    resp, img = responses[keep], trial_image[keep]
    others = (sums[img] - resp) / (counts[img] - 1)[:, None]
    return pearson_columns(resp, others)
