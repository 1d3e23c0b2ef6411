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
   photobleaching. The neuropil measured in an annulus around each ROI carries slow fluctuations
   shared by all cells, per-cell fluctuations and a little of the whole population's calcium.
   What actually contaminates the ROI is the neuropil right at the soma, which the annulus only
   approximates: it carries the calcium of the cell's NEAREST neighbours instead of the
   population's (stimulus-locked, image-specific signal) and its own fluctuations. Each ROI
   takes it up with its own true ratio ``r_true`` (spread ``neuropil_r_sd`` around
   ``neuropil_r``): ``demixed = F_cell + r_true * local_neuropil + noise`` (noise s.d.
   ``noise_std_dff * F0``). As in the Allen pipeline, the correction uses an ESTIMATED ratio
   (``r``, stored in the NWB; error s.d. ``neuropil_r_error_sd``) and the annulus trace:
   ``corrected = demixed - r * neuropil``. So the stored dF/F keeps part of the contamination,
   as real traces do: an unresponsive cell can inherit a weak, reliable image tuning from its
   neighbours.
   Optionally (:class:`Indicator`; off by default) the calcium is not linear in the spikes: each cell
   has its own dF/F per spike (log-normal over cells) and the indicator saturates (a Hill function of
   the calcium, GCaMP6f-like), so the calcium is not in the double-exponential family of the kernel fit.
4. dF/F = (corrected - B) / B with B a running median over 180 s (the Allen pipeline's baseline
   window), computed as the median of 10-s block medians within the window and linearly
   interpolated between block centres (fast, and the same thing for a slowly varying baseline).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.signal import lfilter

from meiscope.synthetic import portable

FRAME_RATE_HZ = 30.0  # two-photon acquisition clock
RESPONSE_LATENCY_S = 0.05  # mouse V1 onset latency
BASELINE_WINDOW_S = 180.0  # running-median window of the dF/F baseline
BASELINE_BLOCK_S = 10.0
F0_RANGE = (150.0, 600.0)  # baseline fluorescence of a cell (a.u., log-uniform)
NEUROPIL_RATIO = (0.5, 0.9)  # neuropil baseline / F0
NEUROPIL_POPULATION_WEIGHT = 0.3  # share of (mean) neighbour calcium in the neuropil signal
N_NEIGHBOURS = 8  # cells whose calcium reaches an ROI's local neuropil
R_TRUE_RANGE = (0.2, 1.0)  # true contamination ratios are clipped to this range
BLEACH_FRACTION = 0.08  # fluorescence lost over the recording (slow exponential)
# resting free calcium / the indicator's Kd: ~50 nM at rest (Maravall et al. 2000) over GCaMP6f's 375 nM
# (Chen et al. 2013); it sets where on the Hill curve a cell at rest sits
CA_REST_OVER_KD = 50.0 / 375.0


@dataclass(frozen=True)
class Indicator:
    """A calcium indicator outside the linear, one-amplitude model.

    Attributes:
        amplitude: ``(n_cells,)`` small-signal dF/F of one spike of each cell.
        hill_n: Hill coefficient (0: linear in the calcium, as without an :class:`Indicator`).
        kd_spikes: the indicator's Kd, in units of one spike's peak calcium above rest.
    """

    amplitude: np.ndarray
    hill_n: float
    kd_spikes: float


def draw_amplitudes(n_cells: int, mean: float, sd: float, rng: np.random.Generator) -> np.ndarray:
    """``(n_cells,)`` log-normal dF/F per spike with mean ``mean`` and log-s.d. ``sd``."""
    return mean * portable.exp(sd * rng.standard_normal(n_cells) - sd * sd / 2)


