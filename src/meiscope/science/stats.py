"""The statistics: tests across cells, multiple-testing correction, intervals over replicates.

Pure functions of numpy arrays; scipy is imported inside the functions that need it.

- :func:`sign_test`, :func:`verdict`: the exact two-sided sign test on paired wins and losses, and
  the verdict it gives (+1 beats / 0 ties / -1 loses, words in :mod:`meiscope.science.catalogue`);
- :func:`paired_wilcoxon`, :func:`benjamini_hochberg`: the Wilcoxon signed-rank test on paired
  samples and the Benjamini-Hochberg false-discovery-rate adjustment;
- :func:`oneway_anova_p`: one-way ANOVA across images, vectorised over neurons;
- :func:`spearman_brown`: a split-half correlation corrected to full length;
- :func:`interval`: mean, s.d. and t-interval of the mean over replicates, on the log scale for
  ratios and kept inside the range the quantity can take (``bounds``);
- :func:`wilson_interval`, :func:`bootstrap_median_interval`: intervals over the cells of ONE
  replicate (a fraction of cells; the median of a per-cell figure, seeded, log scale for ratios);
- :func:`banded_verdict`: beats / ties / loses from a ratio's interval and a stated tie band.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from meiscope.errors import MeiscopeError
from meiscope.science.measures import image_sums

ALPHA = 0.05  # the level at which a sign test's verdict is not a tie


class StatisticsError(MeiscopeError, ValueError):
    """A statistic was asked of inputs it is not defined on (wrong shapes, NaN, p-values outside [0, 1])."""


# --------------------------------------------------------------------------------------
# paired comparisons across cells
# --------------------------------------------------------------------------------------
def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact binomial p-value of ``wins`` vs ``losses`` under p = 1/2 (1.0 with no pairs)."""
    from scipy.stats import binomtest

    if wins + losses == 0:
        return 1.0
    return float(binomtest(int(wins), int(wins + losses), 0.5).pvalue)


def verdict(outcomes: np.ndarray, alpha: float = ALPHA) -> tuple[int, int, float, int]:
    """``(wins, losses, sign-test p, verdict)`` from per-cell outcomes ``(n,)`` of +1 / 0 / -1.

    Ties (0) are dropped, the usual convention. The verdict is +1 (beats) or -1 (loses) when the
    sign test rejects at ``alpha``, else 0 (ties: no difference shown at this sample size).
    """
    outcomes = np.asarray(outcomes)
    wins, losses = int((outcomes > 0).sum()), int((outcomes < 0).sum())
    p = sign_test(wins, losses)
    return wins, losses, p, (0 if p >= alpha else (1 if wins > losses else -1))


