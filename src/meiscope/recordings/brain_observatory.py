"""The Brain Observatory stimuli that several recordings share: the static gratings.

Both the two-photon experiment containers (session B) and the Visual Coding - Neuropixels
Brain Observatory 1.1 sessions show the same static gratings, full screen: 6 orientations
(0-150 deg) x 5 spatial frequencies (0.02-0.32 cycles / deg) x 4 phases, contrast 0.8
(``../shared/docs/allen-neuropixels.md`` section 5). Allen stores no template for them, so they
are drawn from these parameters.

Convention (the one every grating and Gabor patch of meiscope uses, and that of
:func:`meiscope.synthetic.population.gabor`): a grating is
``127 (1 + contrast cos(2 pi (sf (x cos t + y_down sin t) + phase)))`` with ``x``, ``y_down`` in
degrees from the screen centre (:mod:`meiscope.recordings.screen`), ``sf`` in cycles per degree,
``phase`` in cycles; the orientation ``t`` is the direction along which the carrier varies,
clockwise on the screen from horizontal (0 deg = vertical bars, PsychoPy's convention).
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from meiscope.recordings.screen import GRAY, scene_pixel_degrees

CONTRAST = 0.8  # Michelson contrast of every grating and Gabor patch
GRATING_ORIENTATIONS = (0.0, 30.0, 60.0, 90.0, 120.0, 150.0)  # degrees
GRATING_SFS = (0.02, 0.04, 0.08, 0.16, 0.32)  # cycles per degree
GRATING_PHASES = (0.0, 0.25, 0.5, 0.75)  # fractions of a cycle


# drifting gratings (de Vries et al. 2020; Allen's Visual Coding stimulus set, shown by the two-photon
# containers' session A and by the Neuropixels brain_observatory_1.1 sessions)
DG_DIRECTIONS = tuple(float(d) for d in range(0, 360, 45))
DG_TEMPORAL_FREQUENCIES = (1.0, 2.0, 4.0, 8.0, 15.0)
DG_SPATIAL_FREQUENCY = 0.04  # cycles / degree


def drifting_grating_conditions() -> pd.DataFrame:
    """The 40 drifting-grating conditions: ``orientation`` (direction, deg) and ``temporal_frequency`` (Hz)."""
    rows = list(itertools.product(DG_DIRECTIONS, DG_TEMPORAL_FREQUENCIES))
    return pd.DataFrame(rows, columns=["orientation", "temporal_frequency"])


def grating_conditions() -> pd.DataFrame:
    """The 120 static-grating conditions: ``orientation`` (deg), ``spatial_frequency`` (cycles / deg),
    ``phase`` (cycles), ``contrast``."""
    rows = list(itertools.product(GRATING_ORIENTATIONS, GRATING_SFS, GRATING_PHASES))
    table = pd.DataFrame(rows, columns=["orientation", "spatial_frequency", "phase"])
    table["contrast"] = CONTRAST
    return table


def grating_carrier(x: np.ndarray, y_down: np.ndarray, orientation_deg: float, sf_cpd: float,
                    phase_cycles: float) -> np.ndarray:
    """The grating's sinusoid (-1..1) at points ``x``, ``y_down`` in degrees (module docstring's convention)."""
    theta = np.deg2rad(orientation_deg)
    along = x * np.cos(theta) + y_down * np.sin(theta)
    return np.cos(2 * np.pi * (sf_cpd * along + phase_cycles))


def grating_pixels(orientation_deg: float, sf_cpd: float, phase_cycles: float, shape: tuple[int, int],
                   contrast: float = CONTRAST) -> np.ndarray:
    """A full-field static grating as ``(H, W)`` float32 0-255 screen pixels of the scene frame.

    Sampled at the pixel centres of a ``shape`` rendering of the natural scenes' area of the screen.
    """
    x, y = scene_pixel_degrees(shape)
    return (GRAY + GRAY * contrast * grating_carrier(x, y, orientation_deg, sf_cpd, phase_cycles)).astype(np.float32)