def hill_dff(spike_calcium: np.ndarray, hill_n: float, kd_spikes: float) -> np.ndarray:
    """dF/F per unit amplitude of a saturating indicator, from the calcium above rest in spike units.

    ``F ~ H(c) = c^n / (c^n + Kd^n)`` with ``c = c_rest + spike_calcium``; the result
    ``(H(c) - H(c_rest)) / H'(c_rest)`` has slope 1 at rest (a cell's amplitude keeps meaning its
    small-signal dF/F per spike), is supralinear for a few spikes and saturates at
    ``(1 - H(c_rest)) / H'(c_rest)``. ``hill_n`` 0 returns the calcium unchanged.
    """
    if hill_n == 0:
        return np.asarray(spike_calcium, dtype=np.float64)
    n, kd = float(hill_n), float(kd_spikes)
    rest = CA_REST_OVER_KD * kd
    h_rest = rest ** n / (rest ** n + kd ** n)
    slope = n * rest ** (n - 1) * kd ** n / (rest ** n + kd ** n) ** 2
    c = rest + np.clip(spike_calcium, 0.0, None)
    c_n = portable.power(c, n)  # not numpy's **, whose bits may depend on AVX-512 (portable.py)
    return (c_n / (c_n + kd ** n) - h_rest) / slope


@dataclass
class Traces:
    """Every trace of one recording; ``(n_cells, n_frames)`` float32 unless noted.

    Attributes:
        timestamps: ``(n_frames,)`` float64 seconds.
        calcium: noise-free dF/F of the calcium signal (ground truth, not written to the NWB).
        demixed: ROI fluorescence after demixing, still with neuropil contamination.
        neuropil: neuropil fluorescence measured around each ROI (annulus).
        r: ``(n_cells,)`` the pipeline's ESTIMATE of the contamination ratio (stored in the NWB).
        r_true: ``(n_cells,)`` the ratio at which each ROI really takes up its local neuropil.
        corrected: ``demixed - r * neuropil`` (the Allen pipeline's correction).
        dff: dF/F of ``corrected``.
        n_spikes: ``(n_cells,)`` int, spikes per cell.
        spike_amplitude: ``(n_cells,)`` dF/F of one spike of each cell (at rest, with an :class:`Indicator`).
    """

    timestamps: np.ndarray
    calcium: np.ndarray
    demixed: np.ndarray
    neuropil: np.ndarray
    r: np.ndarray
    r_true: np.ndarray
    corrected: np.ndarray
    dff: np.ndarray
    n_spikes: np.ndarray
    spike_amplitude: np.ndarray | None = None


def frame_times(n_frames: int, offset_s: float = 0.01) -> np.ndarray:
    """``(n_frames,)`` float64 acquisition times (s) on the ~30 Hz clock.

    The small offset keeps stimulus onsets (multiples of 250 ms) off the frame instants, so the
    first frame of a presentation is never a floating-point tie.
    """
    return offset_s + np.arange(n_frames, dtype=np.float64) / FRAME_RATE_HZ


def poisson_spikes(onsets_s: np.ndarray, duration_s: float | np.ndarray, rates_hz: np.ndarray,
                   rng: np.random.Generator, latency_s: float = RESPONSE_LATENCY_S) -> tuple[np.ndarray, np.ndarray]:
    """Poisson spikes of every cell in every segment.

    Args:
        onsets_s: ``(n_segments,)`` segment start times (s).
        duration_s: length of every segment (s), or ``(n_segments,)`` lengths.
        rates_hz: ``(n_segments, n_cells)`` rate of each cell in each segment (Hz).

    Returns:
        ``(cell, time_s)``: ``(n_spikes,)`` int cell index and float64 spike time.
    """
    per_segment = np.ndim(duration_s) > 0
    expected = np.clip(rates_hz, 0, None) * (np.asarray(duration_s)[:, None] if per_segment else duration_s)
    counts = rng.poisson(expected)  # (S, n)
    seg, cell = np.nonzero(counts)
    k = counts[seg, cell]
    seg, cell = np.repeat(seg, k), np.repeat(cell, k)
    length = np.asarray(duration_s)[seg] if per_segment else duration_s
    times = onsets_s[seg] + latency_s + length * rng.random(len(seg))
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
    t_peak = tau_decay_s * tau_rise_s / (tau_decay_s - tau_rise_s) * math.log(tau_decay_s / tau_rise_s)
    scale = amplitude / (math.exp(-t_peak / tau_decay_s) - math.exp(-t_peak / tau_rise_s))
    # a spike at time s first shows in frame k = first frame at or after s, already decayed by
    # exp(-(t_k - s) / tau); from there each exponential decays by exp(-dt / tau) per frame
    frame = np.searchsorted(timestamps, times, side="left")
    keep = frame < n_frames
    frame, cell, lag = frame[keep], cell[keep], timestamps[frame[keep]] - times[keep]

    def decaying(tau: float) -> np.ndarray:
        impulses = np.bincount(cell * n_frames + frame, weights=portable.exp(-lag / tau),
                               minlength=n_cells * n_frames).reshape(n_cells, n_frames)
        return lfilter([1.0], [1.0, -math.exp(-dt / tau)], impulses, axis=1)

    out = decaying(tau_decay_s)  # in place from here: a one-hour session's arrays are ~250 MB each
    out -= decaying(tau_rise_s)
    out *= scale
    return out


