"""One visual field: every Brain Observatory stimulus mapped into the model's input space.

The model sees one patch of visual field: the natural scenes' area of the monitor, cropped by
``extract.crop`` and area-averaged to ``(image_height, image_width)`` pixels. Every other stimulus
covers the monitor differently, so each is mapped through the monitor into that same patch.

Monitor geometry (allensdk 2.16.2 ``brain_observatory.stimulus_info``; continuous monitor pixel
coordinates ``(row, col)``, pixel ``i`` covering ``[i, i + 1)``). The monitor itself, the scenes'
frame on it and the conversions between degrees and monitor pixels are shared by every recording
and live in :mod:`meiscope.recordings.screen`; how each of the container's stimuli covers the
monitor is here:

- the monitor: 1200 x 1920 px, 15 cm from the eye, 9.68 px per degree at its centre;
- natural scenes: the 918 x 1174 template centred, one template pixel per monitor pixel;
- natural movies: the 304 x 608 template stretched to 1080 x 1920 monitor pixels (3.55 px per
  template row, 3.16 per column: NOT square) and centred (rows 60-1140);
- locally sparse noise: the 16 x 28 grid of 45-px squares (4.65 deg; the 8-deg version 8 x 14 of
  90 px) centred (rows 240-960, cols 330-1590): it covers less height than the scenes, so the top
  and bottom of the field are gray in it;
- static and drifting gratings: the whole monitor, spatial frequency in cycles per degree, phase
  relative to the screen centre.

Approximations (the same for every stimulus, so they cannot move one stimulus against another):
degrees are monitor pixels / 9.68, the small-angle scale at the screen centre (allensdk's own
4.65-deg squares are 45 px); Allen's spherical warping of the stimuli on the flat monitor is
ignored. Degrees ``(x, y)`` are relative to the screen centre, ``x`` right and ``y`` UP (Allen's
convention); model pixels are ``(row, col)`` from the top left.

Each stimulus is mapped by EXACT area averaging: a model pixel is the mean of the monitor area it
covers, and the parts of it a stimulus does not cover are gray (127).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from meiscope.recordings.screen import (GRAY, MONITOR_SHAPE, PIXELS_PER_DEGREE, SCENE_SHAPE, degrees_to_monitor,
                                        monitor_to_degrees)

MOVIE_SHAPE = (304, 608)
MOVIE_MONITOR_SHAPE = (1080, 1920)  # the monitor area a movie frame is stretched over
SPARSE_NOISE_GRIDS = {  # stimulus name -> (grid rows, grid cols, monitor px per square)
    "locally_sparse_noise": (16, 28, 45),
    "locally_sparse_noise_4deg": (16, 28, 45),
    "locally_sparse_noise_8deg": (8, 14, 90),
}


def _centred(extent: int, monitor: int) -> float:
    """Monitor coordinate of the first edge of an ``extent``-px stimulus centred on ``monitor`` px."""
    return (monitor - extent) / 2.0


@dataclass(frozen=True)
class VisualField:
    """The model's input space: a rectangle of the monitor sampled at ``shape`` pixels.

    Attributes:
        top, bottom, left, right: its edges in monitor pixel coordinates.
        shape: ``(height, width)`` model pixels.
    """

    top: float
    bottom: float
    left: float
    right: float
    shape: tuple[int, int]

    @classmethod
    def from_crop(cls, crop: list[float] | tuple[float, ...], shape: tuple[int, int]) -> "VisualField":
        """The natural scenes' area cropped by ``crop`` = (top, bottom, left, right) fractions of the scene.

        The crop is rounded to whole scene pixels, as :func:`meiscope.responses.prepare_images` does.
        """
        h, w = SCENE_SHAPE
        row0, col0 = _centred(h, MONITOR_SHAPE[0]), _centred(w, MONITOR_SHAPE[1])
        top, bottom, left, right = crop
        return cls(top=row0 + round(top * h), bottom=row0 + round(bottom * h),
                   left=col0 + round(left * w), right=col0 + round(right * w), shape=(int(shape[0]), int(shape[1])))

    def row_edges(self) -> np.ndarray:
        """``(height + 1,)`` monitor rows of the model pixels' edges."""
        return np.linspace(self.top, self.bottom, self.shape[0] + 1)

    def col_edges(self) -> np.ndarray:
        """``(width + 1,)`` monitor columns of the model pixels' edges."""
        return np.linspace(self.left, self.right, self.shape[1] + 1)

    def model_coordinates(self, x_deg, y_deg) -> tuple[np.ndarray, np.ndarray]:
        """Continuous model-pixel coordinates ``(row, col)`` of points in degrees (pixel ``i`` spans ``[i, i + 1)``)."""
        row, col = degrees_to_monitor(x_deg, y_deg)
        return ((row - self.top) * self.shape[0] / (self.bottom - self.top),
                (col - self.left) * self.shape[1] / (self.right - self.left))

    def pixel_of(self, x_deg: float, y_deg: float) -> tuple[int, int]:
        """The model pixel ``(row, col)`` holding the point ``(x_deg, y_deg)`` (raises outside the field)."""
        row, col = self.model_coordinates(x_deg, y_deg)
        i, j = int(np.floor(row)), int(np.floor(col))
        if not (0 <= i < self.shape[0] and 0 <= j < self.shape[1]):
            raise ValueError(f"point ({x_deg}, {y_deg}) deg is outside the model's visual field")
        return i, j

    def pixel_centres_deg(self) -> tuple[np.ndarray, np.ndarray]:
        """Degrees of the model pixels' centres: ``x`` ``(1, width)`` and ``y`` (up) ``(height, 1)``."""
        rows, cols = self.row_edges(), self.col_edges()
        x, _ = monitor_to_degrees(0.0, (cols[:-1] + cols[1:]) / 2)
        _, y = monitor_to_degrees((rows[:-1] + rows[1:]) / 2, 0.0)
        return np.asarray(x)[None, :], np.asarray(y)[:, None]

    def pixel_size_deg(self) -> tuple[float, float]:
        """``(height, width)`` of one model pixel in degrees."""
        return ((self.bottom - self.top) / self.shape[0] / PIXELS_PER_DEGREE,
                (self.right - self.left) / self.shape[1] / PIXELS_PER_DEGREE)


