"""Paired comparisons: zero responses are counted, never turned into 1e10 or 0 ratios."""

import numpy as np
import pytest

from meiscope.comparison import compare, log_ratio_median, paired_outcomes
from meiscope.science.stats import sign_test


def test_zero_denominators_are_counted_not_folded_into_the_ratio():
    a = np.array([1.0, 0.0, 2.0, 0.0, 6.0])
    b = np.array([0.0, 1.0, 0.0, 0.0, 2.0])
    c = compare(a, b)
    assert (c.n_a_zero, c.n_b_zero, c.n_both_zero, c.n_both_positive) == (2, 3, 1, 1)
    assert c.ratio_median == pytest.approx(3.0)  # only the cell where both are positive
    assert (c.wins, c.losses, c.ties) == (3, 1, 1)
    assert np.isnan(log_ratio_median(np.zeros(3), np.ones(3)))


def test_log_ratio_median_is_symmetric_under_swapping():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.1, 5, 9), rng.uniform(0.1, 5, 9)
    assert log_ratio_median(a, b) == pytest.approx(1 / log_ratio_median(b, a))


def test_ties_within_tolerance_and_the_exact_sign_test():
    assert list(paired_outcomes(np.array([1.0, 1.0, 2.0, 0.0]), np.array([1.0 + 1e-9, 2.0, 1.0, 0.0]))) == [0, -1, 1, 0]
    assert sign_test(9, 1) == pytest.approx(22 / 1024)  # 2 * P(X >= 9), X ~ Binomial(10, 1/2)
    assert sign_test(0, 0) == 1.0
    wins = compare(np.arange(1.0, 11.0) + 1, np.arange(1.0, 11.0))
    assert wins.verdict == 1 and wins.frac_a_beats_b == 1.0
    few = compare(np.array([2.0, 2.0, 1.0]), np.array([1.0, 1.0, 2.0]))
    assert few.verdict == 0  # 2 wins of 3 is no evidence
    with pytest.raises(ValueError, match="equal length"):
        compare(np.ones(3), np.ones(4))
