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

Both drifting stimuli are defined here frame by frame on Allen's 60-Hz monitor (:func:`drift_phase`,
:func:`screen_times`, :func:`gabor_frame`), for the synthetic session's truth and the model's training
frames alike. Allen's tables do not give the carrier's phase at a presentation's
onset (their ``phase`` column holds a clock-like value): meiscope starts every sweep at phase 0.
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
SCREEN_HZ = 60.0  # Allen's stimulus monitor refreshes at 60 Hz


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


def drift_phase(direction_deg: float, temporal_frequency: float, t_s: np.ndarray) -> np.ndarray:
    """The carrier's phase (cycles, in [0, 1)) ``t_s`` seconds after onset of a grating drifting at
    ``temporal_frequency`` Hz: it advances for directions below 180 deg and goes back for the opposite
    ones, which share the bars' orientation (``direction mod 180``)."""
    sign = 1.0 if direction_deg % 360.0 < 180.0 else -1.0
    return np.mod(sign * temporal_frequency * np.asarray(t_s, dtype=np.float64), 1.0)


def screen_times(start_s: float, stop_s: float) -> np.ndarray:
    """Onsets (s after the presentation's onset) of the 60-Hz screen frames shown in ``[start_s, stop_s)``."""
    first, last = int(np.ceil(start_s * SCREEN_HZ - 1e-9)), int(np.ceil(stop_s * SCREEN_HZ - 1e-9))
    return np.arange(first, last) / SCREEN_HZ


def gabor_frame(x_deg: float, y_deg: float, orientation_deg: float, t_s: float, shape: tuple[int, int]
                ) -> np.ndarray:
    """The Gabor patch on screen ``t_s`` after onset (drifting at :data:`GABOR_TF`): ``(H, W)`` float32 0-255."""
    return gabor_patch_pixels(x_deg, y_deg, orientation_deg, float(drift_phase(orientation_deg, GABOR_TF, t_s)),
                              shape)
