"""A measured check of the optimal-Gabor search: the Gabor patches Allen showed to the real units.

Brain Observatory 1.1 sessions start with Gabor patches on a 9 x 9 grid of screen positions (10 deg
apart) at 3 orientations, ~15 repeats each: too few spikes to trust any single condition's mean,
so each unit's preference is read the way Allen's receptive-field analysis reads it:

- the **receptive-field map**: mean count per position, summed over the 3 orientations (45
  presentations per position); its peak is the unit's best patch position;
- **significance**: Allen's ``p_value_rf`` test: the Pearson chi-square of the map's spike totals
  against a flat map, its p-value the fraction of :data:`RF_RESAMPLES` resamples (presentations'
  counts drawn with replacement, positions kept) whose statistic exceeds the observed one, so the
  null keeps the unit's own over-dispersed count distribution (the analytic chi-square
  distribution assumes Poisson counts and calls ~half of real flat maps significant). Outputs
  without per-presentation counts (older extracts) fall back to the analytic p-value, and the
  table's ``rf_test`` column says which was used. Units with fewer than :data:`RF_MIN_SPIKES`
  spikes get a NaN p-value, like Allen's. Units with ``p >= RF_P_VALUE`` (or NaN) have no
  measurable receptive field and are left out of the medians;
- the best orientation: the largest mean count of the 3 orientations at the best position;
- the **centre of mass** (:func:`rf_centres`), Allen's ``azimuth_rf`` / ``elevation_rf``: the map of
  integer spike totals smoothed by a Gaussian of s.d. one grid step (integer output, as Allen's map is
  an integer array), the positions above ``max - 0.5 s.d.`` of the smoothed map, the 4-connected patch
  of them with the highest smoothed peak, and the mean position of that patch (unweighted), in screen
  degrees and in Allen's gaze-centred frame (:func:`screen_to_gaze`). Counts come from extract's
  ``count_window``, where Allen counts 0-0.249 s after onset, so values can differ slightly from Allen's.
  :func:`unit_receptive_fields` gives the test and the centre for every unit of the session, not only
  the modelled ones, and :func:`allen_rf_comparison` sets them beside Allen's ``p_value_rf`` /
  ``azimuth_rf`` / ``elevation_rf`` of the same units.

Each modelled unit's best patch is compared with meiscope's in-silico optimal Gabor (found on the
model alone):

- ``position_error_deg``: distance between the best patch position and the optimal Gabor's centre,
  in degrees at the screen centre (the optimal Gabor's model pixels mapped back through
  ``extract.crop`` onto the scene, :data:`meiscope.recordings.screen.PIXELS_PER_DEGREE`);
- ``orientation_agrees``: the best orientation is the presented orientation nearest to the
  optimal Gabor's (mod 180 deg; 135 deg is as near to 90 as to 0 = 180, and either counts).

The grid is coarse (10-deg steps, 20-deg patches, one spatial frequency), so agreement within one
grid step (:data:`GRID_STEP_DEG`) is what the stimulus can resolve. On synthetic sessions both
centres are also compared with the true receptive-field centre.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.ndimage as ndi

from meiscope.recordings.neuropixels.stimuli import GABOR_ORIENTATIONS
from meiscope.recordings.screen import PIXELS_PER_DEGREE, SCENE_HEIGHT_PX, SCENE_WIDTH_PX

GRID_STEP_DEG = 10.0
RF_P_VALUE = 0.01  # Allen's threshold for a significant receptive field (Siegle et al. 2021)
RF_RESAMPLES = 1000  # Allen's number of shuffles for p_value_rf
RF_MIN_SPIKES = 10  # Allen leaves p_value_rf NaN below this many spikes in all Gabor presentations
RF_SEED = 0  # default seed of the shuffle test: the same outputs give the same p-values
# Allen's centre of mass (allensdk 2.16.2 ReceptiveFieldMapping): fixed by its definition, not settings
RF_SMOOTH_SIGMA = 1.0  # s.d. of the Gaussian smoothing the map, in grid steps
RF_MASK_STD = 0.5  # the patch keeps positions above max - RF_MASK_STD * s.d. of the smoothed map
RF_CENTRE_DECIMALS = 4  # Allen rounds the centre to 4 decimals of a grid step (0.001 deg)
# gaze-centred degrees = screen degrees + offset: the screen centre sits at azimuth 50, elevation 10 deg of
# the mouse's gaze (Allen's conversion of the 9 x 9 grid's centre of mass: x + 50, y + 10)
GAZE_OFFSET_DEG = (50.0, 10.0)
_CHUNK_ELEMENTS = 4_000_000  # resamples x presentations x units drawn at once (~32 MB of float64)


def model_pixels_to_degrees(col: np.ndarray, row: np.ndarray, crop: list[float], image_shape: tuple[int, int]
                            ) -> tuple[np.ndarray, np.ndarray]:
    """Model-pixel centres ``(col, row)`` -> screen degrees ``(x, y)`` from the centre, y up."""
    top, bottom, left, right = crop
    height, width = image_shape
    x_frac = left + (np.asarray(col, dtype=float) + 0.5) / width * (right - left)
    y_frac = top + (np.asarray(row, dtype=float) + 0.5) / height * (bottom - top)
    return ((x_frac - 0.5) * SCENE_WIDTH_PX / PIXELS_PER_DEGREE, (0.5 - y_frac) * SCENE_HEIGHT_PX / PIXELS_PER_DEGREE)


def _orientation_agrees(best_deg: np.ndarray, optimal_deg: np.ndarray) -> np.ndarray:
    presented = np.asarray(GABOR_ORIENTATIONS)
    diff = np.abs((optimal_deg[:, None] - presented[None, :] + 90.0) % 180.0 - 90.0)  # (n, 3), in [0, 90]
    nearest = diff <= diff.min(axis=1, keepdims=True) + 1e-6
    mine = np.abs((best_deg[:, None] - presented[None, :] + 90.0) % 180.0 - 90.0) < 1e-6
    return (nearest & mine).any(axis=1)  # ties (135 deg: 0 and 90 equally near) accept either


def _chi_square(totals: np.ndarray, shown: np.ndarray) -> np.ndarray:
    """Pearson chi-square of spike ``totals`` ``(..., n_positions, n)`` against a flat map (``shown`` presentations)."""
    expected = totals.sum(axis=-2, keepdims=True) * (shown / shown.sum())[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(expected > 0, (totals - expected) ** 2 / expected, 0.0).sum(axis=-2)


def shuffle_p_values(counts: np.ndarray, position: np.ndarray, n_positions: int, seed: int = RF_SEED,
                     n_resamples: int = RF_RESAMPLES) -> np.ndarray:
    """Allen's shuffle p-value of each unit's receptive-field map.

    Args:
        counts: ``(n_presentations, n)`` spike counts per presentation.
        position: ``(n_presentations,)`` position index of each presentation.
        seed: seeds the numpy Generator that draws the resamples (same seed, same p-values).

    Returns:
        ``(n,)`` Allen's plain fraction of resamples whose chi-square is strictly greater than the
        observed one (so 0 is possible); NaN for units with fewer than :data:`RF_MIN_SPIKES` spikes.
        Each resample draws ``n_presentations`` presentations with replacement, the same draw for
        every unit (as Allen's), and lays their counts on the real positions (``shown`` of each).
    """
    counts = np.asarray(counts, dtype=float)
    n_pres = len(counts)
    shown = np.bincount(position, minlength=n_positions).astype(float)
    totals = np.zeros((n_positions, counts.shape[1]))
    np.add.at(totals, position, counts)
    observed = _chi_square(totals, shown)
    # draws are iid, so the slots can be taken in position order: each position's total is then a
    # difference of cumulative sums at the ends of its run of slots (empty positions give 0)
    bounds = np.concatenate([[0], np.cumsum(shown).astype(np.int64)])
    rng = np.random.default_rng(seed)
    exceed = np.zeros(counts.shape[1])
    # integer counts are summed as int64 (exact and faster than float); others as float64
    summable = counts.astype(np.int64) if np.array_equal(counts, np.rint(counts)) else counts
    chunk = max(1, _CHUNK_ELEMENTS // (n_pres * counts.shape[1]))
    for first in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - first)
        drawn = summable[rng.integers(0, n_pres, size=(size, n_pres))]  # (size, n_pres, n)
        running = np.cumsum(drawn, axis=1)
        ends = running[:, np.maximum(bounds[1:] - 1, 0)]  # an empty position repeats its predecessor's sum
        ends[:, bounds[1:] == 0] = 0  # ... or 0 before the first presentation
        starts = np.concatenate([np.zeros_like(ends[:, :1]), ends[:, :-1]], axis=1)
        resampled = (ends - starts).astype(float)  # (size, n_positions, n)
        exceed += (_chi_square(resampled, shown) > observed).sum(axis=0)
    p_values = exceed / n_resamples
    return np.where(counts.sum(axis=0) >= RF_MIN_SPIKES, p_values, np.nan)


def _position_maps(patches: dict[str, np.ndarray], columns: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(positions, position_of_condition, shown, totals)`` from the condition means of ``columns``."""
    xy = np.stack([patches["x_position"], patches["y_position"]], axis=1)
    positions, position_of = np.unique(xy, axis=0, return_inverse=True)
    position_of = position_of.ravel()
    repeats = patches["repeats"].astype(float)
    spikes = patches["mean_counts"][:, columns] * repeats[:, None]  # (n_conditions, n) spike totals
    totals = np.zeros((len(positions), len(columns)))
    np.add.at(totals, position_of, spikes)
    shown = np.bincount(position_of, weights=repeats, minlength=len(positions))
    return positions, position_of, shown, totals


def rf_test_kind(patches: dict[str, np.ndarray]) -> str:
    """``"shuffle"`` when ``patches`` hold per-presentation counts, else ``"analytic"`` (older extracts)."""
    return "shuffle" if "presentation_counts" in patches and "presentation_condition" in patches else "analytic"


def _check_presentations(patches: dict[str, np.ndarray]) -> None:
    """ValueError unless the per-presentation arrays agree with each other and with the conditions."""
    counts, condition = patches["presentation_counts"], np.asarray(patches["presentation_condition"])
    n_conditions, n_units = np.shape(patches["mean_counts"])
    if np.ndim(counts) != 2 or counts.shape != (len(condition), n_units):
        raise ValueError(f"gabors/presentation_counts has shape {np.shape(counts)}, expected "
                         f"({len(condition)}, {n_units}) (presentations x units)")
    if condition.size and (condition.min() < 0 or condition.max() >= n_conditions):
        raise ValueError(f"gabors/presentation_condition holds indices outside 0..{n_conditions - 1}")


def receptive_field_maps(patches: dict[str, np.ndarray], columns: np.ndarray, seed: int = RF_SEED
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Orientation-summed maps of the units in ``columns`` of ``patches["mean_counts"]``.

    Returns:
        ``(positions, maps, p_values)``: ``(n_positions, 2)`` x, y in degrees; ``(n_positions, n)``
        mean count per presentation at each position; ``(n,)`` p-value of each map against a flat
        one: :func:`shuffle_p_values` (``seed``) when ``patches`` hold ``presentation_counts``, else
        the analytic chi-square distribution (:func:`rf_test_kind`); NaN below :data:`RF_MIN_SPIKES`.
    """
    from scipy.stats import chi2

    positions, position_of, shown, totals = _position_maps(patches, columns)
    if rf_test_kind(patches) == "shuffle":
        _check_presentations(patches)
        position = position_of[np.asarray(patches["presentation_condition"], dtype=np.int64)]
        counts = np.asarray(patches["presentation_counts"])[:, columns]
        p_values = shuffle_p_values(counts, position, len(positions), seed)
    else:
        p_values = chi2.sf(_chi_square(totals, shown), len(positions) - 1)
        # rint: totals are float32 means x repeats; a unit with exactly RF_MIN_SPIKES spikes must pass
        p_values = np.where(np.rint(totals.sum(axis=0)) >= RF_MIN_SPIKES, p_values, np.nan)
    return positions, totals / shown[:, None], p_values


def screen_to_gaze(x_deg: np.ndarray, y_deg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Screen degrees -> Allen's gaze-centred ``(azimuth, elevation)`` degrees (``azimuth_rf`` / ``elevation_rf``).

    Both frames have x (azimuth) growing to the right and y (elevation) growing UP; only the origin
    moves: azimuth = x + 50, elevation = y + 10 (:data:`GAZE_OFFSET_DEG`). Any shape in, same shape out.
    Read from allensdk 2.16.2: its map has column c at x = -40 + 10 c and row r at y = 40 - 10 r (it
    flips y so row 0 is the top), and it reports azimuth 10 c + 10 and elevation 10 (8 - r) - 30.
    """
    return np.asarray(x_deg, dtype=float) + GAZE_OFFSET_DEG[0], np.asarray(y_deg, dtype=float) + GAZE_OFFSET_DEG[1]


def gaze_to_screen(azimuth_deg: np.ndarray, elevation_deg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Allen's gaze-centred degrees -> screen degrees (x right, y up); inverse of :func:`screen_to_gaze`."""
    return (np.asarray(azimuth_deg, dtype=float) - GAZE_OFFSET_DEG[0],
            np.asarray(elevation_deg, dtype=float) - GAZE_OFFSET_DEG[1])


def position_grid(positions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Lay the patch positions on Allen's map grid: row 0 = top of the screen, column 0 = left.

    Args:
        positions: ``(n_positions, 2)`` x, y in screen degrees (y up), each position once.

    Returns:
        ``(xs, ys, row, col)``: ``(n_cols,)`` x of each column (ascending), ``(n_rows,)`` y of each row
        (descending), and the ``(n_positions,)`` row and column of each position.

    Raises:
        ValueError: the positions do not fill a rectangular grid (a position never shown).
    """
    xs = np.unique(positions[:, 0])
    ys = np.unique(positions[:, 1])[::-1]
    col = np.searchsorted(xs, positions[:, 0])
    row = np.searchsorted(-ys, -positions[:, 1])
    if len(positions) != len(xs) * len(ys) or len(np.unique(row * len(xs) + col)) != len(positions):
        raise ValueError(f"gabors positions do not fill a grid: {len(positions)} positions on {len(ys)} rows x "
                         f"{len(xs)} columns")
    return xs, ys, row, col


def map_centre(totals: np.ndarray) -> tuple[float, float]:
    """Allen's centre of mass of one receptive-field map, in grid units.

    Args:
        totals: ``(n_rows, n_cols)`` integer spike totals per position (row 0 = top).

    Returns:
        ``(row, col)`` of the centre, rounded to :data:`RF_CENTRE_DECIMALS`; NaN, NaN for a flat map
        (no position rises above the threshold).
    """
    # integer in, integer out: scipy truncates the smoothed values, exactly as on Allen's integer map
    smoothed = ndi.gaussian_filter(np.asarray(totals, dtype=np.int64), RF_SMOOTH_SIGMA, mode="reflect", truncate=4.0)
    above = smoothed > smoothed.max() - RF_MASK_STD * smoothed.std()
    labels, n_patches = ndi.label(above)  # 4-connected patches
    if n_patches == 0:
        return np.nan, np.nan
    peaks = ndi.maximum(smoothed, labels=labels, index=np.arange(1, n_patches + 1))
    rows, cols = np.nonzero(labels == 1 + int(np.argmax(peaks)))  # a tie goes to the first patch in raster order
    return round(float(rows.mean()), RF_CENTRE_DECIMALS), round(float(cols.mean()), RF_CENTRE_DECIMALS)


def rf_centres(positions: np.ndarray, totals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre of mass of each unit's receptive-field map (:func:`map_centre`), in screen degrees.

    Args:
        positions: ``(n_positions, 2)`` x, y in screen degrees (a full grid, :func:`position_grid`).
        totals: ``(n_positions, n)`` spike totals of each unit at each position (rounded to integers).

    Returns:
        ``(x, y)`` each ``(n,)``, screen degrees (y up); NaN for units with fewer than
        :data:`RF_MIN_SPIKES` spikes (Allen leaves them out) or a flat map.
    """
    xs, ys, row, col = position_grid(np.asarray(positions, dtype=float))
    counts = np.rint(np.asarray(totals, dtype=float)).astype(np.int64)
    x, y = np.full(counts.shape[1], np.nan), np.full(counts.shape[1], np.nan)
    grid = np.zeros((len(ys), len(xs)), dtype=np.int64)
    for unit in range(counts.shape[1]):
        if counts[:, unit].sum() < RF_MIN_SPIKES:
            continue
        grid[row, col] = counts[:, unit]
        r, c = map_centre(grid)
        # grid units -> degrees along each axis (uniform 10-deg steps in Allen's grid: x = -40 + 10 c)
        x[unit] = np.interp(c, np.arange(len(xs)), xs) if np.isfinite(c) else np.nan
        y[unit] = np.interp(r, np.arange(len(ys)), ys) if np.isfinite(r) else np.nan
    return x, y


def rf_centre_errors(table: pd.DataFrame) -> np.ndarray:
    """Distance (deg) from the centre of mass to the true centre, over units with a significant field.

    Args:
        table: :func:`gabor_patch_check`'s table with the truth (``true_rf_x_deg``, ``true_rf_y_deg``).

    Returns:
        ``(n_significant,)`` errors of the units with ``has_rf`` and a centre of mass, table order.
    """
    rf = table[table.has_rf & table.rf_centre_x_deg.notna()]
    return np.hypot(rf.rf_centre_x_deg - rf.true_rf_x_deg, rf.rf_centre_y_deg - rf.true_rf_y_deg).to_numpy()


def _centre_columns(positions: np.ndarray, totals: np.ndarray) -> dict[str, np.ndarray]:
    """The centre-of-mass columns of a table, screen and gaze frames, from ``(n_positions, n)`` spike ``totals``."""
    x, y = rf_centres(positions, totals)
    azimuth, elevation = screen_to_gaze(x, y)
    return {"rf_centre_x_deg": x, "rf_centre_y_deg": y, "azimuth_rf_deg": azimuth, "elevation_rf_deg": elevation}


def unit_receptive_fields(patches: dict[str, np.ndarray], seed: int = RF_SEED,
                          true_xy_deg: tuple[np.ndarray, np.ndarray] | None = None) -> pd.DataFrame:
    """Allen's receptive-field figures of every unit in ``patches`` (not only the modelled ones).

    Args:
        patches: the ``gabors`` arrays of extract (see :func:`gabor_patch_check`).
        seed: seeds the shuffle test (a unit's p-value does not depend on which other units are tested).
        true_xy_deg: ``(n_units,)`` x and y of the true centres, screen degrees (synthetic sessions).

    Returns:
        One row per unit, in ``patches["unit_ids"]`` order: ``unit_id``, ``rf_p_value``, ``rf_test``,
        ``has_rf``, ``rf_centre_x_deg`` / ``rf_centre_y_deg`` (screen, y up), ``azimuth_rf_deg`` /
        ``elevation_rf_deg`` (Allen's gaze-centred frame); with the truth also ``true_rf_x_deg``,
        ``true_rf_y_deg`` and ``rf_centre_true_error_deg``.
    """
    columns = np.arange(len(patches["unit_ids"]))
    positions, _, p_values = receptive_field_maps(patches, columns, seed)
    table = pd.DataFrame({"unit_id": np.asarray(patches["unit_ids"], dtype=np.int64), "rf_p_value": p_values,
                          "rf_test": rf_test_kind(patches), "has_rf": np.nan_to_num(p_values, nan=1.0) < RF_P_VALUE,
                          **_centre_columns(positions, _position_maps(patches, columns)[3])})
    if true_xy_deg is not None:
        table["true_rf_x_deg"], table["true_rf_y_deg"] = true_xy_deg
        table["rf_centre_true_error_deg"] = np.hypot(table.rf_centre_x_deg - table.true_rf_x_deg,
                                                     table.rf_centre_y_deg - table.true_rf_y_deg)
    return table


def _unit_metrics(table: pd.DataFrame) -> dict:
    """Figures of :func:`unit_receptive_fields` over every unit: how many have a field, centre error to the truth."""
    metrics = {"gabor_patch_all_units_n": int(len(table)), "gabor_patch_all_units_n_with_rf": int(table.has_rf.sum()),
               "gabor_patch_all_units_frac_with_rf": float(table.has_rf.mean()) if len(table) else np.nan}
    if "true_rf_x_deg" in table:
        errors = rf_centre_errors(table)
        metrics["gabor_patch_all_units_rf_centre_true_error_deg_median"] = (float(np.median(errors)) if errors.size
                                                                            else np.nan)
    return metrics


def allen_rf_comparison(table: pd.DataFrame, allen: pd.DataFrame) -> dict:
    """meiscope's receptive-field test and centre of every unit against Allen's ``p_value_rf`` / ``azimuth_rf``
    / ``elevation_rf`` of the same units.

    Args:
        table: :func:`unit_receptive_fields` (``unit_id``, ``has_rf``, ``azimuth_rf_deg``, ``elevation_rf_deg``).
        allen: Allen's unit analysis metrics, index unit id (units it does not list count as no field).

    Returns:
        ``gabor_patch_all_units_allen_frac_with_rf`` (Allen's share of significant maps over the same units,
        beside meiscope's ``gabor_patch_all_units_frac_with_rf``), ``gabor_patch_all_units_rf_agrees_allen``
        (share of units both call alike) and ``gabor_patch_all_units_rf_centre_allen_distance_deg_median``
        (degrees between the two centres, over units both call significant; NaN if none).
    """
    missing = [c for c in ("p_value_rf", "azimuth_rf", "elevation_rf") if c not in allen.columns]
    if missing or not len(table):
        return {}
    theirs = allen.reindex(table.unit_id.to_numpy(dtype=np.int64))
    allen_rf = np.nan_to_num(theirs.p_value_rf.to_numpy(dtype=float), nan=1.0) < RF_P_VALUE
    ours = table.has_rf.to_numpy(dtype=bool)
    distance = np.hypot(table.azimuth_rf_deg.to_numpy() - theirs.azimuth_rf.to_numpy(dtype=float),
                        table.elevation_rf_deg.to_numpy() - theirs.elevation_rf.to_numpy(dtype=float))
    both = ours & allen_rf & np.isfinite(distance)
    return {"gabor_patch_all_units_allen_frac_with_rf": float(allen_rf.mean()),
            "gabor_patch_all_units_rf_agrees_allen": float((ours == allen_rf).mean()),
            "gabor_patch_all_units_rf_centre_allen_distance_deg_median":
                float(np.median(distance[both])) if both.any() else np.nan}


def _best_orientation(patches: dict[str, np.ndarray], counts: np.ndarray, best_xy: np.ndarray) -> np.ndarray:
    """For each unit, the orientation with the largest mean count at its best position."""
    out = np.empty(len(best_xy))
    for unit, (x, y) in enumerate(best_xy):
        here = np.flatnonzero((patches["x_position"] == x) & (patches["y_position"] == y))
        out[unit] = patches["orientation"][here[np.argmax(counts[here, unit])]]
    return out


def gabor_patch_check(patches: dict[str, np.ndarray], cell_ids: np.ndarray, optimal_params: np.ndarray,
                      crop: list[float], image_shape: tuple[int, int],
                      true_xy_deg: tuple[np.ndarray, np.ndarray] | None = None, seed: int = RF_SEED
                      ) -> tuple[pd.DataFrame, dict]:
    """Compare each unit's best presented Gabor patch with its in-silico optimal Gabor.

    Args:
        patches: the ``gabors`` arrays of :func:`meiscope.recordings.neuropixels.responses.stimulus_counts`
            (``x_position``, ``y_position``, ``orientation``, ``repeats`` per condition,
            ``mean_counts`` ``(n_conditions, n_units)``, ``unit_ids``; ``presentation_counts`` and
            ``presentation_condition`` select the shuffle test, see :func:`receptive_field_maps`).
        cell_ids: ``(n,)`` the modelled units (rows of ``optimal_params``).
        optimal_params: ``(n, 6)`` optimal Gabors in model pixels (:mod:`meiscope.insilico.gabor` columns).
        true_xy_deg: the true RF centres of ``cell_ids`` in screen degrees (synthetic sessions).
        seed: seeds the shuffle test's resamples.

    Returns:
        ``(table, metrics)``: one row per unit; medians and fractions over the units with a
        significant receptive field (``rf_p_value < RF_P_VALUE``; a NaN p-value, fewer than
        :data:`RF_MIN_SPIKES` spikes, is not significant). ``rf_test`` names the test used;
        ``rf_centre_x_deg`` / ``rf_centre_y_deg`` (screen) and ``azimuth_rf_deg`` / ``elevation_rf_deg``
        (Allen's gaze-centred frame) the centre of mass (:func:`rf_centres`), for every unit.
    """
    column = {int(u): i for i, u in enumerate(patches["unit_ids"])}
    missing = [int(c) for c in cell_ids if int(c) not in column]
    if missing:
        raise ValueError(f"units {missing[:5]} have no Gabor-patch counts")
    columns = np.array([column[int(c)] for c in cell_ids], dtype=np.int64)
    positions, maps, p_values = receptive_field_maps(patches, columns, seed)
    best_xy = positions[maps.argmax(axis=0)]
    best_x, best_y = best_xy[:, 0], best_xy[:, 1]
    best_ori = _best_orientation(patches, patches["mean_counts"][:, columns], best_xy)
    centres = _centre_columns(positions, _position_maps(patches, columns)[3])
    opt_x, opt_y = model_pixels_to_degrees(optimal_params[:, 0], optimal_params[:, 1], crop, image_shape)
    opt_ori = np.rad2deg(optimal_params[:, 2]) % 180.0
    table = pd.DataFrame({
        "cell_id": cell_ids, "best_patch_x_deg": best_x, "best_patch_y_deg": best_y,
        "best_patch_orientation": best_ori, "rf_peak_count": maps.max(axis=0), "rf_p_value": p_values,
        "rf_test": rf_test_kind(patches), "has_rf": np.nan_to_num(p_values, nan=1.0) < RF_P_VALUE,
        **centres,
        "optimal_gabor_x_deg": opt_x, "optimal_gabor_y_deg": opt_y, "optimal_gabor_orientation": opt_ori,
        "position_error_deg": np.hypot(best_x - opt_x, best_y - opt_y),
        "orientation_agrees": _orientation_agrees(best_ori, opt_ori)})
    if true_xy_deg is not None:
        tx, ty = true_xy_deg
        table["true_rf_x_deg"], table["true_rf_y_deg"] = tx, ty
        table["best_patch_true_error_deg"] = np.hypot(best_x - tx, best_y - ty)
        table["optimal_gabor_true_error_deg"] = np.hypot(opt_x - tx, opt_y - ty)
        table["rf_centre_true_error_deg"] = np.hypot(centres["rf_centre_x_deg"] - tx, centres["rf_centre_y_deg"] - ty)
    return table, _check_metrics(table)


def _check_metrics(table: pd.DataFrame) -> dict:
    """Medians and fractions over the units with a significant receptive field (NaN when there is none)."""
    rf = table[table.has_rf]
    metrics = {"gabor_patch_n_units": int(len(table)), "gabor_patch_n_units_with_rf": int(len(rf)),
               "gabor_patch_position_error_deg_median": float(rf.position_error_deg.median()),
               "gabor_patch_frac_within_grid_step": float((rf.position_error_deg <= GRID_STEP_DEG).mean()),
               "gabor_patch_frac_orientation_agrees": float(rf.orientation_agrees.mean())}
    if "best_patch_true_error_deg" in table:
        metrics["gabor_patch_true_error_deg_median"] = float(rf.best_patch_true_error_deg.median())
        metrics["optimal_gabor_true_error_deg_median"] = float(rf.optimal_gabor_true_error_deg.median())
        errors = rf_centre_errors(table)
        metrics["gabor_patch_rf_centre_true_error_deg_median"] = float(np.median(errors)) if errors.size else np.nan
    return metrics


def receptive_field_figure(patches: dict[str, np.ndarray], table: pd.DataFrame, n_show: int) -> Any:
    """The first ``n_show`` units' maps with the best patch (+), the optimal Gabor (x) and the true centre (o)."""
    import matplotlib.pyplot as plt

    column = {int(u): i for i, u in enumerate(patches["unit_ids"])}
    rows = table.head(n_show)
    positions, _, shown, totals = _position_maps(patches, np.array([column[int(c)] for c in rows.cell_id]))
    maps = totals / shown[:, None]  # p-values come from the table: no second shuffle test
    xs, ys = np.unique(positions[:, 0]), np.unique(positions[:, 1])
    half = GRID_STEP_DEG / 2
    n_cols = min(4, max(1, len(rows)))
    n_rows = int(np.ceil(len(rows) / n_cols))
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(3.2 * n_cols, 3.0 * n_rows), squeeze=False)
    for ax in axes.ravel()[len(rows):]:
        ax.axis("off")
    for k, (ax, row) in enumerate(zip(axes.ravel(), rows.itertuples())):
        grid = np.full((len(ys), len(xs)), np.nan)
        grid[np.searchsorted(ys, positions[:, 1]), np.searchsorted(xs, positions[:, 0])] = maps[:, k]
        ax.imshow(grid, origin="lower", cmap="magma", extent=(xs[0] - half, xs[-1] + half, ys[0] - half, ys[-1] + half))
        ax.plot(row.best_patch_x_deg, row.best_patch_y_deg, "+", color="cyan", ms=12, mew=2, label="best patch")
        ax.plot(row.optimal_gabor_x_deg, row.optimal_gabor_y_deg, "x", color="lime", ms=10, mew=2,
                label="optimal Gabor (model)")
        if "true_rf_x_deg" in table:
            ax.plot(row.true_rf_x_deg, row.true_rf_y_deg, "o", mfc="none", color="white", ms=10, mew=1.5,
                    label="true centre")
        ax.set_xlim(xs[0] - half, xs[-1] + half)
        ax.set_ylim(ys[0] - half, ys[-1] + half)
        ax.set_title(f"unit {row.cell_id}\nRF p = {row.rf_p_value:.1g}", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0, 0].legend(fontsize=6, loc="lower left")
    fig.suptitle("Gabor-patch receptive-field maps (mean spikes per presentation, orientations summed; "
                 "x, y in degrees from the screen centre)", fontsize=9)
    fig.tight_layout()
    return fig


def check_presented_gabors(params: Any, cache_dir: Path, experiment_id: int, dataset_path: Path, cell_ids: np.ndarray,
                           image_shape: tuple[int, int], optimal_params: np.ndarray, out: Path) -> dict:
    """The best presented Gabor patch of each unit vs its optimal Gabor; writes ``presented_gabors.csv``,
    ``unit_receptive_fields.csv`` (:func:`unit_receptive_fields`, every unit of the session) and
    ``receptive_fields.png`` into ``out`` and returns the metrics (nothing when no patches were extracted).

    ``optimal_params``: ``(n_units, n_params)`` the optimal Gabors of ``cell_ids``; ``image_shape``: the
    model's ``(height, width)``. On synthetic sessions the true receptive-field centres are scored too.
    """
    from meiscope import truth
    from meiscope.atomic import atomic_path, save_figure
    from meiscope.errors import MeiscopeError
    from meiscope.recordings.neuropixels.responses import load_other_stimuli, other_stimuli_path
    from meiscope.recordings.screen import scene_fraction_to_degrees

    patches = load_other_stimuli(other_stimuli_path(dataset_path)).get("gabors")
    if patches is None:
        return {}
    population = truth.load_population(cache_dir, experiment_id)

    def true_xy(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        if population is None:
            return None
        columns = truth.cell_columns(population, ids)
        return scene_fraction_to_degrees(population.params.x[columns], population.params.y[columns])

    try:
        table, metrics = gabor_patch_check(patches, cell_ids, np.asarray(optimal_params), params.extract.crop,
                                           image_shape, true_xy(cell_ids))
        units = unit_receptive_fields(patches, true_xy_deg=true_xy(patches["unit_ids"]))
    except ValueError as err:  # inconsistent arrays in the extract's file: name it, one line
        raise MeiscopeError(f"{other_stimuli_path(dataset_path)}: {err}") from None
    with atomic_path(out / "presented_gabors.csv") as tmp:
        table.to_csv(tmp, index=False)
    with atomic_path(out / "unit_receptive_fields.csv") as tmp:
        units.to_csv(tmp, index=False)
    metrics.update(_unit_metrics(units))
    from meiscope.recordings.neuropixels.unit_metrics import analysis_metrics_file, read_analysis_metrics

    allen_file = analysis_metrics_file(cache_dir, experiment_id)  # downloaded, or computed for a synthetic session
    if allen_file.is_file():
        metrics.update(allen_rf_comparison(units, read_analysis_metrics(allen_file)))
    save_figure(receptive_field_figure(patches, table, params.mei.n_show), out / "receptive_fields.png")
    return metrics
