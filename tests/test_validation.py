"""The closed loop on true neurons: no stimulus beats the exact optimum, rate-based robust summaries."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from meiscope import optima
from meiscope.config import GaborConfig, MeiConfig, ValidateConfig
from meiscope.insilico.budget import project_to_budget
from meiscope.insilico.gabor import optimal_gabors
from meiscope.insilico.mei import synthesize_meis
from meiscope.synthetic.population import TruePopulation, sample_cells
from meiscope.science.catalogue import coverage_key, lookup
from meiscope.validation import (TrueNeuronsInModelSpace, TrueOptimumBeaten, best_scene_table, check_optima,
                                 closed_loop_figure, closed_loop_table, mei_truth_correlations, summarise_best_scenes,
                                 summarise_validation, true_responses)

SHAPE = (12, 15)
MEAN, STD = 121.0, 48.0
BOUNDS = ((0 - MEAN) / STD, (255 - MEAN) / STD)


class SquareNeurons(torch.nn.Module):
    """Drive = sum of squared contrast over two image halves (columns = cells); rate = 1 + drive."""

    cell_ids = np.array([10, 11])
    rate_max = torch.tensor([2.0, 2.0])
    semisaturation = torch.tensor([1.0, 1.0])

    def drive(self, pixels):
        c = (pixels - 127.0) / 127.0
        half = pixels.shape[-1] // 2
        return torch.stack([(c[..., :half] ** 2).sum((-1, -2)), (c[..., half:] ** 2).sum((-1, -2))], dim=1)

    def rate_above_baseline(self, pixels):
        d = self.drive(pixels)
        return self.rate_max * d / (d + self.semisaturation)

    def forward(self, pixels):
        return 1.0 + self.rate_above_baseline(pixels)


def test_true_neurons_in_model_space_map_pixels_and_pick_each_neurons_own_image():
    mean, std = 127.0, 50.0
    images = np.zeros((2, 4, 6), dtype=np.float32)
    images[0, :, 3:] = 1.0   # neuron 0 = population column 1 (right half)
    images[1, :, :3] = 2.0   # neuron 1 = population column 0 (left half)
    drive = true_responses(TrueNeuronsInModelSpace(SquareNeurons(), [1, 0], mean, std, "drive"), images, "cpu")
    expected = np.array([12 * (50 / 127) ** 2, 12 * (100 / 127) ** 2])
    np.testing.assert_allclose(drive, expected, rtol=1e-5)
    rate = true_responses(TrueNeuronsInModelSpace(SquareNeurons(), [1, 0], mean, std, "rate"), images, "cpu")
    above = true_responses(TrueNeuronsInModelSpace(SquareNeurons(), [1, 0], mean, std, "rate_above_baseline"),
                           images, "cpu")
    np.testing.assert_allclose(rate - 1.0, above, rtol=1e-5)
    gray = true_responses(TrueNeuronsInModelSpace(SquareNeurons(), [1, 0], mean, std, "rate_above_baseline"),
                          np.zeros((2, 4, 6), np.float32), "cpu")
    assert (gray == 0).all()  # no drive, no rate above baseline: exactly zero, not 1e-9
    with pytest.raises(ValueError, match="quantity"):
        TrueNeuronsInModelSpace(SquareNeurons(), [0], mean, std, "spikes")


@pytest.fixture(scope="module")
def cells():
    """Six synthetic cells of every responsive kind (and one unresponsive) on a small screen."""
    rng = np.random.default_rng(4)
    params = sample_cells(7, {"simple": 0.3, "complex": 0.3, "conjunction": 0.3, "unresponsive": 0.1},
                          (6.0, 10.0), (5.0, 20.0), 0.5, np.arange(100, 107), rng)
    params.semisaturation[:] = 0.05
    params.rate_max[:] = np.where(params.responsive, 30.0, 0.0)
    population = TruePopulation(params, work_shape=(24, 30))
    columns = np.arange(7)
    kinds = list(population.kinds)
    filters = optima.model_space_subunits(population, columns, MEAN, STD, SHAPE)
    norm = 0.25 * np.sqrt(SHAPE[0] * SHAPE[1]) * min(-BOUNDS[0], BOUNDS[1])
    best = optima.true_optima(filters, kinds, norm, BOUNDS)
    truth = {q: TrueNeuronsInModelSpace(population.double(), columns, MEAN, STD, q)
             for q in TrueNeuronsInModelSpace.QUANTITIES}
    return population, columns, kinds, filters, best, truth, norm


def test_meis_and_gabors_optimised_on_the_truth_itself_never_beat_the_true_optimum(cells):
    """The strongest meiscope stimuli possible: MEIs and optimal Gabors ascended on the TRUE drive."""
    population, columns, kinds, filters, best, truth, norm = cells
    model = TrueNeuronsInModelSpace(population.float(), columns, MEAN, STD, "drive")
    cfg = MeiConfig(n_starts=3, steps=120, lr=0.5, blur_sigma=[1.0, 0.01])
    result = synthesize_meis([model], columns, SHAPE, cfg, norm, BOUNDS, "cpu", seed=0, progress=False)
    gcfg = GaborConfig(n_positions=[4, 5], orientations=6, wavelengths=[4.0, 7.0, 10.0], sigmas=[2.0, 3.0],
                       phases=4, refine_steps=40)
    gabors = optimal_gabors([model], columns, SHAPE, gcfg, norm, BOUNDS, "cpu", progress=False)
    drive = truth["drive"]
    starts = np.stack([true_responses(drive, result.all_starts[:, s], "cpu") for s in range(3)], axis=1)
    for stimulus in (starts.max(axis=1), true_responses(drive, gabors.images, "cpu")):
        assert (stimulus <= best.drives * (1 + 1e-5)).all()
    # ...and ascent on the truth gets close to it where its gradient lives (the optimum is the right
    # target, not a loose bound). A conjunction cell's drive relu(a) relu(b) has zero gradient wherever
    # one factor is negative, so ascent from noise may stall at 0: why the optimum is not found by ascent.
    smooth = np.isin(kinds, ["simple", "complex"])
    assert smooth.sum() >= 3
    assert (starts.max(axis=1)[smooth] >= 0.9 * best.drives[smooth]).all()


def _table(cells, meis):
    population, columns, kinds, filters, best, truth, norm = cells
    n = len(columns)
    rng = np.random.default_rng(0)
    random = project_to_budget(torch.as_tensor(rng.standard_normal((n, *SHAPE))), norm, BOUNDS).numpy()
    # the native best scene: the budget-matched one at 3x its contrast (clipped), as a cell saw it
    native = np.clip(random[::-1] * 3.0, *BOUNDS)
    stimuli = {"mei": meis, "gabor": random, "best_image": random[::-1].copy(), "best_image_native": native,
               "optimum": best.images}
    starts = np.stack([meis, random], axis=1)
    scores = {"mei": np.full(n, 2.0), "gabor": np.ones(n), "mei_val": np.ones(n), "gabor_val": np.ones(n)}
    return closed_loop_table(truth, kinds, population.cell_ids[columns], stimuli, starts,
                             np.stack([filters.w1, filters.w2], axis=1), scores, best.phi, "cpu")


def test_closed_loop_table_rates_ratios_and_the_optimum_check(cells):
    population, columns, kinds, filters, best, truth, norm = cells
    table = _table(cells, best.images.copy())
    check_optima(table)  # the optimum itself as "MEI": not beaten
    responsive = table.kind != "unresponsive"
    np.testing.assert_allclose(table.mei_rate_ratio[responsive], 1.0, rtol=1e-9)
    assert table.mei_rate_ratio[~responsive].isna().all()  # 0 / 0 stays undefined, never 0 or 1e10
    assert (table.loc[table.kind.isin(["simple", "conjunction"]), "mei_truth_corr"] > 0.999).all()
    # complex cells are scored against their filters' span; on this tiny screen the optimum clips a lot
    assert (table.loc[table.kind == "complex", "mei_truth_corr"] > 0.85).all()
    assert (table.true_rate_above_baseline_mei[~responsive] == 0).all()
    # a stimulus off the budget (10% more contrast) beats the optimum: the stage must fail, naming the cell
    louder = best.images * 1.1
    table = _table(cells, louder)
    assert table.optimum_beaten[responsive].all()
    with pytest.raises(TrueOptimumBeaten, match=r"cell 10\d \((simple|complex|conjunction)\)"):
        check_optima(table)


def test_complex_cells_are_scored_against_the_span_of_their_quadrature_pair(cells):
    population, columns, kinds, filters, best, truth, norm = cells
    i = kinds.index("complex")
    spans = np.stack([filters.w1, filters.w2], axis=1)
    other_phase = filters.w1[i] * np.cos(1.1) + filters.w2[i] * np.sin(1.1)
    corr = mei_truth_correlations(np.stack([other_phase, -other_phase]), np.stack([best.images[i]] * 2),
                                  ["complex", "simple"], spans[[i, i]])
    assert corr[0] > 0.999  # any phase of a complex cell's optimum is its optimum
    assert corr[1] < 0.5    # a simple cell with the wrong phase is wrong


SETTINGS = ValidateConfig(confidence=0.95, n_bootstrap=2000, seed=3, tie_tolerance=0.05)


def naka_rushton(drive, semisaturation=1.0, rate_max=10.0):
    return rate_max * drive / (drive + semisaturation)


def summary_table(mei, gabor, optimum, kind="simple", model=(1, -1), native=None, model_ratio=None):
    """A closed-loop table with planted true rates above baseline (drives: the Naka-Rushton inverse, rate_max 10)."""
    n = len(mei)
    native = np.full(n, 0.5) if native is None else native
    rates = {"mei": mei, "gabor": gabor, "best_image": np.full(n, 0.1), "best_image_native": native,
             "optimum": optimum}
    table = pd.DataFrame({"kind": [kind] * n if isinstance(kind, str) else list(kind),
                          "mei_truth_corr": np.linspace(0.5, 0.9, n), "optimum_beaten": np.zeros(n, bool),
                          "model_mei_vs_gabor": np.resize(model, n), "model_val_mei_vs_gabor": np.zeros(n, int)})
    for name, r in rates.items():
        r = np.asarray(r, dtype=float)
        table[f"true_rate_above_baseline_{name}"] = r
        table[f"true_drive_{name}"] = r / (10.0 - r)  # the drive that gives rate r
    table["mei_vs_gabor"] = np.sign(np.asarray(mei) - np.asarray(gabor)).astype(int)
    ratio = np.ones(n) if model_ratio is None else np.asarray(model_ratio, dtype=float)
    table["model_mei"], table["model_gabor"] = 2.0 * ratio, np.full(n, 2.0)
    table["model_mei_val"], table["model_gabor_val"] = 3.0 * ratio, np.full(n, 3.0)
    return table


def test_summary_never_folds_zero_responses_into_ratios():
    mei = np.array([4.0, 0.0, 2.0, 0.0, 3.0, 1.0])
    gabor = np.array([2.0, 3.0, 0.0, 0.0, 3.0, 2.0])
    s = summarise_validation(summary_table(mei, gabor, np.full(6, 4.0)), SETTINGS)
    assert s["gt_n_zero_rate_mei_simple"] == 2 and s["gt_n_zero_rate_gabor_simple"] == 2
    assert s["gt_n_both_zero_mei_gabor_simple"] == 1
    # log-ratio median over the 3 cells where both fire: 4/2, 3/3, 1/2 -> median 1
    assert s["gt_mei_over_gabor_rate_median_simple"] == pytest.approx(1.0)
    assert s["gt_n_ties_mei_gabor_simple"] == 2  # 3 vs 3 and 0 vs 0
    assert s["gt_frac_mei_beats_gabor_simple"] == pytest.approx(2 / 6)
    assert s["gt_frac_gabor_beats_mei_simple"] == pytest.approx(2 / 6)
    assert s["gt_verdict_mei_vs_gabor_simple"] == 0
    # MEI / optimum over the 4 cells where the MEI fires: 1, .5, .75, .25 -> geometric median of the middle two
    assert s["gt_mei_rate_ratio_median_simple"] == pytest.approx(np.exp(np.median(np.log([1, .5, .75, .25]))))
    assert all(np.isfinite(v) for v in s.values() if isinstance(v, float))
    assert s["n_simple"] == 6 and s["n_true_optimum_beaten"] == 0


def test_summary_verdicts_follow_the_sign_test():
    mei = np.linspace(2, 3, 12)
    s = summarise_validation(summary_table(mei, mei - 1, np.full(12, 5.0), model=(1,)), SETTINGS)
    assert s["gt_frac_mei_beats_gabor_simple"] == 1.0
    assert s["gt_sign_p_mei_vs_gabor_simple"] == pytest.approx(2 * 0.5 ** 12)
    assert s["gt_verdict_mei_vs_gabor_simple"] == 1 and s["model_verdict_mei_vs_gabor_simple"] == 1
    assert s["model_val_verdict_mei_vs_gabor_simple"] == 0  # all ties on the held-out model
    s = summarise_validation(summary_table(mei - 1, mei, np.full(12, 5.0)), SETTINGS)
    assert s["gt_verdict_mei_vs_gabor_simple"] == -1
    # all-zero denominators: no ratio (null in the JSON), not 0 and not 1e10
    s = summarise_validation(summary_table(np.zeros(3), np.zeros(3), np.full(3, 5.0)), SETTINGS)
    assert s["gt_mei_over_gabor_rate_median_simple"] is None and s["gt_mei_rate_ratio_median_simple"] is None
    assert s["gt_mei_rate_ratio_median_ci_low_simple"] is None and s["gt_ci_verdict_mei_vs_gabor_simple"] is None
    assert s["ci_verdicts_agree_mei_vs_gabor_simple"] is None  # no verdict to agree with
    json.dumps(s, allow_nan=False)  # strict JSON


def test_drive_ratios_beside_rate_ratios_show_what_saturation_hides():
    # planted: optimum drive 1 (rate 5 of rate_max 10, semisaturation 1); MEI drive 1/2, Gabor drive 1/4
    optimum = np.full(8, naka_rushton(1.0))
    s = summarise_validation(summary_table(np.full(8, naka_rushton(0.5)), np.full(8, naka_rushton(0.25)), optimum),
                             SETTINGS)
    assert s["gt_mei_drive_ratio_median_simple"] == pytest.approx(0.5)
    assert s["gt_mei_rate_ratio_median_simple"] == pytest.approx((10 / 3) / 5)  # 2/3: compressed towards 1
    assert s["gt_gabor_drive_ratio_median_simple"] == pytest.approx(0.25)
    assert s["gt_mei_over_gabor_drive_median_simple"] == pytest.approx(2.0)
    assert s["gt_mei_over_gabor_rate_median_simple"] == pytest.approx((10 / 3) / 2)
    # identical cells: every resample has the same median, so the interval is the value itself
    assert s["gt_mei_drive_ratio_median_ci_low_simple"] == pytest.approx(0.5)
    assert s["gt_mei_drive_ratio_median_ci_high_simple"] == pytest.approx(0.5)


def test_best_natural_image_at_native_contrast_beside_the_budget_matched_one():
    mei, optimum = np.full(5, 4.0), np.full(5, 5.0)
    s = summarise_validation(summary_table(mei, mei, optimum, native=np.array([2.0, 2.0, 2.0, 8.0, 8.0])), SETTINGS)
    assert s["gt_mei_over_best_image_rate_median_simple"] == pytest.approx(40.0)  # vs 0.1 Hz at the budget
    assert s["gt_mei_over_best_image_native_rate_median_simple"] == pytest.approx(2.0)  # vs 2 Hz as the cell saw it
    assert s["gt_frac_mei_beats_best_image_native_simple"] == pytest.approx(3 / 5)
    assert s["gt_best_image_native_rate_ratio_median_simple"] == pytest.approx(0.4)
    assert "at its native contrast" in lookup("validate", "gt_mei_over_best_image_native_rate_median").label
    assert "MEI's budget" in lookup("validate", "gt_mei_over_best_image_rate_median").label


def test_coverage_counts_and_kinds_present_in_the_data():
    kinds = ["simple"] * 4 + ["end_stopped"] * 3 + ["unresponsive"] * 2
    rates = np.array([4.0, 3.0, 2.0, 1.0, 4.0, 4.0, 4.0, 0.0, 0.0])
    s = summarise_validation(summary_table(rates, rates / 2, np.full(9, 5.0), kind=kinds), SETTINGS)
    assert (s["n_neurons"], s["n_responsive"], s["n_unresponsive_selected"]) == (9, 7, 2)
    assert (s["n_simple"], s["n_end_stopped"]) == (4, 3) and "n_complex" not in s
    assert s["gt_mei_over_gabor_rate_median_end_stopped"] == pytest.approx(2.0)
    # a kind beyond the default three is labelled, and says which cells it covers
    metric = lookup("validate", "gt_mei_over_gabor_rate_median_end_stopped")
    assert metric.label.endswith("(end_stopped)") and coverage_key(metric) == "n_end_stopped"
    assert coverage_key(lookup("validate", "gt_mei_corr_median")) == "n_responsive"
    assert not [k for k in s if lookup("validate", k) is None]  # every figure is in the catalogue


def test_intervals_over_cells_stay_in_range_and_are_seeded():
    rng = np.random.default_rng(1)
    optimum = np.full(40, 5.0)
    mei = optimum * rng.uniform(0.6, 1.0, 40)  # nothing within the budget beats the optimum
    table = summary_table(mei, mei * rng.uniform(0.8, 1.2, 40), optimum)
    s = summarise_validation(table, SETTINGS)
    for key, (low, high) in {"gt_mei_rate_ratio_median": (0, 1), "gt_mei_drive_ratio_median": (0, 1),
                             "gt_frac_mei_beats_gabor": (0, 1), "gt_mei_corr_median": (-1, 1),
                             "gt_mei_over_gabor_rate_median": (0, np.inf)}.items():
        lo, hi = s[f"{key}_ci_low_simple"], s[f"{key}_ci_high_simple"]
        assert low <= lo <= s[f"{key}_simple"] <= hi <= high, key
    assert summarise_validation(table, SETTINGS) == s  # the same seed, the same intervals
    other = summarise_validation(table, ValidateConfig(seed=4))
    ends = [k for k in s if "_ci_" in k and "verdict" not in k]
    assert any(other[k] != s[k] for k in ends)  # another seed resamples other cells
    # a fraction at its end: 0 of 6 cells is [0, 0.39] (Wilson), not [0, 0] and never below 0
    s = summarise_validation(summary_table(np.full(6, 1.0), np.full(6, 2.0), np.full(6, 5.0)), SETTINGS)
    assert s["gt_frac_mei_beats_gabor_ci_low_simple"] == 0.0
    assert s["gt_frac_mei_beats_gabor_ci_high_simple"] == pytest.approx(0.390, abs=1e-3)


def test_interval_verdicts_in_truth_and_model_and_whether_they_agree():
    n = 30
    rng = np.random.default_rng(2)
    optimum = np.full(n, 9.0)
    jitter = rng.uniform(0.99, 1.01, n)

    def planted(truth_ratio, model_ratio, kind):
        gabor = np.full(n, 4.0)
        return summary_table(gabor * truth_ratio * jitter, gabor, optimum, kind=kind, model_ratio=model_ratio * jitter)

    table = pd.concat([planted(0.9, 1.0, "simple"),        # truth: loses by 10%; model: ties -> disagree
                       planted(1.2, 1.3, "conjunction"),   # both: beats -> agree
                       planted(1.02, 0.98, "complex")])    # within the 5% band: ties in both -> agree
    s = summarise_validation(table, SETTINGS)
    assert (s["gt_ci_verdict_mei_vs_gabor_simple"], s["model_val_ci_verdict_mei_vs_gabor_simple"]) == (-1, 0)
    assert s["ci_verdicts_agree_mei_vs_gabor_simple"] == 0
    assert (s["gt_ci_verdict_mei_vs_gabor_conjunction"], s["model_val_ci_verdict_mei_vs_gabor_conjunction"]) == (1, 1)
    assert s["ci_verdicts_agree_mei_vs_gabor_conjunction"] == 1
    assert (s["gt_ci_verdict_mei_vs_gabor_complex"], s["model_val_ci_verdict_mei_vs_gabor_complex"]) == (0, 0)
    assert s["model_val_mei_over_gabor_median_conjunction"] == pytest.approx(1.3, rel=0.01)
    # the same cells with no tie band: 1.02 is now told apart from 1
    strict = summarise_validation(table, ValidateConfig(seed=3, tie_tolerance=0.0))
    assert strict["gt_ci_verdict_mei_vs_gabor_complex"] == 1
    assert s["tie_tolerance"] == 0.05 and lookup("validate", "ci_verdicts_agree_mei_vs_gabor_simple").unit == "flag"


class PlantedTruth(torch.nn.Module):
    """Cell i's drive is (pixel (0, i) of the model-space image)^2; rate above baseline 10 d / (d + 1)."""

    def __init__(self, quantity):
        super().__init__()
        self.quantity = quantity

    def forward(self, images):
        d = images[:, 0, 0, :] ** 2
        return d if self.quantity == "drive" else 10.0 * d / (d + 1.0)


