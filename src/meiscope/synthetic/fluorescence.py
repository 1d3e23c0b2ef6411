"""From firing rates to the traces an Allen NWB file holds: spikes -> calcium -> fluorescence -> dF/F.

The recording is tiled into stimulus segments (250 ms for natural scenes); each segment has one
rate per cell. The chain, vectorised over cells:

1. Spikes: Poisson counts per segment (rate x duration); each spike at a uniform time within the
   segment, shifted by a response latency.
2. Calcium (GCaMP6f-like): every spike adds ``A (exp(-t/tau_decay) - exp(-t/tau_rise))``
   normalised to a peak of ``spike_amplitude_dff``, sampled at the two-photon frame times. The
   sub-frame spike times are kept exactly (each exponential is advanced to the next frame) and the
   two exponentials run as first-order recursive filters, so back-to-back trials overlap as in vivo.
3. Fluorescence: ``F_cell = F0 * bleach(t) * (1 + calcium)`` with a per-cell F0 and a slow
   photobleaching; a neuropil signal (slow fluctuations shared by all cells + per-cell fluctuations
   + a little of the population's calcium) contaminates the ROI:
   ``demixed = F_cell + r * neuropil + noise`` (noise s.d. ``noise_std_dff * F0``) and, as the
   Allen pipeline does, ``corrected = demixed - r * neuropil``.
4. dF/F = (corrected - B) / B with B a running median over 180 s (the Allen pipeline's baseline
   window), computed as the median of 10-s block medians within the window and linearly
   interpolated between block centres (fast, and the same thing for a slowly varying baseline).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import lfilter

FRAME_RATE_HZ = 30.0  # two-photon acquisition clock
RESPONSE_LATENCY_S = 0.05  # mouse V1 onset latency
BASELINE_WINDOW_S = 180.0  # running-median window of the dF/F baseline
BASELINE_BLOCK_S = 10.0
F0_RANGE = (150.0, 600.0)  # baseline fluorescence of a cell (a.u., log-uniform)
NEUROPIL_RATIO = (0.5, 0.9)  # neuropil baseline / F0
BLEACH_FRACTION = 0.08  # fluorescence lost over the recording (slow exponential)


@dataclass
class Traces:
    """Every trace of one recording; ``(n_cells, n_frames)`` float32 unless noted.

    Attributes:
        timestamps: ``(n_frames,)`` float64 seconds.
        calcium: noise-free dF/F of the calcium signal (ground truth, not written to the NWB).
        demixed: ROI fluorescence after demixing, still with neuropil contamination.
        neuropil: neuropil fluorescence around each ROI.
        r: ``(n_cells,)`` neuropil contamination ratio.
        corrected: ``demixed - r * neuropil``.
        dff: dF/F of ``corrected``.
        n_spikes: ``(n_cells,)`` int, spikes per cell.
    """

    timestamps: np.ndarray
    calcium: np.ndarray
    demixed: np.ndarray
    neuropil: np.ndarray
    r: np.ndarray
    corrected: np.ndarray
    dff: np.ndarray
    n_spikes: np.ndarray


def frame_times(n_frames: int, offset_s: float = 0.01) -> np.ndarray:
    """``(n_frames,)`` float64 acquisition times (s) on the ~30 Hz clock.

    The small offset keeps stimulus onsets (multiples of 250 ms) off the frame instants, so the
    first frame of a presentation is never a floating-point tie.
    """
    return offset_s + np.arange(n_frames, dtype=np.float64) / FRAME_RATE_HZ


def poisson_spikes(onsets_s: np.ndarray, duration_s: float, rates_hz: np.ndarray, rng: np.random.Generator,
                   latency_s: float = RESPONSE_LATENCY_S) -> tuple[np.ndarray, np.ndarray]:
    """Poisson spikes of every cell in every segment.

    Args:
        onsets_s: ``(n_segments,)`` segment start times (s).
        duration_s: length of each segment (s).
        rates_hz: ``(n_segments, n_cells)`` rate of each cell in each segment (Hz).

    Returns:
        ``(cell, time_s)``: ``(n_spikes,)`` int cell index and float64 spike time.
    """
    counts = rng.poisson(np.clip(rates_hz, 0, None) * duration_s)  # (S, n)
    seg, cell = np.nonzero(counts)
    k = counts[seg, cell]
    seg, cell = np.repeat(seg, k), np.repeat(cell, k)
    times = onsets_s[seg] + latency_s + duration_s * rng.random(len(seg))
    return cell, times


def calcium_dff(cell: np.ndarray, times: np.ndarray, n_cells: int, timestamps: np.ndarray,
                tau_rise_s: float, tau_decay_s: float, amplitude: float) -> np.ndarray:
    """Noise-free calcium dF/F from spike times (double-exponential kernel with peak ``amplitude``).

    Args:
        cell, times: ``(n_spikes,)`` spike owners and times (s).
        timestamps: ``(n_frames,)`` frame times (s), evenly spaced.

    Returns:
        ``(n_cells, n_frames)`` float64.
    """
    n_frames = len(timestamps)
    dt = 1.0 / FRAME_RATE_HZ
    t_peak = tau_decay_s * tau_rise_s / (tau_decay_s - tau_rise_s) * np.log(tau_decay_s / tau_rise_s)
    scale = amplitude / (np.exp(-t_peak / tau_decay_s) - np.exp(-t_peak / tau_rise_s))
    # a spike at time s first shows in frame k = first frame at or after s, already decayed by
    # exp(-(t_k - s) / tau); from there each exponential decays by exp(-dt / tau) per frame
    frame = np.searchsorted(timestamps, times, side="left")
    keep = frame < n_frames
    frame, cell, lag = frame[keep], cell[keep], timestamps[frame[keep]] - times[keep]
    out = np.zeros((n_cells, n_frames))
    for tau, sign in ((tau_decay_s, 1.0), (tau_rise_s, -1.0)):
        impulses = np.bincount(cell * n_frames + frame, weights=np.exp(-lag / tau),
                               minlength=n_cells * n_frames).reshape(n_cells, n_frames)
        out += sign * lfilter([1.0], [1.0, -np.exp(-dt / tau)], impulses, axis=1)
    return scale * out


def smooth_noise(shape: tuple[int, int], tau_s: float, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance noise low-pass filtered with time constant ``tau_s`` (AR(1) on the frame clock).

    Returns:
        ``shape`` = ``(n_series, n_frames)`` float64.
    """
    a = np.exp(-1.0 / (FRAME_RATE_HZ * tau_s))
    white = rng.standard_normal(shape) * np.sqrt(1 - a * a)
    return lfilter([1.0], [1.0, -a], white, axis=1)


