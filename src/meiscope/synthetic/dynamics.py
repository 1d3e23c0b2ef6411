"""What the synthetic cortex does outside the model's assumptions: temporal dynamics and gaze shifts.

Temporal dynamics (movies and drifting gratings only; a natural scene is a 250-ms flash whose rate is
its static drive, as before). A cell's static drive ``D(t)`` (:meth:`TruePopulation.drive`), as a
fraction ``u = D / semisaturation`` of its half-saturating drive, is

1. filtered by the cell's own causal, biphasic temporal kernel: a positive alpha-function lobe peaking at
   ``t_peak`` minus ``biphasic`` times a negative lobe peaking at ``2 t_peak``, each lobe normalised to unit
   sum, so a sustained drive is passed at ``1 - biphasic`` of a transient one (mouse V1 prefers 1-2 Hz
   and is band-pass: Marshel et al. 2011, Durand et al. 2016); then rectified;
2. divided by ``1 + strength * a(t)``, where ``a`` is the filtered drive low-passed with time constant
   ``tau`` (feed-forward divisive adaptation; contrast adaptation in V1 builds up and recovers over ~1 s
   and longer: Sanchez-Vives et al. 2000);
3. turned into a rate by the cell's own Naka-Rushton: ``baseline + rate_max * v / (v + 1)``.

Gaze shifts: a presentation seen after a saccade is the image translated by the gaze shift (the
screen's gray fills in), so the cell sees it at another place in its receptive field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.signal import fftconvolve, lfilter

from meiscope.recordings.screen import GRAY, PIXELS_PER_DEGREE
from meiscope.synthetic import portable

SUBSTEP_S = 1.0 / 120.0  # the dynamics' time step: 4 per movie frame, 30 per 250-ms segment
KERNEL_PEAKS = 20  # a kernel runs this many times its time to peak (both lobes < 0.2% of their peak)
CELL_BLOCK = 64  # cells filtered together (bounds the FFT's memory on hour-long runs)


@dataclass(frozen=True)
class CellDynamics:
    """The temporal dynamics of every cell.

    Attributes:
        peak_s: ``(n_cells,)`` time to peak of each cell's positive lobe (s); 0 = no filter.
        biphasic: weight of the negative lobe (sustained / transient = 1 - biphasic).
        adaptation_strength, adaptation_tau_s: divisive adaptation (strength 0 = none).
    """

    peak_s: np.ndarray
    biphasic: float
    adaptation_strength: float
    adaptation_tau_s: float

    @property
    def active(self) -> bool:
        """Whether a response differs at all from the per-frame static one."""
        return bool(np.any(self.peak_s > 0)) or self.adaptation_strength > 0

    def rows(self, index: np.ndarray) -> "CellDynamics":
        """The dynamics of the cells ``index`` selects."""
        return CellDynamics(self.peak_s[index], self.biphasic, self.adaptation_strength, self.adaptation_tau_s)


def draw_dynamics(n_cells: int, peak_ms: tuple[float, float], biphasic: float, strength: float, tau_s: float,
                  rng: np.random.Generator) -> CellDynamics:
    """Per-cell times to peak, uniform in ``peak_ms`` (``[0, 0]``: no filter, nothing drawn)."""
    if peak_ms[1] <= 0:
        peak = np.zeros(n_cells)
    else:
        peak = rng.uniform(peak_ms[0], peak_ms[1], n_cells) / 1000.0
    return CellDynamics(peak_s=peak, biphasic=float(biphasic), adaptation_strength=float(strength),
                        adaptation_tau_s=float(tau_s))


def _alpha(t: np.ndarray, peak: float) -> np.ndarray:
    """Alpha function ``(t / peak) exp(1 - t / peak)``: 0 at t = 0, maximum 1 at ``peak``."""
    u = t / peak
    return u * portable.exp(1.0 - u)


def temporal_kernels(peak_s: np.ndarray, biphasic: float, dt: float = SUBSTEP_S) -> np.ndarray:
    """The cells' causal kernels on the ``dt`` grid (sample ``j`` is the weight of the drive ``j dt`` ago).

    A cell without a filter (``peak_s`` 0) gets the identity kernel.

    Returns:
        ``(length, n_cells)`` float64; every column sums to ``1 - biphasic`` (1 for the identity).
    """
    longest = float(np.max(peak_s)) if len(peak_s) else 0.0
    length = max(int(math.ceil(KERNEL_PEAKS * 2 * longest / dt)), 1)
    t = np.arange(length) * dt
    out = np.zeros((length, len(peak_s)))
    for cell, peak in enumerate(peak_s):
        if peak <= 0:
            out[0, cell] = 1.0
            continue
        positive, negative = _alpha(t, peak), _alpha(t, 2 * peak)
        out[:, cell] = positive / positive.sum() - biphasic * negative / negative.sum()
    return out


def respond(drive: np.ndarray, dynamics: CellDynamics, dt: float = SUBSTEP_S) -> np.ndarray:
    """The dynamic drive of every cell from its static drive over time (module docstring, steps 1-2).

    Args:
        drive: ``(n_steps, n_cells)`` static drive in units of each cell's semisaturation (>= 0), one row
            per ``dt``; the run starts from rest (a gray screen before it).

    Returns:
        ``(n_steps, n_cells)`` float64 >= 0, to go through the cells' Naka-Rushton.
    """
    drive = np.asarray(drive, dtype=np.float64)
    out = np.empty_like(drive)
    for start in range(0, drive.shape[1], CELL_BLOCK):
        cells = slice(start, start + CELL_BLOCK)
        kernels = temporal_kernels(dynamics.peak_s[cells], dynamics.biphasic, dt)
        if kernels.shape[0] == 1:  # identity filters: nothing to convolve
            filtered = drive[:, cells] * kernels[0]
        else:
            filtered = fftconvolve(drive[:, cells], kernels, axes=0)[: len(drive)]
        out[:, cells] = np.clip(filtered, 0.0, None)
    if dynamics.adaptation_strength > 0:
        a = math.exp(-dt / dynamics.adaptation_tau_s)
        # a(t): the filtered drive low-passed (unit DC gain), as seen BEFORE the current step
        state = lfilter([0.0, 1.0 - a], [1.0, -a], out, axis=0)
        out = out / (1.0 + dynamics.adaptation_strength * state)
    return out


def naka_rushton(u: np.ndarray, baseline: np.ndarray, rate_max: np.ndarray) -> np.ndarray:
    """``(n_steps, n_cells)`` Hz from drives ``u`` in units of the semisaturation (module docstring, step 3)."""
    return baseline + rate_max * u / (u + 1.0)


# --------------------------------------------------------------------------------------
# gaze shifts
# --------------------------------------------------------------------------------------
def draw_gaze_shifts(n_presentations: int, fraction: float, amplitude_deg: tuple[float, float],
                     rng: np.random.Generator) -> np.ndarray:
    """Gaze shift of every presentation: ``(n_presentations, 2)`` float (down, right) in degrees.

    A presentation follows a saccade with probability ``fraction``; its shift has a uniform direction
    and a size uniform in ``amplitude_deg``; the others are (0, 0).
    """
    shifted = rng.random(n_presentations) < fraction
    size = rng.uniform(amplitude_deg[0], amplitude_deg[1], n_presentations)
    angle = rng.uniform(0.0, 2 * np.pi, n_presentations)
    out = np.stack([size * np.sin(angle), size * np.cos(angle)], axis=1)
    out[~shifted] = 0.0
    return out


def shift_image(image: np.ndarray, shift_deg: np.ndarray, pixels_per_degree: float = PIXELS_PER_DEGREE
                ) -> np.ndarray:
    """``image`` ``(H, W)`` 0-255 translated by ``shift_deg`` (down, right) on the screen, in whole pixels.

    The pixel that was at ``(r, c)`` is seen at ``(r + dy, c + dx)``; what enters the screen is gray.
    ``pixels_per_degree`` is that of the image's resolution (the scene's 9.68 px / deg by default).
    """
    dy, dx = (int(round(float(v) * pixels_per_degree)) for v in shift_deg)
    height, width = image.shape
    out = np.full_like(image, GRAY)
    if abs(dy) >= height or abs(dx) >= width:
        return out
    src_rows = slice(max(-dy, 0), height - max(dy, 0))
    src_cols = slice(max(-dx, 0), width - max(dx, 0))
    dst_rows = slice(max(dy, 0), height - max(-dy, 0))
    dst_cols = slice(max(dx, 0), width - max(-dx, 0))
    out[dst_rows, dst_cols] = image[src_rows, src_cols]
    return out