def overlap_weights(out_edges: np.ndarray, in_edges: np.ndarray) -> np.ndarray:
    """``(n_out, n_in)``: the fraction of each output interval covered by each input interval.

    Rows sum to the covered fraction (< 1 where the input does not reach).
    """
    lo = np.maximum(out_edges[:-1, None], in_edges[None, :-1])
    hi = np.minimum(out_edges[1:, None], in_edges[None, 1:])
    return np.clip(hi - lo, 0.0, None) / np.diff(out_edges)[:, None]


def template_to_field(frames: np.ndarray, field: VisualField, row_edges: np.ndarray,
                      col_edges: np.ndarray) -> np.ndarray:
    """Area-average frames whose pixels cover ``row_edges`` x ``col_edges`` monitor pixels into ``field``.

    Args:
        frames: ``(n, rows, cols)`` 0-255 pixel values.
        row_edges, col_edges: ``(rows + 1,)``, ``(cols + 1,)`` monitor coordinates of the pixel edges.

    Returns:
        ``(n, height, width)`` float32 0-255; areas the frames do not cover are gray.
    """
    frames = np.asarray(frames)
    if frames.ndim != 3 or frames.shape[1:] != (len(row_edges) - 1, len(col_edges) - 1):
        raise ValueError(f"template_to_field: frames of shape {frames.shape} do not match the "
                         f"{len(row_edges) - 1} x {len(col_edges) - 1} pixel grid")
    w_rows = overlap_weights(field.row_edges(), row_edges)  # (H, rows)
    w_cols = overlap_weights(field.col_edges(), col_edges)  # (W, cols)
    out = np.empty((len(frames), *field.shape), dtype=np.float32)
    for start in range(0, len(frames), 256):  # bounded memory for long movies
        contrast = frames[start:start + 256].astype(np.float64) - GRAY
        out[start:start + 256] = GRAY + np.einsum("hr,nrc,wc->nhw", w_rows, contrast, w_cols, optimize=True)
    return out


