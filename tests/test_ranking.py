"""Tests of the rank stage: metrics on planted signal / noise, selection, the stage's outputs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from meiscope.config import RankConfig
from meiscope.dataset import ResponseDataset
from meiscope.ranking import (AllenMetrics, RankError, anova_p_value, compute_metrics,
                              explainable_variance_fraction, frac_significant_trials, join_allen_metrics,
                              load_selected, oracle_correlation,
                              peak_response, preferred_image, run_rank, score_against_truth, select_neurons,
                              split_half_reliability)


def make_responses(n_images=60, repeats=10, n_neurons=200, signal_var=1.0, noise_var=1.0, seed=0):
    """responses (n_images*repeats, n_neurons) = per-image signal ~ N(0, s2) + trial noise ~ N(0, n2)."""
    rng = np.random.default_rng(seed)
    trial_image = np.repeat(np.arange(n_images), repeats)
    rng.shuffle(trial_image)
    signal = rng.normal(0, np.sqrt(signal_var), (n_images, n_neurons))
    noise = rng.normal(0, np.sqrt(noise_var), (len(trial_image), n_neurons))
    return signal[trial_image] + noise, trial_image


def unequal_trial_image(rng, n_images=40):
    """Repeat counts 1..12 (image 0 has 1 repeat) and image 5 never shown."""
    counts = rng.integers(2, 13, n_images)
    counts[0], counts[5] = 1, 0
    trial_image = np.repeat(np.arange(n_images), counts)
    rng.shuffle(trial_image)
    return trial_image


# --------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------
def test_pure_noise_gives_no_reliability():
    r, ti = make_responses(signal_var=0.0, noise_var=1.0)
    rel = split_half_reliability(r, ti, n_splits=10, seed=0)
    assert abs(rel.mean()) < 0.1
    assert explainable_variance_fraction(r, ti).mean() < 0.05
    assert abs(oracle_correlation(r, ti).mean()) < 0.05
    p = anova_p_value(r, ti)
    assert stats.kstest(p, "uniform").pvalue > 0.01  # p roughly uniform under the null
    assert 0.0 < (p < 0.05).mean() < 0.15


def test_noiseless_repeats_are_perfectly_reliable():
    r, ti = make_responses(n_images=30, repeats=4, n_neurons=20, signal_var=1.0, noise_var=0.0)
    np.testing.assert_allclose(split_half_reliability(r, ti, n_splits=5), 1.0, atol=1e-9)
    np.testing.assert_allclose(oracle_correlation(r, ti), 1.0, atol=1e-9)
    np.testing.assert_allclose(explainable_variance_fraction(r, ti), 1.0, atol=1e-9)
    assert np.all(anova_p_value(r, ti) < 1e-12)


def test_intermediate_snr_matches_analytic_expectation():
    s2, n2, reps = 1.0, 4.0, 8
    r, ti = make_responses(n_images=100, repeats=reps, n_neurons=300, signal_var=s2, noise_var=n2, seed=1)
    # half-means have reps/2 trials: r_half = s2 / (s2 + 2 n2 / R); Spearman-Brown -> s2 / (s2 + n2 / R)
    expected_rel = s2 / (s2 + n2 / reps)  # 0.667
    assert split_half_reliability(r, ti, n_splits=10, seed=0).mean() == pytest.approx(expected_rel, abs=0.03)
    assert explainable_variance_fraction(r, ti).mean() == pytest.approx(s2 / (s2 + n2), abs=0.03)
    expected_oracle = s2 / np.sqrt((s2 + n2) * (s2 + n2 / (reps - 1)))
    assert oracle_correlation(r, ti).mean() == pytest.approx(expected_oracle, abs=0.03)


def test_split_half_odd_repeats_and_seeding():
    # 7 repeats -> halves of 3 and 4 trials: r = s2 / sqrt((s2 + n2/3)(s2 + n2/4)), then Spearman-Brown
    s2, n2 = 1.0, 4.0
    r, ti = make_responses(n_images=100, repeats=7, n_neurons=300, signal_var=s2, noise_var=n2, seed=2)
    half_r = s2 / np.sqrt((s2 + n2 / 3) * (s2 + n2 / 4))
    got = split_half_reliability(r, ti, n_splits=10, seed=0)
    assert got.mean() == pytest.approx(2 * half_r / (1 + half_r), abs=0.03)
    # one split is shared by all neurons: permuting the columns permutes the result exactly
    perm = np.random.default_rng(0).permutation(r.shape[1])
    np.testing.assert_allclose(split_half_reliability(r[:, perm], ti, n_splits=10, seed=0), got[perm],
                               rtol=1e-12)
    # same seed -> same result, other seed -> different
    r, ti = make_responses(n_images=20, repeats=6, n_neurons=5, seed=4)
    a = split_half_reliability(r, ti, n_splits=4, seed=7)
    np.testing.assert_array_equal(a, split_half_reliability(r, ti, n_splits=4, seed=7))
    assert not np.allclose(a, split_half_reliability(r, ti, n_splits=4, seed=8))


def test_unequal_repeat_counts_match_naive_loops():
    rng = np.random.default_rng(5)
    ti = unequal_trial_image(rng)
    signal = rng.normal(0, 1, (40, 4))
    r = signal[ti] + rng.normal(0, 0.7, (len(ti), 4))
    shown = [i for i in range(40) if (ti == i).any()]
    # ANOVA equals scipy's per-neuron f_oneway over the shown images
    p = anova_p_value(r, ti)
    for j in range(4):
        expected = stats.f_oneway(*[r[ti == i, j] for i in shown]).pvalue
        assert p[j] == pytest.approx(expected, rel=1e-8)
    # oracle: each trial of a >=2-repeat image vs the mean of its image's other trials
    xs, ys = [], []
    for t in range(len(ti)):
        others = np.flatnonzero((ti == ti[t]) & (np.arange(len(ti)) != t))
        if len(others):
            xs.append(r[t])
            ys.append(r[others].mean(axis=0))
    xs, ys = np.array(xs), np.array(ys)
    expected = [np.corrcoef(xs[:, j], ys[:, j])[0, 1] for j in range(4)]
    np.testing.assert_allclose(oracle_correlation(r, ti), expected, rtol=1e-10)
    # explainable variance: pooled within-image variance vs total variance
    multi = [i for i in shown if (ti == i).sum() >= 2]
    noise = sum(((r[ti == i] - r[ti == i].mean(axis=0)) ** 2).sum(axis=0) for i in multi)
    noise = noise / sum((ti == i).sum() - 1 for i in multi)
    expected = 1 - noise / r.var(axis=0, ddof=1)
    np.testing.assert_allclose(explainable_variance_fraction(r, ti), expected, rtol=1e-10)
    rel = split_half_reliability(r, ti, n_splits=5)
    assert np.all(np.isfinite(rel)) and np.all(rel > 0.5)
    # peak and preferred image never point at the unshown image 5
    means = np.array([r[ti == i].mean(axis=0) for i in shown])
    np.testing.assert_array_equal(preferred_image(r, ti), np.array(shown)[means.argmax(axis=0)])
    np.testing.assert_allclose(peak_response(r, ti), means.max(axis=0))


def test_frac_significant_trials_on_planted_case():
    blank = np.tile(np.linspace(0, 1, 101)[:, None], (1, 2))  # 95th percentile = 0.95
    ti = np.repeat(np.arange(3), 10)
    r = np.full((30, 2), 0.5)
    r[:3, 0] = 5.0  # neuron 0 prefers image 0: 3 of its 10 trials beat the blank
    r[10:20, 1] = 0.96  # neuron 1 prefers image 1: every trial just beats 0.95
    np.testing.assert_allclose(frac_significant_trials(r, ti, blank), [0.3, 1.0])
    r[10:20, 1] = 0.94  # just below the blank's 95th percentile
    np.testing.assert_allclose(frac_significant_trials(r, ti, blank), [0.3, 0.0])
    with pytest.raises(RankError, match="no blank trials"):
        frac_significant_trials(r, ti, blank[:0])
    with pytest.raises(RankError, match="blank_responses"):
        frac_significant_trials(r, ti, blank[:, :1])


def test_bad_inputs_are_refused_clearly():
    r, ti = make_responses(n_images=5, repeats=3, n_neurons=4)
    r[2, 3] = np.nan
    with pytest.raises(RankError, match=r"neurons \(columns\) \[3\]"):
        oracle_correlation(r, ti)
    with pytest.raises(RankError, match="one image per trial"):
        anova_p_value(r[:, :2], ti[:-1])
    with pytest.raises(RankError, match="repeats"):
        split_half_reliability(np.ones((5, 2)), np.arange(5))


def test_constant_neuron_is_nan_not_a_crash():
    r, ti = make_responses(n_images=10, repeats=4, n_neurons=3)
    r[:, 1] = 2.0
    for fn in (oracle_correlation, explainable_variance_fraction, anova_p_value):
        out = fn(r, ti)
        assert np.isnan(out[1]) and np.all(np.isfinite(out[[0, 2]]))
    assert np.isnan(split_half_reliability(r, ti, n_splits=2)[1])


# --------------------------------------------------------------------------------------
# selection and comparisons
# --------------------------------------------------------------------------------------
def planted_table():
    return pd.DataFrame({
        "cell_id": [10, 11, 12, 13, 14, 15, 16],
        "reliability": [0.9, 0.8, 0.2, 0.7, 0.7, 0.95, np.nan],
        "oracle_corr": [0.5, 0.6, 0.9, 0.6, 0.4, np.nan, 0.1],
        "p_anova": [1e-5, 1e-5, 1e-5, 1e-5, 1e-5, 0.5, 1e-5],
        "frac_sig_trials": [0.5] * 7,
    })


def test_select_neurons_thresholds_topk_ties_and_nan():
    cfg = RankConfig(metric="oracle_corr", min_reliability=0.3, max_p_anova=0.001, top_k=None)
    out = select_neurons(planted_table(), cfg)
    # ranks by oracle_corr desc; 11 and 13 tie at 0.6 -> smaller id first; NaN (15) last
    assert out["cell_id"].tolist() == [12, 11, 13, 10, 14, 16, 15]
    assert out["rank"].tolist() == list(range(1, 8))
    # 12 fails reliability, 15 fails p, 16 has NaN reliability
    assert out.loc[out["selected"], "cell_id"].tolist() == [11, 13, 10, 14]
    top2 = select_neurons(planted_table(), RankConfig(metric="oracle_corr", top_k=2))
    assert top2.loc[top2["selected"], "cell_id"].tolist() == [11, 13]
    # the row order of the input does not matter
    shuffled = planted_table().sample(frac=1.0, random_state=1)
    pd.testing.assert_frame_equal(select_neurons(shuffled, cfg), out)
    # thresholds set to None select everything, NaN metric included (it just ranks last)
    none = select_neurons(planted_table(), RankConfig(metric="reliability", min_reliability=None,
                                                      max_p_anova=None))
    assert none["selected"].all() and none["cell_id"].iloc[-1] == 16
    strict = select_neurons(planted_table(), RankConfig(min_frac_sig_trials=0.6))
    assert not strict["selected"].any()


def test_score_against_truth_planted():
    table = pd.DataFrame({"cell_id": [1, 2, 3, 4, 5], "selected": [True, True, True, False, False]})
    score = score_against_truth(table, np.array([2, 3, 4, 99]))  # 99 is not in this session
    assert score == {"gt_precision": pytest.approx(2 / 3), "gt_recall": pytest.approx(2 / 3),
                     "gt_n_responsive": 3}
    assert np.isnan(score_against_truth(table, np.array([], dtype=int))["gt_recall"])


def test_join_allen_metrics():
    table = pd.DataFrame({"cell_id": [7, 8, 9], "reliability": [0.1, 0.2, 0.3]})
    allen = pd.DataFrame({"cell_specimen_id": [9, 7, 100], "p_ns": [0.01, None, 0.5],
                          "reliability_ns": [0.3, 0.1, 0.0], "peak_dff_ns": [5.0, 1.0, 0.0],
                          "image_sel_ns": [0.5, 0.2, 0.1], "area": ["VISp"] * 3})
    out = join_allen_metrics(table, AllenMetrics(allen))
    assert out["cell_id"].tolist() == [7, 8, 9]
    assert list(out.columns) == ["cell_id", "reliability", "allen_p_ns", "allen_reliability_ns",
                                 "allen_peak_dff_ns", "allen_image_sel_ns"]
    np.testing.assert_allclose(out["allen_reliability_ns"], [0.1, np.nan, 0.3])
    assert np.isnan(out["allen_p_ns"].iloc[0]) and out["allen_p_ns"].iloc[2] == 0.01
    assert join_allen_metrics(table, None) is table
    with pytest.raises(RankError, match="p_ns"):
        join_allen_metrics(table, AllenMetrics(allen.drop(columns="p_ns")))
    with pytest.raises(RankError, match="more than once"):
        join_allen_metrics(table, AllenMetrics(pd.concat([allen, allen.iloc[:1]])))


# --------------------------------------------------------------------------------------
# the stage
# --------------------------------------------------------------------------------------
def make_dataset(n_cells=12, n_responsive=5, n_images=20, repeats=8, seed=0, blanks=40):
    """Cells 1000.. : the first n_responsive carry image-dependent signal, the rest only noise."""
    rng = np.random.default_rng(seed)
    trial_image = np.repeat(np.arange(n_images), repeats)
    rng.shuffle(trial_image)
    signal = rng.gamma(2.0, 0.2, (n_images, n_cells))
    signal[:, n_responsive:] = 0.0
    responses = signal[trial_image] + rng.normal(0, 0.05, (len(trial_image), n_cells))
    return ResponseDataset(
        experiment_id=42, images=np.zeros((n_images, 8, 8), np.float32),
        image_ids=np.arange(n_images) + 100, trial_image=trial_image,
        responses=responses.astype(np.float32),
        blank_responses=rng.normal(0, 0.05, (blanks, n_cells)).astype(np.float32),
        cell_ids=np.arange(n_cells) + 1000, split=np.array(["train"] * n_images),
        dropped_cell_ids=np.zeros(0, int), pixel_mean=127.0, pixel_std=50.0, source="synthetic")


def test_run_rank_writes_outputs_and_recovers_planted_cells(tmp_path):
    ds = make_dataset()
    cfg = RankConfig(n_splits=5, min_frac_sig_trials=0.25)
    metrics = run_rank(ds, cfg, tmp_path / "rank", tmp_path / "metrics.json",
                       truth_responsive_ids=np.arange(1000, 1005))
    assert metrics["n_cells"] == 12 and metrics["n_selected"] == 5
    assert metrics["gt_precision"] == 1.0 and metrics["gt_recall"] == 1.0
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    assert metrics["median_reliability"] > 0.9 and metrics["metric"] == "oracle_corr"
    assert (tmp_path / "rank" / "reliability.png").stat().st_size > 0
    assert (tmp_path / "rank" / "tuning.png").stat().st_size > 0
    table = pd.read_csv(tmp_path / "rank" / "ranking.csv")
    assert len(table) == 12 and table["rank"].tolist() == list(range(1, 13))
    assert table["gt_responsive"].sum() == 5
    ids = load_selected(tmp_path / "rank")
    assert sorted(ids.tolist()) == list(range(1000, 1005))
    np.testing.assert_array_equal(ids, table.loc[table["selected"], "cell_id"].to_numpy())
    # preferred image is reported both as a row of ds.images and as the Allen template id
    row = table.iloc[0]
    assert row["preferred_image_id"] == ds.image_ids[int(row["preferred_image"])]


def test_compute_metrics_without_blanks(tmp_path):
    ds = make_dataset(blanks=0)
    table = compute_metrics(ds, RankConfig(n_splits=2))
    assert table["frac_sig_trials"].isna().all() and table["oracle_corr"].notna().all()
    with pytest.raises(RankError, match="no blank trials"):
        compute_metrics(ds, RankConfig(n_splits=2, min_frac_sig_trials=0.25))


def test_run_rank_refuses_when_nothing_passes(tmp_path):
    ds = make_dataset(n_responsive=0)
    with pytest.raises(RankError, match=r"no cell .* passes the rank thresholds .*relax rank.min_reliability"):
        run_rank(ds, RankConfig(n_splits=3), tmp_path / "rank", tmp_path / "metrics.json")
    assert not (tmp_path / "metrics.json").exists() and not (tmp_path / "rank" / "ranking.csv").exists()


def test_load_selected_errors(tmp_path):
    with pytest.raises(RankError, match="run `meiscope rank` first"):
        load_selected(tmp_path)
    (tmp_path / "ranking.csv").write_text("cell_id,rank\n1,1\n")
    with pytest.raises(RankError, match="missing columns"):
        load_selected(tmp_path)
