"""Figures the report draws itself, sized for the width they are shown at, and the legibility check.

The page's content is at most :data:`DISPLAY_WIDTH_PX` CSS pixels wide and shows a PNG at its natural
size when it fits (``max-width: 100%`` otherwise). A figure drawn ``DISPLAY_WIDTH_PX / DPI`` inches
wide therefore shows 1:1, and a ``f``-point font is ``f * DPI / 72`` pixels tall on screen:
:func:`smallest_text_px` does that arithmetic for any figure, so a test can hold every figure of the
report to :data:`MIN_TEXT_PX`.
"""

from __future__ import annotations

import io
import struct
from typing import Any, Optional, Sequence

import numpy as np

DISPLAY_WIDTH_PX = 1000  # the widest a figure is shown (report.STYLE: content 1100 px minus padding)
DPI = 100  # report figures are rendered at this dpi, so inches * 100 = pixels on screen
MIN_TEXT_PX = 9.0  # the smallest legible text at display size
FONT_PT = 9  # the report figures' base font (12.5 px at display size)
KIND_COLOURS = {"simple": "#1f77b4", "complex": "#ff7f0e", "conjunction": "#2ca02c", "centre_surround": "#9467bd",
                "suppressed": "#8c564b", "unresponsive": "#7f7f7f", "": "#444444"}


def png_bytes(fig: Any, dpi: int = DPI) -> bytes:
    """The figure as PNG at ``dpi``, cropped to its drawn content (as :func:`meiscope.atomic.save_figure`)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


def png_width(png: bytes) -> int:
    """The width in pixels of PNG bytes (from the IHDR chunk)."""
    if png[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    return struct.unpack(">I", png[16:20])[0]


def smallest_text_px(fig: Any, dpi: int, display_width_px: int = DISPLAY_WIDTH_PX) -> float:
    """The height in screen pixels of the figure's smallest visible text when its PNG (rendered at ``dpi``,
    as saved) is shown at most ``display_width_px`` wide: points * dpi / 72 * the display's scale."""
    from matplotlib.text import Text

    scale = min(1.0, display_width_px / png_width(png_bytes(fig, dpi)))
    sizes = [t.get_fontsize() for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
    return min(sizes) * dpi / 72 * scale if sizes else float("inf")


def _figure(width_in: float, height_in: float) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), layout="constrained")
    fig.set_dpi(DPI)
    return fig


