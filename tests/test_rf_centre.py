"""Receptive-field centre of mass as Allen computes azimuth_rf / elevation_rf, its gaze frame, and planted truth."""

import itertools

import numpy as np
import pytest

from meiscope.recordings.neuropixels import gabor_check, stimuli

STEP = 10.0  # the Gabor-patch grid spacing (deg)
GRID = np.arange(-40.0, 41.0, STEP)
POSITIONS = np.array(list(itertools.product(GRID, GRID)))  # (81, 2) x, y in screen degrees, y up
REPEATS = 15  # the real schedule: 15 presentations per (position, orientation)


def _gaussian_maps(cx: np.ndarray, cy: np.ndarray, sigma: np.ndarray, xy: np.ndarray = POSITIONS) -> np.ndarray:
    """``(n_positions, n)`` Gaussian bumps of height 1 at ``(cx, cy)`` (deg), ``sigma`` (deg) each."""
    d2 = (xy[:, :1] - cx) ** 2 + (xy[:, 1:] - cy) ** 2
    return np.exp(-d2 / (2 * sigma ** 2))


def _patches(rates: np.ndarray, seed: int, dispersion: float = 0.4) -> dict[str, np.ndarray]:
    """Gabor-patch arrays of gamma-Poisson units (var/mean ~ 1.3-1.5 as in real VISp); ``rates`` ``(243, n)``."""
    conditions = stimuli.gabor_conditions()
    rng = np.random.default_rng(seed)
    condition = rng.permutation(np.repeat(np.arange(len(conditions)), REPEATS))
    mean = rates[condition]
    shape = mean.mean(axis=0) / dispersion
    counts = rng.poisson(mean * rng.gamma(shape, 1.0 / shape, size=mean.shape))
    sums = np.zeros((len(conditions), rates.shape[1]))
    np.add.at(sums, condition, counts)
    return {**{c: conditions[c].to_numpy() for c in conditions}, "mean_counts": sums / REPEATS,
            "repeats": np.full(len(conditions), REPEATS), "unit_ids": np.arange(rates.shape[1]),
            "presentation_counts": counts.astype(np.int32), "presentation_condition": condition}


def _condition_xy() -> np.ndarray:
    conditions = stimuli.gabor_conditions()
    return np.stack([conditions.x_position.to_numpy(), conditions.y_position.to_numpy()], axis=1)


# --------------------------------------------------------------------------------------
# the frame and the centroid, exactly
# --------------------------------------------------------------------------------------
def test_gaze_frame_is_the_screen_frame_moved_by_50_and_10_degrees():
    x, y = np.array([0.0, -40.0, 40.0, 12.5]), np.array([0.0, 40.0, -40.0, -7.25])
    azimuth, elevation = gabor_check.screen_to_gaze(x, y)
    np.testing.assert_array_equal(azimuth, [50.0, 10.0, 90.0, 62.5])
    np.testing.assert_array_equal(elevation, [10.0, 50.0, -30.0, 2.75])  # up on the screen is up in the gaze frame
    back = gabor_check.gaze_to_screen(azimuth, elevation)
    np.testing.assert_array_equal(back[0], x)
    np.testing.assert_array_equal(back[1], y)


def test_a_single_hot_position_is_its_own_centre_at_every_grid_position():
    totals = np.where(np.eye(81, dtype=bool), 50, 2)  # unit k: 50 spikes at position k, 2 everywhere else
    x, y = gabor_check.rf_centres(POSITIONS, totals)
    np.testing.assert_array_equal(x, POSITIONS[:, 0])
    np.testing.assert_array_equal(y, POSITIONS[:, 1])
    azimuth, elevation = gabor_check.screen_to_gaze(x, y)
    np.testing.assert_array_equal(azimuth, POSITIONS[:, 0] + 50.0)
    np.testing.assert_array_equal(elevation, POSITIONS[:, 1] + 10.0)


