"""The Brain Observatory 1.1 stimuli that are not images on disk: static gratings and Gabor patches.

Allen shows them full screen (gratings) or at positions on the screen (Gabor patches); meiscope
draws them in the natural scenes' pixel frame, the frame of the ground truth and of the model:
the 918 x 1174 scene is centred on the monitor at :data:`PIXELS_PER_DEGREE` (small-angle
approximation at the screen centre; Allen's spherical warping of gratings is ignored, as it is for
the scenes). Degrees ``(x, y)`` are relative to the screen centre, ``y`` up (Allen's Gabor
positions); orientation ``theta`` is the direction along which the carrier varies, clockwise on the
screen from horizontal (0 deg = vertical bars, PsychoPy's convention), the convention of
:func:`meiscope.synthetic.population.gabor`.

Parameters (``../shared/docs/allen-neuropixels.md`` section 5): static gratings 6 orientations
(0-150 deg) x 5 spatial frequencies (0.02-0.32 cpd) x 4 phases, contrast 0.8; Gabor patches on a
9 x 9 grid (-40..40 deg, 10 deg steps) x 3 orientations (0, 45, 90), 20 deg circular aperture,
0.08 cpd, 4 Hz drift, contrast 0.8.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from meiscope.synthetic.population import GRAY, PIXELS_PER_DEGREE, SCENE_HEIGHT_PX, SCENE_WIDTH_PX

CONTRAST = 0.8
GRATING_ORIENTATIONS = (0.0, 30.0, 60.0, 90.0, 120.0, 150.0)
GRATING_SFS = (0.02, 0.04, 0.08, 0.16, 0.32)
GRATING_PHASES = (0.0, 0.25, 0.5, 0.75)  # fractions of a cycle
GABOR_POSITIONS = tuple(float(v) for v in range(-40, 41, 10))
GABOR_ORIENTATIONS = (0.0, 45.0, 90.0)
GABOR_SIZE_DEG = 20.0
GABOR_SF = 0.08
GABOR_TF = 4.0  # Hz: one whole cycle in each 250-ms presentation


def grating_conditions() -> pd.DataFrame:
    """The 120 static-grating conditions: ``orientation``, ``spatial_frequency``, ``phase``, ``contrast``."""
    rows = list(itertools.product(GRATING_ORIENTATIONS, GRATING_SFS, GRATING_PHASES))
    table = pd.DataFrame(rows, columns=["orientation", "spatial_frequency", "phase"])
    table["contrast"] = CONTRAST
    return table


def gabor_conditions() -> pd.DataFrame:
    """The 243 Gabor-patch conditions: ``x_position``, ``y_position`` (deg), ``orientation``."""
    rows = list(itertools.product(GABOR_POSITIONS, GABOR_POSITIONS, GABOR_ORIENTATIONS))
    return pd.DataFrame(rows, columns=["x_position", "y_position", "orientation"])


def _screen_grid(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres of a ``shape`` rendering of the scene frame, in degrees from the centre (x right, y DOWN)."""
    height, width = shape
    deg_per_px = SCENE_WIDTH_PX / PIXELS_PER_DEGREE / width  # same scale on both axes (aspect kept)
    x = (np.arange(width) + 0.5 - width / 2) * deg_per_px
    y = (np.arange(height) + 0.5 - height / 2) * (SCENE_HEIGHT_PX / PIXELS_PER_DEGREE / height)
    return x[None, :], y[:, None]


def _carrier(x: np.ndarray, y_down: np.ndarray, orientation_deg: float, sf_cpd: float, phase_cycles: float
             ) -> np.ndarray:
    theta = np.deg2rad(orientation_deg)
    along = x * np.cos(theta) + y_down * np.sin(theta)
    return np.cos(2 * np.pi * (sf_cpd * along + phase_cycles))


def grating_pixels(orientation_deg: float, sf_cpd: float, phase_cycles: float, shape: tuple[int, int],
                   contrast: float = CONTRAST) -> np.ndarray:
    """A full-field static grating as ``(H, W)`` float32 0-255 screen pixels of the scene frame."""
    x, y = _screen_grid(shape)
    return (GRAY + GRAY * contrast * _carrier(x, y, orientation_deg, sf_cpd, phase_cycles)).astype(np.float32)


def gabor_patch_pixels(x_deg: float, y_deg: float, orientation_deg: float, phase_cycles: float,
                       shape: tuple[int, int], size_deg: float = GABOR_SIZE_DEG, sf_cpd: float = GABOR_SF,
                       contrast: float = CONTRAST) -> np.ndarray:
    """A grating in a circular aperture of diameter ``size_deg`` centred at ``(x_deg, y_deg)`` (y up), on gray."""
    x, y = _screen_grid(shape)
    dx, dy_down = x - x_deg, y + y_deg
    inside = (dx ** 2 + dy_down ** 2) <= (size_deg / 2) ** 2
    carrier = _carrier(dx, dy_down, orientation_deg, sf_cpd, phase_cycles)
    return (GRAY + GRAY * contrast * carrier * inside).astype(np.float32)


def degrees_to_scene_fraction(x_deg: np.ndarray, y_deg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Screen degrees (y up) -> the scene's normalised coordinates (fraction of width / height, y down)."""
    x = 0.5 + np.asarray(x_deg, dtype=float) * PIXELS_PER_DEGREE / SCENE_WIDTH_PX
    y = 0.5 - np.asarray(y_deg, dtype=float) * PIXELS_PER_DEGREE / SCENE_HEIGHT_PX
    return x, y
