"""A measured check of the optimal-Gabor search: the Gabor patches Allen showed to the real units.

Brain Observatory 1.1 sessions start with Gabor patches on a 9 x 9 grid of screen positions (10 deg
apart) at 3 orientations, ~15 repeats each: too few spikes to trust any single condition's mean,
so each unit's preference is read the way Allen's receptive-field analysis reads it:

- the **receptive-field map**: mean count per position, summed over the 3 orientations (45
  presentations per position); its peak is the unit's best patch position;
- **significance**: a chi-square test of the map's spike totals against a flat map (Poisson
  counts; Allen's ``p_value_rf`` uses a shuffle test of the same statistic). Units with
  ``p >= RF_P_VALUE`` have no measurable receptive field and are left out of the medians;
- the best orientation: the largest mean count of the 3 orientations at the best position.

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

from meiscope.recordings.neuropixels.stimuli import GABOR_ORIENTATIONS
from meiscope.recordings.screen import PIXELS_PER_DEGREE, SCENE_HEIGHT_PX, SCENE_WIDTH_PX

GRID_STEP_DEG = 10.0
RF_P_VALUE = 0.01  # Allen's threshold for a significant receptive field (Siegle et al. 2021)


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


def receptive_field_maps(patches: dict[str, np.ndarray], columns: np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Orientation-summed maps of the units in ``columns`` of ``patches["mean_counts"]``.

    Returns:
        ``(positions, maps, p_values)``: ``(n_positions, 2)`` x, y in degrees; ``(n_positions, n)``
        mean count per presentation at each position; ``(n,)`` chi-square p-value of each map
        against a flat one (module docstring).
    """
    from scipy.stats import chi2

    xy = np.stack([patches["x_position"], patches["y_position"]], axis=1)
    positions, position_of = np.unique(xy, axis=0, return_inverse=True)
    position_of = position_of.ravel()
    repeats = patches["repeats"].astype(float)
    spikes = patches["mean_counts"][:, columns] * repeats[:, None]  # (n_conditions, n) spike totals
    totals = np.zeros((len(positions), len(columns)))
    np.add.at(totals, position_of, spikes)
    shown = np.bincount(position_of, weights=repeats, minlength=len(positions))
    expected = totals.sum(axis=0, keepdims=True) * (shown / shown.sum())[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        statistic = np.where(expected > 0, (totals - expected) ** 2 / expected, 0.0).sum(axis=0)
    p_values = np.where(totals.sum(axis=0) > 0, chi2.sf(statistic, len(positions) - 1), 1.0)
    return positions, totals / shown[:, None], p_values


def _best_orientation(patches: dict[str, np.ndarray], counts: np.ndarray, best_xy: np.ndarray) -> np.ndarray:
    """For each unit, the orientation with the largest mean count at its best position."""
    out = np.empty(len(best_xy))
    for unit, (x, y) in enumerate(best_xy):
        here = np.flatnonzero((patches["x_position"] == x) & (patches["y_position"] == y))
        out[unit] = patches["orientation"][here[np.argmax(counts[here, unit])]]
    return out


def gabor_patch_check(patches: dict[str, np.ndarray], cell_ids: np.ndarray, optimal_params: np.ndarray,
                      crop: list[float], image_shape: tuple[int, int],
                      true_xy_deg: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[pd.DataFrame, dict]:
    """Compare each unit's best presented Gabor patch with its in-silico optimal Gabor.

    Args:
        patches: the ``gabors`` arrays of :func:`meiscope.recordings.neuropixels.responses.stimulus_counts`
            (``x_position``, ``y_position``, ``orientation``, ``repeats`` per condition,
            ``mean_counts`` ``(n_conditions, n_units)``, ``unit_ids``).
        cell_ids: ``(n,)`` the modelled units (rows of ``optimal_params``).
        optimal_params: ``(n, 6)`` optimal Gabors in model pixels (:mod:`meiscope.insilico.gabor` columns).
        true_xy_deg: the true RF centres of ``cell_ids`` in screen degrees (synthetic sessions).

    Returns:
        ``(table, metrics)``: one row per unit; medians and fractions over the units with a
        significant receptive field (``rf_p_value < RF_P_VALUE``).
    """
    column = {int(u): i for i, u in enumerate(patches["unit_ids"])}
    missing = [int(c) for c in cell_ids if int(c) not in column]
    if missing:
        raise ValueError(f"units {missing[:5]} have no Gabor-patch counts")
    columns = np.array([column[int(c)] for c in cell_ids], dtype=np.int64)
    positions, maps, p_values = receptive_field_maps(patches, columns)
    best_xy = positions[maps.argmax(axis=0)]
    best_x, best_y = best_xy[:, 0], best_xy[:, 1]
    best_ori = _best_orientation(patches, patches["mean_counts"][:, columns], best_xy)
    opt_x, opt_y = model_pixels_to_degrees(optimal_params[:, 0], optimal_params[:, 1], crop, image_shape)
    opt_ori = np.rad2deg(optimal_params[:, 2]) % 180.0
    table = pd.DataFrame({
        "cell_id": cell_ids, "best_patch_x_deg": best_x, "best_patch_y_deg": best_y,
        "best_patch_orientation": best_ori, "rf_peak_count": maps.max(axis=0), "rf_p_value": p_values,
        "has_rf": p_values < RF_P_VALUE,
        "optimal_gabor_x_deg": opt_x, "optimal_gabor_y_deg": opt_y, "optimal_gabor_orientation": opt_ori,
        "position_error_deg": np.hypot(best_x - opt_x, best_y - opt_y),
        "orientation_agrees": _orientation_agrees(best_ori, opt_ori)})
    if true_xy_deg is not None:
        tx, ty = true_xy_deg
        table["true_rf_x_deg"], table["true_rf_y_deg"] = tx, ty
        table["best_patch_true_error_deg"] = np.hypot(best_x - tx, best_y - ty)
        table["optimal_gabor_true_error_deg"] = np.hypot(opt_x - tx, opt_y - ty)
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
    return metrics


def receptive_field_figure(patches: dict[str, np.ndarray], table: pd.DataFrame, n_show: int) -> Any:
    """The first ``n_show`` units' maps with the best patch (+), the optimal Gabor (x) and the true centre (o)."""
    import matplotlib.pyplot as plt

    column = {int(u): i for i, u in enumerate(patches["unit_ids"])}
    rows = table.head(n_show)
    positions, maps, _ = receptive_field_maps(patches, np.array([column[int(c)] for c in rows.cell_id]))
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
    """The best presented Gabor patch of each unit vs its optimal Gabor; writes ``presented_gabors.csv`` and
    ``receptive_fields.png`` into ``out`` and returns the metrics (nothing when no patches were extracted).

    ``optimal_params``: ``(n_units, n_params)`` the optimal Gabors of ``cell_ids``; ``image_shape``: the
    model's ``(height, width)``. On synthetic sessions the true receptive-field centres are scored too.
    """
    from meiscope import truth
    from meiscope.atomic import atomic_path, save_figure
    from meiscope.recordings.neuropixels.responses import load_other_stimuli, other_stimuli_path
    from meiscope.recordings.screen import scene_fraction_to_degrees

    patches = load_other_stimuli(other_stimuli_path(dataset_path)).get("gabors")
    if patches is None:
        return {}
    population = truth.load_population(cache_dir, experiment_id)
    true_xy = None
    if population is not None:
        columns = truth.cell_columns(population, cell_ids)
        true_xy = scene_fraction_to_degrees(population.params.x[columns], population.params.y[columns])
    table, metrics = gabor_patch_check(patches, cell_ids, np.asarray(optimal_params), params.extract.crop,
                                       image_shape, true_xy)
    with atomic_path(out / "presented_gabors.csv") as tmp:
        table.to_csv(tmp, index=False)
    save_figure(receptive_field_figure(patches, table, params.mei.n_show), out / "receptive_fields.png")
    return metrics
