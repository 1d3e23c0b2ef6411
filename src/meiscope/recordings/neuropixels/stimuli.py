"""The Gabor patches of Brain Observatory 1.1: the stimulus only the Neuropixels sessions show.

Allen shows them at positions on the screen; meiscope draws them in the natural scenes' pixel
frame, the frame of the ground truth and of the model (:mod:`meiscope.recordings.screen`: the
918 x 1174 scene centred on the monitor at 9.68 px / deg, small-angle approximation at the screen
centre; Allen's spherical warping is ignored, as it is for the scenes). Positions ``(x, y)`` are
degrees from the screen centre, ``y`` up (Allen's Gabor positions); the carrier follows the
grating convention of :mod:`meiscope.recordings.brain_observatory` (orientation 0 deg = vertical
bars). The static gratings these sessions also show are shared with the two-photon containers and
live in :mod:`meiscope.recordings.brain_observatory`.

Parameters (``../shared/docs/allen-neuropixels.md`` section 5): a 9 x 9 grid (-40..40 deg, 10 deg
steps) x 3 orientations (0, 45, 90 deg), 20 deg circular aperture, 0.08 cycles / deg, 4 Hz drift,
contrast 0.8.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from meiscope.recordings.brain_observatory import CONTRAST, grating_carrier
from meiscope.recordings.screen import GRAY, scene_pixel_degrees

GABOR_POSITIONS = tuple(float(v) for v in range(-40, 41, 10))  # degrees from the screen centre
GABOR_ORIENTATIONS = (0.0, 45.0, 90.0)  # degrees
GABOR_SIZE_DEG = 20.0  # aperture diameter, degrees
GABOR_SF = 0.08  # cycles per degree
GABOR_TF = 4.0  # Hz: one whole cycle in each 250-ms presentation


def gabor_conditions() -> pd.DataFrame:
    """The 243 Gabor-patch conditions: ``x_position``, ``y_position`` (deg), ``orientation``."""
    rows = list(itertools.product(GABOR_POSITIONS, GABOR_POSITIONS, GABOR_ORIENTATIONS))
    return pd.DataFrame(rows, columns=["x_position", "y_position", "orientation"])


def gabor_patch_pixels(x_deg: float, y_deg: float, orientation_deg: float, phase_cycles: float,
                       shape: tuple[int, int], size_deg: float = GABOR_SIZE_DEG, sf_cpd: float = GABOR_SF,
                       contrast: float = CONTRAST) -> np.ndarray:
    """A grating in a circular aperture of diameter ``size_deg`` centred at ``(x_deg, y_deg)`` (y up), on gray.

    Returns ``(H, W)`` float32 0-255 screen pixels of a ``shape`` rendering of the scene frame.
    """
    x, y = scene_pixel_degrees(shape)
    dx, dy_down = x - x_deg, y + y_deg
    inside = (dx ** 2 + dy_down ** 2) <= (size_deg / 2) ** 2
    carrier = grating_carrier(dx, dy_down, orientation_deg, sf_cpd, phase_cycles)
    return (GRAY + GRAY * contrast * carrier * inside).astype(np.float32)
