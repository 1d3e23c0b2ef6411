"""Image galleries shared by the mei, gabor and validate stages (matplotlib, written as PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from meiscope.atomic import save_figure


def plot_image_rows(rows: Sequence[Sequence[np.ndarray]], column_titles: Sequence[str],
                    row_labels: Sequence[str], path: Path, cell_titles: Sequence[Sequence[str]] | None = None,
                    vmin: float = 0, vmax: float = 255) -> Path:
    """A grid: one row per neuron, one column per stimulus kind, gray colormap on a shared range.

    Args:
        rows: ``rows[i][j]`` is the ``(H, W)`` image of neuron i in column j (screen pixels 0-255).
        cell_titles: optional text under each image (e.g. predicted responses).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_rows, n_cols = len(rows), len(column_titles)
    height, width = np.asarray(rows[0][0]).shape
    panel_w = 2.0
    fig, axes = plt.subplots(n_rows, n_cols, squeeze=False,
                             figsize=(panel_w * n_cols + 0.8, panel_w * height / width * n_rows * 1.25 + 0.6))
    for i, row in enumerate(rows):
        for j, image in enumerate(row):
            ax = axes[i, j]
            ax.imshow(image, cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(column_titles[j], fontsize=9)
            if j == 0:
                ax.set_ylabel(row_labels[i], fontsize=8)
            if cell_titles is not None:
                ax.set_xlabel(cell_titles[i][j], fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
    return path


def plot_mei_grid(images: np.ndarray, labels: Sequence[str], path: Path, columns: int = 6) -> Path:
    """MEIs of many neurons in a compact grid. ``images (n, H, W)`` in screen pixels 0-255."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    rows = int(np.ceil(n / columns))
    height, width = images.shape[1:]
    fig, axes = plt.subplots(rows, columns, squeeze=False, figsize=(2 * columns, 2 * height / width * rows * 1.2))
    for k, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if k < n:
            ax.imshow(images[k], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            ax.set_title(labels[k], fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    return path