def smooth_noise(shape: tuple[int, int], tau_s: float, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance noise low-pass filtered with time constant ``tau_s`` (AR(1) on the frame clock).

    Drawn and filtered a few rows at a time (the same numbers as one ``(n_series, n_frames)`` draw:
    the generator fills arrays row by row), so a long recording needs no second full-size array.

    Returns:
        ``shape`` = ``(n_series, n_frames)`` float64.
    """
    a = math.exp(-1.0 / (FRAME_RATE_HZ * tau_s))
    out = np.empty(shape)
    for rows in _row_blocks(shape[0]):
        white = rng.standard_normal((rows.stop - rows.start, shape[1]))
        white *= np.sqrt(1 - a * a)
        out[rows] = lfilter([1.0], [1.0, -a], white, axis=1)
    return out


def _row_blocks(n_rows: int, size: int = 16) -> list[slice]:
    return [slice(start, min(start + size, n_rows)) for start in range(0, n_rows, size)]


def _neighbour_calcium(calcium: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``(n_cells, n_frames)`` mean calcium of each cell's :data:`N_NEIGHBOURS` nearest neighbours.

    Cells get random positions on a line (a stand-in for the imaging plane), so neighbourhoods
    overlap as they do in cortex; a cell is not its own neighbour.
    """
    n_cells = calcium.shape[0]
    k = min(N_NEIGHBOURS, n_cells - 1)
    if k < 1:
        return np.zeros_like(calcium)
    order = np.argsort(rng.random(n_cells), kind="stable")  # position on the line -> cell
    place = np.empty(n_cells, dtype=np.int64)
    place[order] = np.arange(n_cells)
    out = np.zeros_like(calcium)
    for cell in range(n_cells):
        distance = np.abs(place - place[cell]).astype(np.float64)
        distance[cell] = np.inf
        out[cell] = calcium[np.argsort(distance, kind="stable")[:k]].mean(axis=0)
    return out


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
    baseline = np.empty((n_cells, n_frames))
    for row, block_medians in zip(baseline, smooth):
        row[:] = np.interp(frames, centres, block_medians)
    return baseline


def simulate_traces(onsets_s: np.ndarray, duration_s: float | np.ndarray, rates_hz: np.ndarray, n_frames: int,
                    rng: np.random.Generator, *, tau_rise_s: float, tau_decay_s: float,
                    spike_amplitude_dff: float, noise_std_dff: float, neuropil_r: float,
                    neuropil_r_sd: float = 0.0, neuropil_r_error_sd: float = 0.0,
                    indicator: Indicator | None = None) -> Traces:
    """Simulate the whole recording of a population.

    Args:
        onsets_s: ``(n_segments,)`` start (s) of each stimulus segment; segments tile the recording.
        duration_s: segment length (s), or ``(n_segments,)`` lengths.
        rates_hz: ``(n_segments, n_cells)`` rate of every cell in every segment.
        n_frames: number of two-photon frames.
        neuropil_r, neuropil_r_sd: mean and spread over cells of the TRUE contamination ratio.
        neuropil_r_error_sd: error (s.d.) of the pipeline's estimate of each cell's ratio.
            ``neuropil_r`` 0 gives traces without any contamination.
        indicator: per-cell spike amplitudes and a saturating indicator (replaces ``spike_amplitude_dff``);
            None: one amplitude for every cell, linear calcium.

    Returns:
        :class:`Traces`.
    """
    n_cells = rates_hz.shape[1]
    timestamps = frame_times(n_frames)
    cell, times = poisson_spikes(onsets_s, duration_s, rates_hz, rng)
    if indicator is None:
        calcium = calcium_dff(cell, times, n_cells, timestamps, tau_rise_s, tau_decay_s, spike_amplitude_dff)
        amplitude = np.full(n_cells, float(spike_amplitude_dff))
    else:
        amplitude = np.asarray(indicator.amplitude, dtype=np.float64)
        calcium = hill_dff(calcium_dff(cell, times, n_cells, timestamps, tau_rise_s, tau_decay_s, 1.0),
                           indicator.hill_n, indicator.kd_spikes)
        calcium *= amplitude[:, None]

    # A one-hour session holds (n_cells, n_frames) float64 arrays of ~250 MB each, so the arrays are
    # updated in place and freed as soon as they are used. Every in-place step computes the same
    # float64 operation as the written-out formula in its comment (same operands, same order up to
    # commutation), so the traces are the same bytes as with the plain expressions.
    f0 = portable.log_uniform(rng, F0_RANGE[0], F0_RANGE[1], n_cells)[:, None]
    bleach_tau = rng.uniform(0.5, 1.5) * n_frames / FRAME_RATE_HZ
    bleach = (1 - BLEACH_FRACTION) + BLEACH_FRACTION * portable.exp(-timestamps / bleach_tau)[None, :]

    shared = 0.06 * smooth_noise((1, n_frames), 20.0, rng) + 0.03 * smooth_noise((1, n_frames), 2.0, rng)
    neuropil = smooth_noise((n_cells, n_frames), 1.0, rng)  # the neuropil's own fluctuations, 0.03 x
    neuropil *= 0.03
    population = NEUROPIL_POPULATION_WEIGHT * calcium.mean(axis=0, keepdims=True)
    level = f0 * rng.uniform(*NEUROPIL_RATIO, (n_cells, 1)) * bleach
    neuropil += 1 + shared  # neuropil = level * (1 + shared + own + population)
    neuropil += population
    neuropil *= level
    # the soma's own neuropil: its nearest neighbours' calcium instead of the population's
    neighbours = _neighbour_calcium(calcium, rng)
    calcium_out = calcium.astype(np.float32)
    f_cell = calcium  # f_cell = f0 * bleach * (1 + calcium)
    f_cell += 1
    for rows in _row_blocks(n_cells):
        f_cell[rows] *= f0[rows] * bleach
    del calcium
    local = smooth_noise((n_cells, n_frames), 1.0, rng)
    local *= 0.02
    neighbours *= NEUROPIL_POPULATION_WEIGHT  # local = neuropil + level * (0.02 noise + w neighbours - population)
    local += neighbours
    del neighbours
    local -= population
    local *= level
    local += neuropil

    r_true = np.clip(neuropil_r + neuropil_r_sd * rng.standard_normal(n_cells), *R_TRUE_RANGE)
    r = np.clip(r_true + neuropil_r_error_sd * rng.standard_normal(n_cells), 0.0, 1.0)
    if neuropil_r == 0:  # no contamination at all: nothing to estimate or subtract
        r_true, r = np.zeros(n_cells), np.zeros(n_cells)
    local *= r_true[:, None]  # demixed = f_cell + r_true * local + noise (noise drawn a few rows at a time)
    demixed = f_cell
    demixed += local
    del f_cell, local
    for rows in _row_blocks(n_cells):
        noise = rng.standard_normal((rows.stop - rows.start, n_frames))
        noise *= noise_std_dff * f0[rows]
        demixed[rows] += noise
    demixed_out, neuropil_out = demixed.astype(np.float32), neuropil.astype(np.float32)
    neuropil *= r[:, None]  # corrected = demixed - r * neuropil
    corrected = demixed
    corrected -= neuropil
    del demixed, neuropil
    corrected_out = corrected.astype(np.float32)
    base = running_median_baseline(corrected)
    dff = corrected  # dff = (corrected - base) / base
    dff -= base
    dff /= base
    return Traces(timestamps=timestamps, calcium=calcium_out, demixed=demixed_out,
                  neuropil=neuropil_out, r=r, r_true=r_true, corrected=corrected_out,
                  dff=dff.astype(np.float32), n_spikes=np.bincount(cell, minlength=n_cells),
                  spike_amplitude=amplitude)