def test_truth_side_figures_cover_every_truly_responsive_cell():
    n, width = 4, 4
    kinds = ["simple", "simple", "complex", "complex"]
    scenes = np.zeros((3, 2, width))
    scenes[0, 0] = [1.0, 0.5, 2.0, 0.0]
    scenes[1, 0] = [0.5, 1.0, 0.0, 1.0]   # cell 3's only scene
    scenes[2, 0] = [0.0, 0.0, 1.0, 0.5]
    matched = scenes / 2
    optima = np.zeros((n, 2, width))
    optima[np.arange(n), 0, np.arange(n)] = 2.0  # every optimum: drive 4
    truth = {q: PlantedTruth(q) for q in ("drive", "rate_above_baseline")}
    table = best_scene_table(truth, kinds, np.arange(10, 14), np.array([True, False, True, False]), scenes,
                             matched, optima, "cpu")
    np.testing.assert_allclose(table.true_drive_best_scene_native, [1.0, 1.0, 4.0, 1.0])
    np.testing.assert_allclose(table.true_drive_best_scene_matched, [0.25, 0.25, 1.0, 0.25])
    s = summarise_best_scenes(table)
    assert s["kinds"] == ["simple", "complex"]
    assert (s["n_truth_responsive"], s["n_truth_simple"], s["n_truth_complex"]) == (4, 2, 2)
    assert s["gt_all_best_scene_native_drive_ratio_median_simple"] == pytest.approx(0.25)
    # complex: drive ratios 1 (cell 12, selected) and 1/4 (cell 13): all cells vs the selected one differ
    assert s["gt_all_best_scene_native_drive_ratio_median_complex"] == pytest.approx(0.5)
    assert s["gt_sel_best_scene_native_drive_ratio_median_complex"] == pytest.approx(1.0)
    assert s["gt_sel_best_scene_native_rate_ratio_median_complex"] == pytest.approx(1.0)
    assert s["gt_all_best_scene_matched_rate_ratio_median_simple"] == pytest.approx((10 * .25 / 1.25) / 8)
    assert coverage_key(lookup("validate", "gt_all_best_scene_native_rate_ratio_median_complex")) == "n_truth_complex"
    assert coverage_key(lookup("validate", "gt_sel_best_scene_native_rate_ratio_median")) == "n_responsive"
    assert not [k for k in s if lookup("validate", k) is None]


