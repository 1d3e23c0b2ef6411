"""The metric catalogue: every figure a person reads has one label, one format, one range; one verdict vocabulary."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from meiscope.pipeline import STAGES
from meiscope.report_sections import validate_rows
from meiscope.science.catalogue import (CATALOGUE, CONCLUSIONS, DVC_HEADLINE, HEADLINE, KINDS, Metric, by_name,
                                        format_conclusion, format_interval, format_value, lookup, verdict_phrase)
from meiscope.summaries import summary_lines

METRICS = Path(__file__).resolve().parents[1] / "metrics"
STAGE_FILES = {s.name: s.metric_names[0] for s in STAGES if s.metrics and s.name != "report"}


class _Recording(dict):
    """A metrics dict that remembers which keys were read."""

    def __init__(self, *args):
        super().__init__(*args)
        self.read: set[str] = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)


@pytest.mark.parametrize("stage", sorted(STAGE_FILES))
def test_every_figure_the_terminal_prints_is_in_the_catalogue(stage):
    metrics = _Recording(json.loads((METRICS / f"{STAGE_FILES[stage]}.json").read_text()))
    assert summary_lines(stage, metrics)  # the study's own metrics print
    printed = {key for key in metrics.read if key in metrics}
    assert printed and not [key for key in printed if lookup(STAGE_FILES[stage], key) is None]


@pytest.mark.parametrize("stem", [stem for s in STAGES for stem in s.metric_names])
def test_every_key_of_the_studys_metrics_files_is_in_the_catalogue(stem):
    keys = json.loads((METRICS / f"{stem}.json").read_text())
    assert not [key for key in keys if lookup(stem, key) is None]


def test_one_label_per_metric_and_the_tables_built_from_it():
    assert not [k for k, n in Counter((m.stage, m.key) for m in CATALOGUE).items() if n > 1]
    assert not [k for k, n in Counter((m.stage, m.label) for m in CATALOGUE).items() if n > 1]
    assert all(by_name(m.name) is m for m in HEADLINE)
    assert {m.panel for m in HEADLINE} == {"accuracy", "truth", "ratio", None}
    assert all(m.log_scale == (m.panel == "ratio" or m.unit == "ratio") for m in CATALOGUE)  # every ratio
    for label, key in CONCLUSIONS:
        assert all(lookup("validate", f"{key}_{kind}").unit == "verdict" for kind in KINDS)
        assert lookup("validate", key).label == label
    assert DVC_HEADLINE["vs_optimum"] is lookup("validate", "gt_mei_rate_ratio_median")
    assert lookup("headline", "vs_optimum").label == DVC_HEADLINE["vs_optimum"].label
    assert lookup("validate", "no_such_key") is None and by_name("nonsense") is None


def test_ranges_follow_the_unit():
    assert Metric("x", "a", "a", "fraction").bounds == (0.0, 1.0)
    assert Metric("x", "a", "a", fmt=".0%").bounds == (0.0, 1.0)
    assert Metric("x", "a", "a", "correlation").bounds == (-1.0, 1.0)
    assert Metric("x", "a", "a", "cells", "d").bounds == (0.0, None)
    assert Metric("x", "a", "a").bounds == (None, None)
    assert lookup("ranking", "gt_precision").bounds == (0.0, 1.0)


def test_format_value():
    pct = lookup("gabor", "frac_neurons_mei_beats_gabor")
    corr = lookup("train", "test_corr_to_avg_mean")
    assert format_value(pct, None) == "n/a" and format_value(corr, float("nan")) == "n/a"
    assert format_value(pct, 1 / 3) == "33%" and format_value(pct, 1) == "100%"
    assert format_value(corr, 0.177791996) == "0.178" and format_value(corr, np.float32(0.5)) == "0.500"
    assert format_value(lookup("validate", "n_true_optimum_beaten"), np.int64(3)) == "3"
    assert format_value(lookup("validate", "gt_n_zero_rate_mei_simple"), 2 / 3) == "0.667"  # a mean of counts
    assert format_value(lookup("gabor", "wilcoxon_p_opt"), 0.04271) == "0.043"
    assert format_value(lookup("train", "member_stop_reason"), ["patience", "max_epochs"]) == "patience, max_epochs"
    assert format_value(None, 0.123456) == "0.123" and format_value(None, "x") == "x"
    assert format_interval({"mean": 0.5, "ci_low": 0.25, "ci_high": 0.75}) == "0.50 [0.25, 0.75]"
    assert format_interval({"mean": 0.5, "ci_low": None}) == "0.50" and format_interval({"mean": None}) == "n/a"


def test_the_terminal_the_report_and_the_replicates_say_the_same_verdict():
    verdict = lookup("validate", "gt_verdict_mei_vs_gabor_simple")
    assert [format_value(verdict, code) for code in (1, 0, -1, None)] == ["MEI beats", "MEI ties", "MEI loses", "n/a"]
    assert verdict_phrase(0) == "MEI ties" and verdict_phrase(7) == "n/a"
    metrics = {"n_neurons": 3, "n_unresponsive_selected": 0, "n_true_optimum_beaten": 0, "n_simple": 3,
               "gt_verdict_mei_vs_gabor_simple": 0, "gt_sign_p_mei_vs_gabor_simple": 0.5,
               "model_verdict_mei_vs_gabor_simple": 1, "model_val_verdict_mei_vs_gabor_simple": None}
    assert "MEI ties (p = 0.5)" in "\n".join(summary_lines("validate", metrics))
    rows = validate_rows(metrics)
    assert rows["MEI vs optimal Gabor, in truth (simple)"].startswith("MEI ties: wins n/a")
    assert rows["MEI vs optimal Gabor, on the optimisation models (simple)"] == (
        "MEI beats (MEI vs optimal Gabor, on the held-out model: n/a)")
    conclusion = {"per_replicate": ["ties", "ties"], "holds_in_every_replicate": True, "conclusion": "ties"}
    assert format_conclusion(conclusion) == "MEI ties in every replicate"


def test_per_kind_figures_for_kinds_beyond_the_default_three():
    from meiscope.science.catalogue import headline_for, ordered_kinds

    assert ordered_kinds(["end_stopped", "simple", "unresponsive", "centre_surround", "simple"]) == [
        "simple", "centre_surround", "end_stopped"]
    metric = lookup("validate", "gt_mei_drive_ratio_median_centre_surround")
    assert metric.label == "true drive: MEI / optimum (centre_surround)" and metric.unit == "fraction"
    assert lookup("validate", "gt_mei_drive_ratio_median_not a kind") is None
    names = {m.name for m in headline_for(["simple", "end_stopped"])}
    assert "validate.gt_mei_drive_ratio_median_end_stopped" in names
    assert "validate.gt_mei_drive_ratio_median_complex" not in names
    assert {m.name for m in HEADLINE} == {m.name for m in headline_for(KINDS)}


def test_every_closed_loop_figure_says_which_cells_it_covers():
    from meiscope.science.catalogue import COVERAGE_WORDS, coverage_key

    per_cell = [m for m in CATALOGUE if m.stage == "validate" and m.key.startswith(("gt_", "model_", "ci_verdicts"))]
    assert per_cell and all(m.covers in COVERAGE_WORDS for m in per_cell)
    assert coverage_key(lookup("validate", "gt_mei_rate_ratio_median_simple")) == "n_simple"
    assert coverage_key(lookup("validate", "gt_mei_rate_ratio_median_ci_high_complex")) == "n_complex"
    assert coverage_key(lookup("validate", "gt_all_best_scene_native_rate_ratio_median")) == "n_truth_responsive"
    assert all(lookup("validate", coverage_key(m)) is not None for m in per_cell)


def test_intervals_over_cells_and_the_correctness_checks_have_their_place():
    from meiscope.science.catalogue import BOOTSTRAPPED, CORRECTNESS, interval_keys

    assert interval_keys(lookup("validate", "gt_mei_rate_ratio_median_simple")) == (
        "gt_mei_rate_ratio_median_ci_low_simple", "gt_mei_rate_ratio_median_ci_high_simple")
    assert interval_keys(lookup("validate", "gt_mei_rate_ratio_median_ci_low_simple")) is None
    assert interval_keys(lookup("train", "gt_fresh_corr_mean")) is None
    for key in BOOTSTRAPPED:  # an interval has the figure's unit, so it is clipped to the same range
        assert lookup("validate", f"{key}_ci_low").bounds == lookup("validate", key).bounds
    assert [m.key for m in CORRECTNESS] == ["n_true_optimum_beaten"]
    assert format_value(lookup("validate", "ci_verdicts_agree_mei_vs_gabor"), 0) == "no"
    assert format_value(lookup("validate", "ci_verdicts_agree_mei_vs_gabor"), 1) == "yes"
    assert {"gt_ci_verdict_mei_vs_gabor", "model_val_ci_verdict_mei_vs_gabor"} <= {key for _, key in CONCLUSIONS}
