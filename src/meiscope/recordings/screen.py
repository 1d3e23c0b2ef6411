"""The stimulus monitor of the Allen Brain Observatory, and the natural scenes' frame on it.

Every recording (two-photon sessions, experiment containers, Neuropixels sessions) showed its
stimuli on the same monitor, so this geometry belongs to none of them; the synthetic cortex draws
its receptive fields in the same frame.

The monitor is a 1920 x 1200 px panel with a 61.214 cm diagonal (16:10, so 51.9 cm wide, 0.02704
cm per pixel), 15 cm from the eye. The 918 x 1174 px natural scenes are shown centred, one image
pixel per monitor pixel. At the screen centre (small-angle approximation, as allensdk 2.16.2's
``brain_observatory.stimulus_info`` uses: its 45 px locally-sparse-noise squares are 4.65 deg)
that is

    PIXELS_PER_DEGREE = 15 cm / 0.02704 cm * pi / 180 = 9.68 px / deg,

so a scene spans about 1174 / 9.68 = 121 deg x 95 deg. Allen's spherical warping of the stimuli
on the flat monitor is ignored.

Coordinate systems used here:

- screen degrees ``(x, y)``: from the screen centre, ``x`` right and ``y`` UP (Allen's convention,
  e.g. its Gabor-patch positions);
- monitor pixels ``(row, col)``: continuous, from the top left, pixel ``i`` covering ``[i, i + 1)``;
- scene fractions ``(x, y)``: the natural scene's normalised coordinates, ``x`` in [0, 1] of its
  width and ``y`` in [0, 1] of its height, ``y`` DOWN (the frame of the synthetic cortex's
  receptive fields).
"""

from __future__ import annotations

import numpy as np

MONITOR_SHAPE = (1200, 1920)  # monitor pixels: rows, cols
PIXELS_PER_DEGREE = 9.68  # monitor (= scene) pixels per degree at the screen centre (module docstring)
GRAY = 127.0  # Allen's mean-gray screen value, 0-255 pixel units
SCENE_HEIGHT_PX = 918  # natural-scene template rows, monitor pixels
SCENE_WIDTH_PX = 1174  # natural-scene template columns, monitor pixels
SCENE_SHAPE = (SCENE_HEIGHT_PX, SCENE_WIDTH_PX)


def degrees_to_monitor(x_deg, y_deg) -> tuple[np.ndarray, np.ndarray]:
    """Screen degrees (x right, y up, from the centre) -> monitor ``(row, col)`` pixel coordinates."""
    row = MONITOR_SHAPE[0] / 2 - np.asarray(y_deg, dtype=float) * PIXELS_PER_DEGREE
    col = MONITOR_SHAPE[1] / 2 + np.asarray(x_deg, dtype=float) * PIXELS_PER_DEGREE
    return row, col


def monitor_to_degrees(row, col) -> tuple[np.ndarray, np.ndarray]:
    """Monitor ``(row, col)`` pixel coordinates -> screen degrees (x right, y up, from the centre)."""
    x = (np.asarray(col, dtype=float) - MONITOR_SHAPE[1] / 2) / PIXELS_PER_DEGREE
    y = (MONITOR_SHAPE[0] / 2 - np.asarray(row, dtype=float)) / PIXELS_PER_DEGREE
    return x, y


def degrees_to_scene_fraction(x_deg: np.ndarray, y_deg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Screen degrees (y up) -> the scene's normalised coordinates (fraction of width / height, y down)."""
    x = 0.5 + np.asarray(x_deg, dtype=float) * PIXELS_PER_DEGREE / SCENE_WIDTH_PX
    y = 0.5 - np.asarray(y_deg, dtype=float) * PIXELS_PER_DEGREE / SCENE_HEIGHT_PX
    return x, y


def scene_fraction_to_degrees(x_frac: np.ndarray, y_frac: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The scene's normalised coordinates (y down) -> screen degrees (y up); inverse of :func:`degrees_to_scene_fraction`."""
    x0, y0 = degrees_to_scene_fraction(0.0, 0.0)
    return ((np.asarray(x_frac) - x0) * SCENE_WIDTH_PX / PIXELS_PER_DEGREE,
            (y0 - np.asarray(y_frac)) * SCENE_HEIGHT_PX / PIXELS_PER_DEGREE)


def scene_pixel_degrees(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres of a ``shape`` = ``(height, width)`` rendering of the scene frame, in degrees.

    Returns ``x`` ``(1, width)`` (right) and ``y`` ``(height, 1)`` (DOWN: image rows), from the
    screen centre; each axis keeps the scene's own degrees per rendered pixel.
    """
    height, width = shape
    deg_per_px = SCENE_WIDTH_PX / PIXELS_PER_DEGREE / width  # same scale on both axes (aspect kept)
    x = (np.arange(width) + 0.5 - width / 2) * deg_per_px
    y = (np.arange(height) + 0.5 - height / 2) * (SCENE_HEIGHT_PX / PIXELS_PER_DEGREE / height)
    return x[None, :], y[:, None]
