"""The statistics: sign test and verdicts, Wilcoxon, Benjamini-Hochberg, ANOVA, intervals that stay possible."""

import numpy as np
import pytest
from scipy import stats as scipy_stats

from meiscope.science.catalogue import lookup
from meiscope.science.stats import (StatisticsError, benjamini_hochberg, interval, oneway_anova_p, paired_wilcoxon,
                                    sign_test, spearman_brown, verdict)


def test_sign_test_and_verdict():
    assert sign_test(9, 1) == pytest.approx(22 / 1024)  # 2 * P(X >= 9), X ~ Binomial(10, 1/2)
    assert sign_test(0, 0) == 1.0
    assert verdict(np.array([1] * 10 + [0] * 5)) == (10, 0, pytest.approx(2 / 1024), 1)
    assert verdict(np.array([-1] * 9 + [1]))[3] == -1
    assert verdict(np.array([1, 1, -1, 0]))[3] == 0  # 2 wins of 3 is no evidence: a tie


def test_paired_wilcoxon():
    rng = np.random.default_rng(0)
    b = rng.normal(size=30)
    assert paired_wilcoxon(b + 1 + 0.1 * rng.normal(size=30), b) < 1e-5
    assert paired_wilcoxon(b + 0.01 * rng.normal(size=30), b) > 0.05
    assert paired_wilcoxon(b, b) == 1.0
    with pytest.raises(StatisticsError, match="equal length"):
        paired_wilcoxon([1.0, 2.0], [1.0])
    with pytest.raises(StatisticsError, match="NaN"):
        paired_wilcoxon([1.0, np.nan], [1.0, 2.0])


def test_benjamini_hochberg_on_known_p_values():
    # sorted 0.01, 0.03, 0.04, 0.2 -> * 4 / rank = 0.04, 0.06, 0.0533, 0.2 -> running min from the top
    np.testing.assert_allclose(benjamini_hochberg([0.01, 0.04, 0.03, 0.2]), [0.04, 0.16 / 3, 0.16 / 3, 0.2])
    np.testing.assert_allclose(benjamini_hochberg([0.9, 0.5, 0.95]), 0.95)  # 1.35, 1.0, 0.95 -> running min
    np.testing.assert_allclose(benjamini_hochberg([0.6, 0.8]), [0.8, 0.8])
    assert benjamini_hochberg([0.5, 0.5, 0.5, 0.5]).tolist() == [0.5] * 4
    assert benjamini_hochberg([]).size == 0
    with pytest.raises(StatisticsError, match=r"\[0, 1\]"):
        benjamini_hochberg([0.5, 1.5])
    with pytest.raises(StatisticsError, match="1-D"):
        benjamini_hochberg([[0.5]])


def test_oneway_anova_is_scipys_per_neuron():
    rng = np.random.default_rng(1)
    trial_image = rng.integers(0, 12, 80)
    responses = rng.normal(size=(12, 3))[trial_image] + rng.normal(size=(80, 3))
    p = oneway_anova_p(responses, trial_image)
    for j in range(3):
        groups = [responses[trial_image == i, j] for i in np.unique(trial_image)]
        assert p[j] == pytest.approx(scipy_stats.f_oneway(*groups).pvalue, rel=1e-8)
    with pytest.raises(StatisticsError, match="more trials than images"):
        oneway_anova_p(responses[:3], np.arange(3))


def test_spearman_brown():
    np.testing.assert_allclose(spearman_brown(np.array([0.0, 0.5, 1.0])), [0.0, 2 / 3, 1.0])


def test_interval_is_the_t_interval_of_the_mean():
    entry = interval([0.5, 0.7, 0.9, None], 0.95)
    half = scipy_stats.t.ppf(0.975, 2) * 0.2 / np.sqrt(3)
    assert entry["n"] == 3 and entry["mean"] == pytest.approx(0.7) and entry["sd"] == pytest.approx(0.2)
    assert (entry["ci_low"], entry["ci_high"]) == pytest.approx((0.7 - half, 0.7 + half))
    assert interval([0.4], 0.95)["ci_low"] is None and interval([None], 0.95)["mean"] is None


def test_an_interval_stays_inside_what_the_quantity_can_take():
    fraction = lookup("validate", "gt_frac_mei_beats_gabor_simple")
    assert fraction.bounds == (0.0, 1.0)
    entry = interval([0.0, 0.0, 1.0], 0.95, bounds=fraction.bounds)  # unclipped: 0.33 [-1.10, 1.77]
    assert entry["mean"] == pytest.approx(1 / 3) and (entry["ci_low"], entry["ci_high"]) == (0.0, 1.0)
    count = lookup("validate", "gt_n_zero_rate_mei_conjunction")
    assert interval([0, 0, 1], 0.95, bounds=count.bounds)["ci_low"] == 0.0
    corr = lookup("validate", "gt_mei_corr_median_simple")
    assert interval([0.9, 0.99, 0.3], 0.95, bounds=corr.bounds)["ci_high"] == 1.0
    # a rate as a fraction of the optimum: 0.21 [-0.59, 1.00] unclipped
    ratio_to_optimum = lookup("validate", "gt_mei_rate_ratio_median_simple")
    clipped = interval([0.02, 0.02, 0.6], 0.95, bounds=ratio_to_optimum.bounds)
    assert 0.0 == clipped["ci_low"] < clipped["mean"] < clipped["ci_high"] <= 1.0
    # a ratio averaged on the log scale is positive without clipping, its mean geometric
    ratio = lookup("gabor", "mei_over_gabor_median")
    entry = interval([0.05, 1.0, 20.0], 0.95, ratio.log_scale, ratio.bounds)
    assert entry["scale"] == "log" and entry["mean"] == pytest.approx(1.0) and 0 < entry["ci_low"] < 0.05
    # a bound that does not bind changes nothing
    assert interval([0.5, 0.55, 0.6], 0.95, bounds=(0.0, 1.0)) == interval([0.5, 0.55, 0.6], 0.95)