def paired_wilcoxon(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided Wilcoxon signed-rank p-value for paired samples ``a (n,)``, ``b (n,)``.

    All-equal pairs give p = 1 (no evidence of a difference).

    Raises:
        StatisticsError: unequal or non 1-D shapes, empty inputs, NaN or infinite values.
    """
    from scipy.stats import wilcoxon

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.ndim != 1 or a.shape != b.shape or a.size == 0:
        raise StatisticsError(f"paired_wilcoxon needs two non-empty 1-D arrays of equal length "
                              f"(got shapes {a.shape} and {b.shape})")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise StatisticsError("paired_wilcoxon got NaN or infinite values")
    if np.all(a == b):
        return 1.0
    return float(wilcoxon(a, b, alternative="two-sided").pvalue)


def benjamini_hochberg(pvalues: Sequence[float]) -> np.ndarray:
    """``(m,)`` Benjamini-Hochberg adjusted p-values (false discovery rate), in the order given.

    ``adjusted_(i) = min_{j >= i} p_(j) * m / j`` over the ascending order, capped at 1.

    Raises:
        StatisticsError: not 1-D, or a p-value that is not finite or outside [0, 1].
    """
    p = np.asarray(pvalues, dtype=float)
    if p.ndim != 1:
        raise StatisticsError(f"benjamini_hochberg needs a 1-D array of p-values (got shape {p.shape})")
    if p.size == 0:
        return p.copy()
    if not (np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()):
        raise StatisticsError("benjamini_hochberg: p-values must be finite and in [0, 1]")
    m = p.size
    order = np.argsort(p)
    scaled = p[order] * m / np.arange(1, m + 1)
    adjusted_sorted = np.minimum.accumulate(scaled[::-1])[::-1]
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(adjusted_sorted, 1.0)
    return adjusted


# --------------------------------------------------------------------------------------
# across images
# --------------------------------------------------------------------------------------
def oneway_anova_p(responses: np.ndarray, trial_image: np.ndarray) -> np.ndarray:
    """One-way ANOVA across images, vectorised over neurons (the numbers of scipy's ``f_oneway``).

    ``F = (SS_between / (k - 1)) / (SS_within / (N - k))`` over the k images that have trials and
    the N trials; ``p = F.sf(F; k - 1, N - k)``.

    Args:
        responses: ``(n_trials, n_neurons)`` float64; trial_image: ``(n_trials,)`` int, >= 0.

    Returns:
        ``(n_neurons,)`` p-value; 0 for noiseless image-dependent responses, NaN for a constant neuron.

    Raises:
        StatisticsError: fewer than 2 images, or no more trials than images.
    """
    from scipy.stats import f

    sums, counts = image_sums(responses, trial_image)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums / counts[:, None]
    present = counts > 0
    k, n = int(present.sum()), int(counts.sum())
    if k < 2 or n - k < 1:
        raise StatisticsError(f"ANOVA needs >= 2 images and more trials than images (got {k} images, {n} trials)")
    grand = responses.mean(axis=0)
    ss_between = (counts[present, None] * (means[present] - grand) ** 2).sum(axis=0)
    ss_within = ((responses - means[trial_image]) ** 2).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        f_stat = (ss_between / (k - 1)) / (ss_within / (n - k))
    # f_stat is inf (p = 0) without within-image noise, NaN (p = NaN) for a constant neuron
    return f.sf(f_stat, k - 1, n - k)


def spearman_brown(r: np.ndarray) -> np.ndarray:
    """A split-half correlation ``r`` corrected to the full length: ``2 r / (1 + r)`` (same shape)."""
    return 2 * r / (1 + r)


# --------------------------------------------------------------------------------------
# over replicates
# --------------------------------------------------------------------------------------
def interval(values: Sequence[Optional[float]], confidence: float, log_scale: bool = False,
             bounds: tuple[Optional[float], Optional[float]] = (None, None)) -> dict[str, Any]:
    """Mean, standard deviation and t-interval of the mean over replicates (finite values only).

    With ``log_scale`` (ratios) the interval is computed on the logarithms of the positive values
    and transformed back: ``mean`` is then the geometric mean and ``sd`` the s.d. of the natural
    logs, and the interval stays > 0.

    ``bounds``: the range the quantity can take (``Metric.bounds`` of the catalogue: [0, 1] for a
    fraction, [-1, 1] for a correlation, >= 0 for a count); the interval's ends are CLIPPED to it
    (the t-interval intersected with the possible values: an end at a bound says the replicates do
    not rule the bound out). Mean and s.d. are not changed. None: unbounded on that side.

    Args:
        values: ``(k,)`` one value per replicate, None where a replicate has none.
        confidence: e.g. 0.95.

    Returns:
        ``{"values", "n", "scale", "mean", "sd", "ci_low", "ci_high"}`` (None where undefined:
        no value, or one value for the s.d. and interval).
    """
    from scipy.stats import t

    usable = [v for v in values if v is not None and np.isfinite(v) and (v > 0 or not log_scale)]
    finite = np.log(usable) if log_scale else np.array(usable, dtype=np.float64)
    back = np.exp if log_scale else (lambda x: x)
    out: dict[str, Any] = {"values": values, "n": int(len(finite)), "scale": "log" if log_scale else "linear"}
    if len(finite) == 0:
        return {**out, "mean": None, "sd": None, "ci_low": None, "ci_high": None}
    mean = float(finite.mean())
    if len(finite) < 2:
        return {**out, "mean": float(back(mean)), "sd": None, "ci_low": None, "ci_high": None}
    sd = float(finite.std(ddof=1))
    half = float(t.ppf((1 + confidence) / 2, len(finite) - 1) * sd / np.sqrt(len(finite)))
    low, high = float(back(mean - half)), float(back(mean + half))
    floor, ceiling = bounds
    if floor is not None:
        low, high = max(low, floor), max(high, floor)
    if ceiling is not None:
        low, high = min(low, ceiling), min(high, ceiling)
    return {**out, "mean": float(back(mean)), "sd": sd, "ci_low": low, "ci_high": high}


# --------------------------------------------------------------------------------------
# over cells, within one replicate
# --------------------------------------------------------------------------------------
def wilson_interval(successes: int, n: int, confidence: float) -> tuple[float, float]:
    """Wilson score interval of a fraction ``successes / n`` (Wilson 1927): always inside [0, 1].

    Unlike the normal approximation it never leaves [0, 1] and is not degenerate at 0 or n
    successes (0 of 10 gives [0, 0.28], not [0, 0]). ``(nan, nan)`` when ``n`` is 0.

    Raises:
        StatisticsError: ``successes`` outside [0, n], or ``confidence`` outside (0, 1).
    """
    from scipy.stats import norm

    if not 0 < confidence < 1:
        raise StatisticsError(f"wilson_interval: confidence must be in (0, 1) (got {confidence})")
    if not 0 <= successes <= n:
        raise StatisticsError(f"wilson_interval: successes must be in [0, n] (got {successes} of {n})")
    if n == 0:
        return float("nan"), float("nan")
    z = float(norm.ppf((1 + confidence) / 2))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # at 0 (n) successes the low (high) end is exactly 0 (1); float rounding would leave 1e-17 there
    low = 0.0 if successes == 0 else max(centre - half, 0.0)
    high = 1.0 if successes == n else min(centre + half, 1.0)
    return float(low), float(high)


def bootstrap_median_interval(values: np.ndarray, confidence: float, n_boot: int, seed: int,
                              log_scale: bool = False,
                              bounds: tuple[Optional[float], Optional[float]] = (None, None)) -> tuple[float, float]:
    """Percentile bootstrap interval of the median of ``values (n,)`` over cells (Efron & Tibshirani 1993).

    Cells are resampled with replacement ``n_boot`` times from ``numpy.random.default_rng(seed)``, so
    the interval is reproducible. With ``log_scale`` (ratios, which must then be > 0) the medians are
    taken of the logarithms and transformed back, so the interval is > 0 and 2 and 1/2 are equally
    far from 1. The ends are clipped to ``bounds`` (e.g. [0, 1] for a fraction of the optimum).
    Non-finite values are dropped; ``(nan, nan)`` when fewer than two are left (every resample of one
    cell is that cell: a zero-width interval would claim a certainty that one cell cannot give).

    Raises:
        StatisticsError: ``confidence`` outside (0, 1), ``n_boot`` < 1, or a value <= 0 on the log scale.
    """
    if not 0 < confidence < 1:
        raise StatisticsError(f"bootstrap_median_interval: confidence must be in (0, 1) (got {confidence})")
    if n_boot < 1:
        raise StatisticsError(f"bootstrap_median_interval: n_boot must be >= 1 (got {n_boot})")
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    if x.size < 2:
        return float("nan"), float("nan")
    if log_scale:
        if (x <= 0).any():
            raise StatisticsError("bootstrap_median_interval: ratios on the log scale must be > 0")
        x = np.log(x)
    rng = np.random.default_rng(seed)
    medians = np.median(x[rng.integers(0, x.size, size=(n_boot, x.size))], axis=1)
    low, high = np.quantile(medians, [(1 - confidence) / 2, (1 + confidence) / 2])
    if log_scale:
        low, high = np.exp(low), np.exp(high)
    floor, ceiling = bounds
    low, high = float(low), float(high)
    if floor is not None:
        low, high = max(low, floor), max(high, floor)
    if ceiling is not None:
        low, high = min(low, ceiling), min(high, ceiling)
    return low, high


def banded_verdict(ci_low: Optional[float], ci_high: Optional[float], tolerance: float) -> Optional[int]:
    """A verdict from the interval ``[ci_low, ci_high]`` of a ratio A / B and a tie band of ``tolerance``.

    The tie band is ``[1 / (1 + tolerance), 1 + tolerance]``: differences smaller than that are not
    worth telling apart. +1 (A beats B) when the whole interval lies above the band, -1 (A loses)
    when it lies below it, 0 (ties) when the interval meets the band; with ``tolerance`` 0 that is
    "the interval contains 1". None when the interval is undefined (None or NaN).

    Raises:
        StatisticsError: a negative or non-finite ``tolerance``, or ``ci_low > ci_high``.
    """
    if not (np.isfinite(tolerance) and tolerance >= 0):
        raise StatisticsError(f"banded_verdict: tolerance must be finite and >= 0 (got {tolerance})")
    if ci_low is None or ci_high is None or not (np.isfinite(ci_low) and np.isfinite(ci_high)):
        return None
    if ci_low > ci_high:
        raise StatisticsError(f"banded_verdict: interval [{ci_low}, {ci_high}] has its ends swapped")
    if ci_low > 1 + tolerance:
        return 1
    if ci_high < 1 / (1 + tolerance):
        return -1
    return 0