def _mosaic(tiles: list[list[np.ndarray]], columns: int, gap: int, label_gap: int) -> tuple[np.ndarray, list]:
    """Tiles ``tiles[cell][j]`` ``(H, W)`` laid out ``columns`` cells a row (a cell's images side by side),
    NaN between them; returns the mosaic and each cell's top-left ``(x, y)`` in mosaic pixels."""
    height, width = tiles[0][0].shape
    per_cell = len(tiles[0])
    cell_w = per_cell * width + (per_cell - 1) + gap
    rows = int(np.ceil(len(tiles) / columns))
    mosaic = np.full((rows * (height + label_gap), columns * cell_w - gap), np.nan)
    corners = []
    for k, cell in enumerate(tiles):
        x, y = (k % columns) * cell_w, (k // columns) * (height + label_gap) + label_gap
        for j, image in enumerate(cell):
            mosaic[y:y + height, x + j * (width + 1):x + j * (width + 1) + width] = np.clip(image, 0, 255)
        corners.append((x, y))
    return mosaic, corners


def mei_gallery_figure(meis: np.ndarray, labels: Sequence[str], title: str, deg_per_px: float,
                       optima: Optional[np.ndarray] = None, scale_deg: float = 20.0) -> Any:
    """Every MEI of one group of cells (screen pixels 0-255), each beside its true optimum when given,
    labelled, with a gray-level colour bar and a ``scale_deg`` scale bar (red, under the first MEI).

    One image of all the tiles (fast for ~100 cells). Args: meis, optima ``(n, H, W)`` screen pixel
    values; deg_per_px: degrees of visual field per image column.
    """
    import matplotlib

    n, height, width = meis.shape
    columns = 6 if optima is not None else 10
    tiles = [[meis[k]] + ([optima[k]] if optima is not None else []) for k in range(n)]
    label_gap = max(6, height // 3)  # room for a label above each cell (~1/3 of a tile)
    mosaic, corners = _mosaic(tiles, columns, gap=max(3, width // 6), label_gap=label_gap)
    aspect = mosaic.shape[0] / mosaic.shape[1]
    plot_w = DISPLAY_WIDTH_PX / DPI - 1.2  # inches left for the mosaic beside the colour bar
    fig = _figure(DISPLAY_WIDTH_PX / DPI, plot_w * aspect + 1.0)
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["gray"].with_extremes(bad="white")
    image = ax.imshow(mosaic, cmap=cmap, vmin=0, vmax=255, interpolation="nearest")
    ax.set_axis_off()
    for (x, y), label in zip(corners, labels):
        ax.text(x, y - 1.5, label, fontsize=FONT_PT - 1, va="bottom", ha="left")
    bar = scale_deg / deg_per_px
    x0, y0 = corners[0]
    ax.plot([x0 + 1, x0 + 1 + bar], [y0 + height - 3] * 2, color="red", lw=3, solid_capstyle="butt")
    pairs = "MEI (left) beside its true optimum (right)" if optima is not None else "MEIs"
    ax.set_title(f"{title}: {pairs}; red bar = {scale_deg:g} deg of visual field", fontsize=FONT_PT + 1)
    cbar = fig.colorbar(image, ax=ax, shrink=min(1.0, 3.0 / max(plot_w * aspect, 1e-9)), aspect=25, pad=0.01)
    cbar.set_ticks([0, 127, 255], labels=["0 black", "127 gray", "255 white"])
    cbar.set_label("screen value", fontsize=FONT_PT)
    cbar.ax.tick_params(labelsize=FONT_PT)
    return fig


def accuracy_and_positions_figure(oracle: np.ndarray, accuracy: np.ndarray, kinds: Sequence[str],
                                  x_deg: np.ndarray, y_deg: np.ndarray,
                                  field_deg: tuple[float, float, float, float],
                                  screen_deg: tuple[float, float, float, float]) -> Any:
    """Two panels: each neuron's test accuracy against its noise ceiling (the diagonal: as good as the
    data allow), and its receptive-field position (the readout's) on the screen, coloured by cell kind.

    Args:
        oracle, accuracy: ``(n,)`` oracle and single-trial correlations on the test images.
        kinds: ``(n,)`` cell kind, ``""`` where unknown. x_deg, y_deg: ``(n,)`` positions, degrees from
            the screen centre (y up).
        field_deg, screen_deg: ``(left, right, bottom, top)`` degrees of the model's field and the monitor.
    """
    from matplotlib.patches import Rectangle

    fig = _figure(DISPLAY_WIDTH_PX / DPI, 4.0)
    left, right = fig.subplots(1, 2)
    kinds = np.asarray(kinds)
    for kind in dict.fromkeys(kinds):
        sel = kinds == kind
        style = dict(s=22, alpha=0.8, color=KIND_COLOURS.get(kind, "#444444"), label=kind or "neurons")
        left.scatter(oracle[sel], accuracy[sel], **style)
        right.scatter(x_deg[sel], y_deg[sel], **style)
    top = float(np.nanmax(np.concatenate([oracle, accuracy, [0.1]])))
    left.plot([0, top], [0, top], color="k", lw=0.8, ls=":", label="noise ceiling")
    left.set_xlabel("oracle corr. (noise ceiling)", fontsize=FONT_PT)
    left.set_ylabel("model: single-trial corr., test", fontsize=FONT_PT)
    left.set_title("Accuracy per neuron against its noise ceiling", fontsize=FONT_PT + 1)
    for (x0, x1, y0, y1), name, colour in ((screen_deg, "monitor", "0.6"), (field_deg, "model's field", "k")):
        right.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec=colour, lw=1, label=name))
    right.set_xlim(screen_deg[0] - 5, screen_deg[1] + 5)
    right.set_ylim(screen_deg[2] - 5, screen_deg[3] + 5)
    right.set_aspect("equal")
    right.set_xlabel("azimuth (deg, right of centre)", fontsize=FONT_PT)
    right.set_ylabel("elevation (deg, up)", fontsize=FONT_PT)
    right.set_title("Receptive-field positions on the screen", fontsize=FONT_PT + 1)
    for ax in (left, right):
        ax.tick_params(labelsize=FONT_PT)
        ax.legend(fontsize=FONT_PT, frameon=False)
    return fig