def _grid_edges(n: int, px_per_cell: float, monitor: int) -> np.ndarray:
    return _centred(n * px_per_cell, monitor) + np.arange(n + 1) * px_per_cell


def scenes_to_field(templates: np.ndarray, field: VisualField) -> np.ndarray:
    """``(n, 918, 1174)`` natural scenes -> ``(n, H, W)`` float32 model pixels (exact area average).

    Any other ``(rows, cols)`` rendering of the scene's area of the screen (e.g. a Gabor patch drawn by
    :func:`meiscope.recordings.neuropixels.stimuli.gabor_patch_pixels`) is stretched over that area."""
    rows, cols = np.shape(templates)[-2:]
    h, w = SCENE_SHAPE
    return template_to_field(templates, field, _grid_edges(rows, h / rows, MONITOR_SHAPE[0]),
                             _grid_edges(cols, w / cols, MONITOR_SHAPE[1]))


def movie_to_field(frames: np.ndarray, field: VisualField) -> np.ndarray:
    """``(n, 304, 608)`` natural-movie frames -> ``(n, H, W)`` float32 model pixels."""
    rows, cols = np.shape(frames)[-2:]  # any template size is stretched over the same area
    return template_to_field(frames, field,
                             _grid_edges(rows, MOVIE_MONITOR_SHAPE[0] / rows, MONITOR_SHAPE[0]),
                             _grid_edges(cols, MOVIE_MONITOR_SHAPE[1] / cols, MONITOR_SHAPE[1]))


def sparse_noise_to_field(frames: np.ndarray, field: VisualField,
                          stimulus: str = "locally_sparse_noise") -> np.ndarray:
    """``(n, 16, 28)`` locally-sparse-noise frames (0 / 127 / 255) -> ``(n, H, W)`` model pixels."""
    if stimulus not in SPARSE_NOISE_GRIDS:
        raise ValueError(f"unknown sparse-noise stimulus {stimulus!r}; expected one of {sorted(SPARSE_NOISE_GRIDS)}")
    rows, cols, px = SPARSE_NOISE_GRIDS[stimulus]
    return template_to_field(frames, field, _grid_edges(rows, px, MONITOR_SHAPE[0]),
                             _grid_edges(cols, px, MONITOR_SHAPE[1]))


def _box_sinc(k: float, width: float) -> float:
    """Mean of ``cos(k t + c)`` over a box of ``width`` centred at 0, relative to ``cos(c)``."""
    u = k * width / 2
    return 1.0 if u == 0 else float(np.sin(u) / u)


def grating_to_field(orientation_deg: float, sf_cpd: float, phase_cycles: float, contrast: float,
                     field: VisualField) -> np.ndarray:
    """A full-screen static grating as ``(H, W)`` float32 model pixels (exact pixel average).

    The grating is ``127 (1 + contrast cos(2 pi (sf (x cos t + y_down sin t) + phase)))`` with ``x``,
    ``y_down`` in degrees from the screen centre (the convention of
    :mod:`meiscope.recordings.brain_observatory`: 0 deg = vertical bars); a sinusoid averaged over a box
    is the sinusoid at the box centre times two sinc factors.
    """
    theta = np.deg2rad(orientation_deg)
    kx, ky = 2 * np.pi * sf_cpd * np.cos(theta), 2 * np.pi * sf_cpd * np.sin(theta)
    x, y_up = field.pixel_centres_deg()
    height_deg, width_deg = field.pixel_size_deg()
    carrier = np.cos(kx * x - ky * y_up + 2 * np.pi * phase_cycles)
    carrier = carrier * _box_sinc(kx, width_deg) * _box_sinc(ky, height_deg)
    return (GRAY + GRAY * contrast * carrier).astype(np.float32)