def test_wilson_interval_stays_in_0_1_and_matches_the_closed_form():
    from meiscope.science.stats import wilson_interval

    z2 = 1.959963984540054 ** 2
    assert wilson_interval(0, 10, 0.95) == (0.0, pytest.approx(z2 / (10 + z2)))  # not [0, 0]
    assert wilson_interval(10, 10, 0.95) == (pytest.approx(10 / (10 + z2)), 1.0)
    low, high = wilson_interval(5, 10, 0.95)
    assert low == pytest.approx(1 - high) and 0 < low < 0.5 < high < 1  # symmetric about 1/2
    # the case a t-interval over 3 replicates got wrong, 0.33 [-1.10, 1.77]: 1 of 3 stays inside [0, 1]
    assert 0 < wilson_interval(1, 3, 0.95)[0] < 1 / 3 < wilson_interval(1, 3, 0.95)[1] < 1
    assert np.isnan(wilson_interval(0, 0, 0.95)).all()
    with pytest.raises(StatisticsError, match="successes"):
        wilson_interval(4, 3, 0.95)
    with pytest.raises(StatisticsError, match="confidence"):
        wilson_interval(1, 3, 1.0)


def test_bootstrap_median_interval_is_seeded_log_scaled_and_bounded():
    from meiscope.science.stats import bootstrap_median_interval

    ratios = np.exp(np.random.default_rng(0).normal(0, 0.3, 60))
    low, high = bootstrap_median_interval(ratios, 0.95, 2000, seed=5, log_scale=True)
    assert 0 < low < np.median(ratios) < high
    assert bootstrap_median_interval(ratios, 0.95, 2000, seed=5, log_scale=True) == (low, high)
    # on the log scale, inverting every ratio inverts the interval (2 and 1/2 are equally far from 1)
    inv = bootstrap_median_interval(1 / ratios, 0.95, 2000, seed=5, log_scale=True)
    assert inv == (pytest.approx(1 / high), pytest.approx(1 / low))
    assert bootstrap_median_interval(np.full(7, 0.8), 0.95, 1000, seed=0) == (pytest.approx(0.8), pytest.approx(0.8))
    # clipped to the range: fractions of an optimum near 1 never get an end above 1
    near_one = np.clip(1 - np.abs(np.random.default_rng(1).normal(0, 0.02, 5)), 0, 1) * 1.03
    assert bootstrap_median_interval(near_one, 0.95, 1000, seed=0, log_scale=True, bounds=(0, 1))[1] <= 1.0
    assert np.isnan(bootstrap_median_interval(np.array([np.nan]), 0.95, 1000, seed=0)).all()
    # one cell pins nothing down: no interval (not the zero-width [x, x] every resample would give)
    assert np.isnan(bootstrap_median_interval(np.array([1.3, np.nan]), 0.95, 1000, seed=0, log_scale=True)).all()
    with pytest.raises(StatisticsError, match="> 0"):
        bootstrap_median_interval(np.array([1.0, 0.0]), 0.95, 1000, seed=0, log_scale=True)
    with pytest.raises(StatisticsError, match="n_boot"):
        bootstrap_median_interval(ratios, 0.95, 0, seed=0)


def test_banded_verdict_reads_the_interval_against_the_tie_band():
    from meiscope.science.stats import banded_verdict

    assert banded_verdict(1.06, 1.2, 0.05) == 1          # wholly above 1.05
    assert banded_verdict(0.80, 0.94, 0.05) == -1        # wholly below 1 / 1.05
    assert banded_verdict(0.90, 0.96, 0.05) == 0         # meets the band: a tie
    assert banded_verdict(0.5, 2.0, 0.05) == 0           # a wide interval shows no difference
    assert banded_verdict(1.01, 1.03, 0.0) == 1          # no band: the interval excludes 1
    assert banded_verdict(None, 1.0, 0.05) is None and banded_verdict(float("nan"), 1.0, 0.05) is None
    with pytest.raises(StatisticsError, match="tolerance"):
        banded_verdict(1.0, 1.1, -0.1)
    with pytest.raises(StatisticsError, match="swapped"):
        banded_verdict(1.2, 1.1, 0.05)
