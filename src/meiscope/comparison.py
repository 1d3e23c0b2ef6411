"""Paired comparisons of two stimuli across cells, with statistics that cannot blow up.

Responses here are firing rates ABOVE baseline (or model activations): non-negative, and exactly
zero when a stimulus does not drive a cell at all (a rectified subunit). Ratios of such numbers
explode or vanish at zero, so a comparison of stimulus A with stimulus B across cells reports

- win / loss / tie counts (a tie: equal within a relative tolerance, both zero included) and the
  two-sided sign test on wins vs losses (ties dropped, the usual convention);
- the ratio A / B summarised as the median of log-ratios over the cells where BOTH are positive,
  turned back into a ratio (``exp(median log)``);
- the counts of cells where A, B or both are zero, reported beside it and never folded in;
- a verdict: +1 "A beats B" or -1 "A loses to B" when the sign test rejects at ``alpha``, else 0
  "ties": no difference shown (at this sample size; not a proof of equality).

The sign test and the verdict are :mod:`meiscope.science.stats`'; the words of a verdict are the
catalogue's (:data:`meiscope.science.catalogue.VERDICT_WORDS`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from meiscope.science.stats import ALPHA, verdict

ZERO = 1e-12  # responses at or below this are "zero" (rectified); rates are O(1-100) Hz
REL_TOL = 1e-6  # relative difference below which two responses tie


@dataclass
class Comparison:
    """A vs B over ``n`` cells (see the module docstring)."""

    n: int
    wins: int
    losses: int
    ties: int
    n_a_zero: int
    n_b_zero: int
    n_both_zero: int
    n_both_positive: int
    frac_a_beats_b: float
    sign_p: float
    ratio_median: float
    verdict: int

    def as_dict(self) -> dict:
        return asdict(self)


def log_ratio_median(a: np.ndarray, b: np.ndarray) -> float:
    """``exp(median(log(a / b)))`` over the cells where both are positive; NaN when there are none."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    both = (a > ZERO) & (b > ZERO)
    if not both.any():
        return float("nan")
    return float(np.exp(np.median(np.log(a[both]) - np.log(b[both]))))


def paired_outcomes(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per cell: +1 when A beats B, -1 when it loses, 0 for a tie (within ``REL_TOL``, or both zero)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = np.maximum(np.maximum(np.abs(a), np.abs(b)), ZERO)
    diff = a - b
    return np.where(np.abs(diff) <= REL_TOL * scale, 0, np.sign(diff)).astype(int)


def compare(a: np.ndarray, b: np.ndarray, alpha: float = ALPHA) -> Comparison:
    """Compare responses ``a`` and ``b`` ``(n_cells,)`` cell by cell (see the module docstring)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"compare: a and b must be 1-D of equal length (got {a.shape} and {b.shape})")
    outcome = paired_outcomes(a, b)
    wins, losses, p, decision = verdict(outcome, alpha)
    a_zero, b_zero = a <= ZERO, b <= ZERO
    return Comparison(
        n=len(a), wins=wins, losses=losses, ties=int((outcome == 0).sum()), n_a_zero=int(a_zero.sum()),
        n_b_zero=int(b_zero.sum()), n_both_zero=int((a_zero & b_zero).sum()),
        n_both_positive=int((~a_zero & ~b_zero).sum()),
        frac_a_beats_b=wins / len(a) if len(a) else float("nan"), sign_p=p,
        ratio_median=log_ratio_median(a, b), verdict=decision)