def test_closed_loop_figure_draws_zero_responses_on_a_readable_axis(cells):
    table = _table(cells, cells[4].images.copy())
    fig = closed_loop_figure(table, cells[4].images, cells[4].images, lambda x: x * STD + MEAN, n_show=3)
    low, high = fig.axes[0].get_ylim()
    assert -8 < low < high < 8  # log2 scale with the zero bands, never 1e10


@pytest.mark.parametrize("key, value, message", [
    ("confidence", 1.0, r"'validate.confidence' must be in \[0.5, 1\)"),
    ("confidence", float("nan"), "validate.confidence"),
    ("n_bootstrap", 10, r"'validate.n_bootstrap' must be an integer in \[1000, 100000\]"),
    ("seed", -1, "validate.seed"),
    ("tie_tolerance", float("inf"), "validate.tie_tolerance"),
    ("tie_tolerance", -0.01, "validate.tie_tolerance")])
def test_validate_settings_are_refused_out_of_range(key, value, message):
    import pathlib

    import yaml

    from meiscope.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        ValidateConfig(**{key: value})
    # params.yaml sets every one of them (documented there), to the defaults
    raw = yaml.safe_load((pathlib.Path(__file__).resolve().parents[1] / "params.yaml").read_text())["validate"]
    assert ValidateConfig(**raw) == ValidateConfig() and set(raw) == {"confidence", "n_bootstrap", "seed",
                                                                      "tie_tolerance"}