def test_symmetric_maps_centre_on_their_centre_of_symmetry():
    def map_of(cells: list[tuple[float, float]], value: int = 40) -> np.ndarray:
        hot = np.array([any(x == cx and y == cy for cx, cy in cells) for x, y in POSITIONS])
        return np.where(hot, value, 1)

    block = map_of([(0.0, 20.0), (10.0, 20.0), (0.0, 30.0), (10.0, 30.0)])  # a 2 x 2 block: centre between nodes
    plus = map_of([(-20.0, -10.0), (-30.0, -10.0), (-10.0, -10.0), (-20.0, 0.0), (-20.0, -20.0)])
    x, y = gabor_check.rf_centres(POSITIONS, np.stack([block, plus], axis=1))
    np.testing.assert_allclose(x, [5.0, -20.0], atol=1e-9)
    np.testing.assert_allclose(y, [25.0, -10.0], atol=1e-9)


def test_two_fields_give_the_centre_of_the_stronger_not_their_mean():
    weak, strong = _gaussian_maps(np.array([-30.0]), np.array([30.0]), np.array([5.0])), \
        _gaussian_maps(np.array([20.0]), np.array([-20.0]), np.array([5.0]))
    x, y = gabor_check.rf_centres(POSITIONS, np.rint(5 + 60 * weak + 100 * strong))
    assert (x[0], y[0]) == (20.0, -20.0)


def test_flat_maps_and_units_below_ten_spikes_have_no_centre():
    totals = np.zeros((81, 3))
    totals[:, 0] = 7.0  # flat: nothing rises above the map's maximum
    totals[40, 1], totals[40, 2] = 9.0, 10.0  # a hot centre with 9 spikes (not measured) and with 10 (measured)
    x, y = gabor_check.rf_centres(POSITIONS, totals)
    assert np.isnan(x[:2]).all() and np.isnan(y[:2]).all()
    assert (x[2], y[2]) == (0.0, 0.0)


def test_positions_that_do_not_fill_a_grid_are_named():
    with pytest.raises(ValueError, match="gabors positions do not fill a grid: 80 positions on 9 rows x 9 columns"):
        gabor_check.rf_centres(POSITIONS[1:], np.ones((80, 1)) * 20)


def test_centres_equal_allensdks_azimuth_rf_and_elevation_rf_on_random_maps():
    # allensdk 2.16.2's own thresholding and conversion, run on Allen's 9 x 9 integer map (row 0 = top)
    rfm = pytest.importorskip("allensdk.brain_observatory.ecephys.stimulus_analysis.receptive_field_mapping")
    rng = np.random.default_rng(0)
    rows = ((40.0 - POSITIONS[:, 1]) / STEP).astype(int)
    cols = ((POSITIONS[:, 0] + 40.0) / STEP).astype(int)
    maps = [rng.poisson(rng.uniform(0.5, 30.0), 81) for _ in range(100)]
    maps += [rng.poisson(rng.uniform(1, 20) * (1 + rng.uniform(0.5, 4) * _gaussian_maps(
        *rng.uniform(-45, 45, (2, 1)), rng.uniform(3, 20, 1))[:, 0])) for _ in range(200)]
    maps += [rng.integers(0, 4, 81) * rng.integers(0, 2, 81) for _ in range(100)]  # sparse: ties and split patches
    totals = np.stack(maps, axis=1)
    x, y = gabor_check.rf_centres(POSITIONS, totals)
    azimuth, elevation = gabor_check.screen_to_gaze(x, y)
    for unit in np.flatnonzero(totals.sum(axis=0) >= 10):
        grid = np.zeros((9, 9), dtype=np.uint16)  # the dtype of Allen's map (presentationwise_spike_counts)
        grid[rows, cols] = totals[:, unit]
        with np.errstate(invalid="ignore", divide="ignore"):
            _, col, row, _ = rfm.threshold_rf(grid, 0.5)
        expected = rfm.convert_azimuth_to_degrees(col), rfm.convert_elevation_to_degrees(row)
        np.testing.assert_allclose([azimuth[unit], elevation[unit]], expected, atol=1e-9, rtol=0)


