"""The report's cell-by-cell figures from this run's results: every MEI (grouped by cell kind, beside its
true optimum where there is a truth), each neuron's accuracy against its noise ceiling, and where the
receptive fields sit on the screen.

Reads ``results/mei/meis.npz``, ``results/validate/per_neuron.csv`` and ``true_optima.npz`` (synthetic
data only) and ``results/train/per_neuron.csv``; a figure whose inputs are missing is left out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np

from meiscope.config import Params
from meiscope.paths import Layout
from meiscope.science.catalogue import KINDS

GROUP_ORDER = (*KINDS, "unresponsive", "")  # the gallery's groups, in this order


def _csv(path: Path) -> Optional[Any]:
    import pandas as pd

    return pd.read_csv(path) if path.is_file() else None


def _field(params: Params, shape: tuple[int, int]) -> Any:
    from meiscope.visual_field import VisualField

    return VisualField.from_crop(params.extract.crop, shape)


def kinds_of(layout: Layout, cell_ids: np.ndarray) -> list[str]:
    """Each cell's kind from the closed loop's table (synthetic data), ``""`` where unknown."""
    table = _csv(layout.validate / "per_neuron.csv")
    if table is None or "kind" not in table:
        return [""] * len(cell_ids)
    kind = dict(zip(table.cell_id.astype(int), table.kind.astype(str)))
    return [kind.get(int(c), "") for c in cell_ids]


def _optima_pixels(layout: Layout, cell_ids: np.ndarray, bounds: np.ndarray) -> Optional[np.ndarray]:
    """The true optima in screen pixels, in the MEIs' order; None without a truth (or another cell set)."""
    path = layout.validate / "true_optima.npz"
    if not path.is_file():
        return None
    with np.load(path) as f:
        if not np.array_equal(f["cell_ids"], cell_ids):
            return None
        optima = f["optima"]
    low, high = (float(b) for b in bounds)  # model-space values of screen pixels 0 and 255
    return (optima - low) * 255.0 / (high - low)


def gallery_figures(params: Params, layout: Layout) -> list[tuple[str, bytes]]:
    """``(caption, PNG)`` per cell kind: every MEI of the run (none when the mei stage has not run)."""
    from meiscope.report_figures import mei_gallery_figure, png_bytes

    path = layout.mei / "meis.npz"
    if not path.is_file():
        return []
    with np.load(path) as f:
        meis, cell_ids, bounds = f["meis_pixels"], f["cell_ids"], f["bounds"]
    kinds = np.asarray(kinds_of(layout, cell_ids))
    optima = _optima_pixels(layout, cell_ids, bounds)
    deg_per_px = _field(params, meis.shape[1:]).pixel_size_deg()[1]
    out = []
    for kind in (k for k in GROUP_ORDER if (kinds == k).any()):
        sel = np.flatnonzero(kinds == kind)
        name = f"{kind} cells" if kind else "all modelled neurons"
        fig = mei_gallery_figure(meis[sel], [f"cell {c}" for c in cell_ids[sel]], f"{name} ({len(sel)})",
                                 deg_per_px, optima[sel] if optima is not None else None)
        out.append((f"MEIs of the {name} ({len(sel)})", png_bytes(fig)))
    return out


def _degrees(field: Any, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Screen degrees of model-pixel positions (0 = the first pixel's centre)."""
    from meiscope.recordings.screen import monitor_to_degrees

    height, width = field.shape
    row = field.top + (np.asarray(rows) + 0.5) * (field.bottom - field.top) / height
    col = field.left + (np.asarray(cols) + 0.5) * (field.right - field.left) / width
    return monitor_to_degrees(row, col)


def accuracy_figure(params: Params, layout: Layout) -> list[tuple[str, bytes]]:
    """``(caption, PNG)`` of the accuracy-vs-ceiling scatter and the receptive-field map (none before train)."""
    from meiscope.recordings.screen import MONITOR_SHAPE, monitor_to_degrees
    from meiscope.report_figures import accuracy_and_positions_figure, png_bytes

    table = _csv(layout.train / "per_neuron.csv")
    needed = {"test_oracle_corr", "test_single_trial_corr", "readout_row", "readout_col"}
    if table is None or not needed <= set(table.columns):
        return []
    shape = (params.extract.image_height, params.extract.image_width)
    field = _field(params, shape)
    x, y = _degrees(field, table.readout_row.to_numpy(), table.readout_col.to_numpy())
    (fx0, fx1), (fy1, fy0) = monitor_to_degrees(0.0, np.array([field.left, field.right]))[0], \
        monitor_to_degrees(np.array([field.top, field.bottom]), 0.0)[1]
    (sx0, sx1), (sy1, sy0) = monitor_to_degrees(0.0, np.array([0.0, MONITOR_SHAPE[1]]))[0], \
        monitor_to_degrees(np.array([0.0, MONITOR_SHAPE[0]]), 0.0)[1]
    fig = accuracy_and_positions_figure(table.test_oracle_corr.to_numpy(), table.test_single_trial_corr.to_numpy(),
                                        kinds_of(layout, table.cell_id.to_numpy()), x, y,
                                        (fx0, fx1, fy0, fy1), (sx0, sx1, sy0, sy1))
    return [("accuracy per neuron and receptive-field positions", png_bytes(fig))]