def running_median_baseline(trace: np.ndarray, window_s: float = BASELINE_WINDOW_S,
                            block_s: float = BASELINE_BLOCK_S) -> np.ndarray:
    """Slow baseline of each trace: running median over ``window_s`` (see module docstring).

    Args:
        trace: ``(n_cells, n_frames)``.

    Returns:
        ``(n_cells, n_frames)`` float64.
    """
    n_cells, n_frames = trace.shape
    block = max(int(round(block_s * FRAME_RATE_HZ)), 1)
    n_blocks = max(n_frames // block, 1)
    used = min(n_blocks * block, n_frames)
    medians = np.median(trace[:, :used].reshape(n_cells, n_blocks, -1), axis=2)  # (n, B)
    half = max(int(round(window_s / block_s / 2)), 0)
    smooth = np.empty_like(medians)
    for b in range(n_blocks):
        smooth[:, b] = np.median(medians[:, max(b - half, 0): b + half + 1], axis=1)
    centres = (np.arange(n_blocks) + 0.5) * (used / n_blocks)
    frames = np.arange(n_frames)
    return np.stack([np.interp(frames, centres, s) for s in smooth])


def simulate_traces(onsets_s: np.ndarray, duration_s: float, rates_hz: np.ndarray, n_frames: int,
                    rng: np.random.Generator, *, tau_rise_s: float, tau_decay_s: float,
                    spike_amplitude_dff: float, noise_std_dff: float, neuropil_r: float) -> Traces:
    """Simulate the whole recording of a population.

    Args:
        onsets_s: ``(n_segments,)`` start (s) of each stimulus segment; segments tile the recording.
        duration_s: segment length (s).
        rates_hz: ``(n_segments, n_cells)`` rate of every cell in every segment.
        n_frames: number of two-photon frames.

    Returns:
        :class:`Traces`.
    """
    n_cells = rates_hz.shape[1]
    timestamps = frame_times(n_frames)
    cell, times = poisson_spikes(onsets_s, duration_s, rates_hz, rng)
    calcium = calcium_dff(cell, times, n_cells, timestamps, tau_rise_s, tau_decay_s, spike_amplitude_dff)

    f0 = np.exp(rng.uniform(np.log(F0_RANGE[0]), np.log(F0_RANGE[1]), n_cells))[:, None]
    bleach_tau = rng.uniform(0.5, 1.5) * n_frames / FRAME_RATE_HZ
    bleach = (1 - BLEACH_FRACTION) + BLEACH_FRACTION * np.exp(-timestamps / bleach_tau)[None, :]
    f_cell = f0 * bleach * (1 + calcium)

    shared = 0.06 * smooth_noise((1, n_frames), 20.0, rng) + 0.03 * smooth_noise((1, n_frames), 2.0, rng)
    own = 0.03 * smooth_noise((n_cells, n_frames), 1.0, rng)
    population = 0.3 * calcium.mean(axis=0, keepdims=True)
    neuropil = f0 * rng.uniform(*NEUROPIL_RATIO, (n_cells, 1)) * bleach * (1 + shared + own + population)

    r = np.full(n_cells, float(neuropil_r))
    noise = noise_std_dff * f0 * rng.standard_normal((n_cells, n_frames))
    demixed = f_cell + r[:, None] * neuropil + noise
    corrected = demixed - r[:, None] * neuropil
    base = running_median_baseline(corrected)
    dff = (corrected - base) / base
    return Traces(timestamps=timestamps, calcium=calcium.astype(np.float32), demixed=demixed.astype(np.float32),
                  neuropil=neuropil.astype(np.float32), r=r, corrected=corrected.astype(np.float32),
                  dff=dff.astype(np.float32), n_spikes=np.bincount(cell, minlength=n_cells))