# --------------------------------------------------------------------------------------
# planted receptive fields: recovery and its tolerance
# --------------------------------------------------------------------------------------
# The centre is the unweighted mean of a patch of 10-deg grid nodes. For a field well inside the grid
# (|centre| <= 25 deg, 1.5 steps from the edge) the patch lies around it, so the centre can only be
# off by the grid's quantisation: half a step (5 deg) per axis. Nearer the edge the smoothing's
# reflecting border lifts the outer row and column, which can pull the patch out by up to one more
# half step: one whole step (10 deg) per axis. Both bounds are checked on noise-free maps; with 15
# noisy repeats the typical error stays within the half step.
def test_noise_free_fields_are_found_within_the_grid_quantisation():
    rng = np.random.default_rng(1)
    n = 300
    inner = rng.uniform(-25, 25, (2, n))
    sigma = rng.uniform(5, 10, n)  # the map of a 4-8 deg field seen through 20-deg patches
    x, y = gabor_check.rf_centres(POSITIONS, np.rint(1000 * (1 + 3 * _gaussian_maps(*inner, sigma))))
    assert np.abs(x - inner[0]).max() <= STEP / 2 and np.abs(y - inner[1]).max() <= STEP / 2
    anywhere = rng.uniform(-40, 40, (2, n))
    x, y = gabor_check.rf_centres(POSITIONS, np.rint(1000 * (1 + 3 * _gaussian_maps(*anywhere, sigma))))
    assert np.abs(x - anywhere[0]).max() <= STEP and np.abs(y - anywhere[1]).max() <= STEP
    assert np.abs(y - anywhere[1]).max() > STEP / 2  # the edge effect is real: the half step alone would fail


def test_noisy_fields_are_found_and_the_error_counts_only_significant_units():
    rng = np.random.default_rng(2)
    n = 60
    cx, cy = rng.uniform(-25, 25, (2, n))
    rates = 0.5 * (1 + 3 * _gaussian_maps(cx, cy, rng.uniform(5, 10, n), _condition_xy()))  # 2 Hz -> 8 Hz peak
    rates[:, :20] = 0.5  # 20 units without a field: not significant, left out of the error
    patches = _patches(rates, seed=3)
    table, metrics = gabor_check.gabor_patch_check(patches, np.arange(n), np.zeros((n, 6)), [0.0, 1.0, 0.0, 1.0],
                                                   (36, 46), (cx, cy))
    errors = gabor_check.rf_centre_errors(table)
    assert table.has_rf[20:].all() and table.has_rf[:20].mean() <= 0.1
    assert len(errors) == table.has_rf.sum()
    assert np.median(errors) <= STEP / 2 and (errors <= STEP).mean() >= 0.9
    assert metrics["gabor_patch_rf_centre_true_error_deg_median"] == pytest.approx(np.median(errors))
    np.testing.assert_allclose(table.rf_centre_true_error_deg,
                               np.hypot(table.rf_centre_x_deg - cx, table.rf_centre_y_deg - cy))
    np.testing.assert_allclose(table.azimuth_rf_deg - table.rf_centre_x_deg, 50.0)
    np.testing.assert_allclose(table.elevation_rf_deg - table.rf_centre_y_deg, 10.0)


def test_the_synthetic_cortexs_planted_fields_are_found_in_the_screen_frame():
    """The synthetic cortex's cells (centres as scene fractions, y down) seen through the rendered patches."""
    import torch

    from meiscope.recordings.screen import scene_fraction_to_degrees
    from meiscope.synthetic.population import WORK_SHAPE, TruePopulation, sample_cells

    n = 24
    cells = sample_cells(n, {"simple": 0.4, "complex": 0.3, "conjunction": 0.2, "unresponsive": 0.1},
                         (4.0, 8.0), (2.0, 10.0), 0.5, np.arange(n), np.random.default_rng(4))
    population = TruePopulation(cells).to(dtype=torch.float64)
    phases = np.arange(4) / 4  # the patch drifts one cycle per presentation: its rate averaged over the cycle
    images = np.stack([stimuli.gabor_patch_pixels(x, y, ori, p, WORK_SHAPE) for x, y, ori in
                       stimuli.gabor_conditions().itertuples(index=False) for p in phases])
    with torch.no_grad():
        rates = population(torch.from_numpy(images)).numpy().reshape(-1, len(phases), n).mean(axis=1)
    above = rates - cells.baseline  # (243, n) Hz above baseline; 0 for the unresponsive cells
    totals = np.zeros((81, n))
    position = np.unique(_condition_xy(), axis=0, return_inverse=True)[1].ravel()
    np.add.at(totals, position, 1000 * (1 + above / np.maximum(above.max(axis=0), 1e-12)))
    x, y = gabor_check.rf_centres(np.unique(_condition_xy(), axis=0), totals)
    tx, ty = scene_fraction_to_degrees(cells.x, cells.y)
    responsive = cells.responsive
    assert np.isnan(x[~responsive]).all()  # a flat map has no centre
    assert np.abs(x - tx)[responsive].max() <= STEP and np.abs(y - ty)[responsive].max() <= STEP
    assert np.median(np.hypot(x - tx, y - ty)[responsive]) <= STEP / 2


def test_the_gabor_stage_scores_every_units_centre_against_the_saved_truth(tmp_path):
    """check_presented_gabors on a session with ground truth: every unit's centre, the modelled units' the same."""
    from dataclasses import replace
    from types import SimpleNamespace

    import pandas as pd

    from meiscope.recordings.neuropixels.responses import other_stimuli_path, save_other_stimuli
    from meiscope.recordings.screen import degrees_to_scene_fraction
    from meiscope.synthetic.population import TruePopulation, sample_cells, save_ground_truth

    n, session_id = 30, 123
    rng = np.random.default_rng(5)
    cx, cy = rng.uniform(-25, 25, (2, n))
    rates = 0.5 * (1 + 3 * _gaussian_maps(cx, cy, rng.uniform(5, 10, n), _condition_xy()))
    rates[:, :5] = 0.5  # no field
    unit_ids = 950_000_000 + np.arange(n)
    patches = {**_patches(rates, seed=6), "unit_ids": unit_ids}
    cells = sample_cells(n, {"simple": 1.0, "complex": 0.0, "conjunction": 0.0, "unresponsive": 0.0},
                         (4.0, 8.0), (2.0, 10.0), 0.5, unit_ids, rng)
    x_frac, y_frac = degrees_to_scene_fraction(cx, cy)  # the planted centres, in the truth's own frame
    save_ground_truth(tmp_path / "cache", session_id, TruePopulation(replace(cells, x=x_frac, y=y_frac)),
                      {"seed": 0, "image_height": 918, "image_width": 1174})
    dataset_path = tmp_path / f"{session_id}.npz"
    save_other_stimuli(other_stimuli_path(dataset_path), {"gabors": patches})
    params = SimpleNamespace(extract=SimpleNamespace(crop=[0.0, 1.0, 0.0, 1.0]), mei=SimpleNamespace(n_show=2))
    modelled = unit_ids[[3, 10, 20]]
    out = tmp_path / "out"
    out.mkdir()
    metrics = gabor_check.check_presented_gabors(params, tmp_path / "cache", session_id, dataset_path, modelled,
                                                 (36, 46), np.zeros((3, 6)), out)
    units = pd.read_csv(out / "unit_receptive_fields.csv")
    presented = pd.read_csv(out / "presented_gabors.csv")
    np.testing.assert_array_equal(units.unit_id, unit_ids)
    np.testing.assert_allclose(units[["true_rf_x_deg", "true_rf_y_deg"]].to_numpy(), np.c_[cx, cy], atol=1e-9)
    assert units.has_rf[5:].all() and not units.has_rf[:5].any()
    errors = gabor_check.rf_centre_errors(units)
    assert len(errors) == n - 5 and np.median(errors) <= STEP / 2
    assert metrics["gabor_patch_all_units_n"] == n and metrics["gabor_patch_all_units_n_with_rf"] == n - 5
    assert metrics["gabor_patch_all_units_rf_centre_true_error_deg_median"] == pytest.approx(np.median(errors))
    # a modelled unit's figures do not depend on which other units were tested with it
    same = units.set_index("unit_id").loc[modelled]
    for column in ("rf_p_value", "rf_centre_x_deg", "rf_centre_y_deg", "azimuth_rf_deg", "elevation_rf_deg",
                   "rf_centre_true_error_deg"):
        np.testing.assert_array_equal(presented[column].to_numpy(), same[column].to_numpy())
