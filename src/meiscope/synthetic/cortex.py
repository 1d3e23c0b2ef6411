"""``meiscope synthesize``: simulated natural-scenes sessions in allensdk's cache layout.

For each session ``i`` (experiment id ``first_experiment_id + i``, its own sub-seed):

1. the population (:mod:`.population`) is drawn and calibrated on the scenes;
2. a session-B-like schedule is laid out: each of the ``n_images`` scenes and the blank (-1)
   shown ``repeats`` times in random order, 250 ms each, back to back, split into 3 epochs that are
   separated by other stimuli (not simulated as images; cells fire irregularly) and a gray
   spontaneous epoch of ``spontaneous_s``::

       [other 30 s][scenes 1/3][spontaneous][other 30 s][scenes 2/3][other 30 s][scenes 3/3][other 30 s]

3. every segment's rates above baseline are scaled by a gain shared by the population
   (:func:`shared_gain`), then spikes, calcium, fluorescence and dF/F are simulated on the
   30 Hz frame clock (:mod:`.fluorescence`); presentations span 7 or 8 frames, as in Allen's tables;
4. the NWB file (:mod:`.nwb`) and the ground truth are written.

The scenes are shared by all sessions (Allen shows the same 118 images in every session B).
Same config -> byte-identical files.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.signal import lfilter

from meiscope.config import SyntheticConfig, recorded_config
from meiscope.synthetic import fluorescence as fl
from meiscope.synthetic import portable
from meiscope.synthetic.nwb import SessionArrays, SessionMetadata, write_session_nwb
from meiscope.synthetic.population import (CellParams, ExtraRanges, TruePopulation, calibrate,
                                           sample_cells, save_ground_truth)
from meiscope.synthetic.scenes import make_scenes

PRESENTATION_S = 0.25
N_EPOCHS = 3
OTHER_STIMULUS_S = 30.0  # each block of "other stimuli" (static gratings, natural movie) between epochs
# Stored traces are rounded far below their noise so that gzip can shrink them (~2x):
TRACE_MANTISSA_BITS = 12  # fluorescence keeps 12 of float32's 23 mantissa bits (rel. error 1.2e-4)
DFF_STEP = 2.0 ** -12  # dF/F in steps of 2.4e-4 (the noise is ~0.05)
# (genotype, imaging depth) cycled over sessions, like different Allen containers
LINES = (
    ("Cux2-CreERT2/wt;Camk2a-tTA/wt;Ai93(TITL-GCaMP6f)/wt", 175),
    ("Rorb-IRES2-Cre/wt;Camk2a-tTA/wt;Ai93(TITL-GCaMP6f)/wt", 275),
    ("Rbp4-Cre_KL100/wt;Camk2a-tTA/wt;Ai93(TITL-GCaMP6f)/wt", 375),
    ("Emx1-IRES-Cre/wt;Camk2a-tTA/wt;Ai93(TITL-GCaMP6f)/wt", 175),
)
OTHER, SPONTANEOUS = -3, -2  # segment codes besides -1 (blank) and 0..n_images-1 (scenes)




@dataclass
class Schedule:
    """The recording tiled into 250-ms segments.

    Attributes:
        onsets_s: ``(n_segments,)`` start time (s) of each segment.
        codes: ``(n_segments,)`` int: image index, -1 blank, -2 spontaneous gray, -3 other stimuli.
        natural_scenes: ``(n_presentations, 3)`` int (frame, start, end) in acquisition frames.
        spontaneous: ``(n_epochs, 2)`` int (start, end) frames of the gray epochs.
        n_frames: number of two-photon frames.
    """

    onsets_s: np.ndarray
    codes: np.ndarray
    natural_scenes: np.ndarray
    spontaneous: np.ndarray
    n_frames: int


def cell_ids_for(experiment_id: int, n_cells: int) -> np.ndarray:
    """Allen-like cell specimen ids, distinct between sessions (assumes n_cells <= 10,000)."""
    return 600_000_000 + (int(experiment_id) % 100_000) * 10_000 + np.arange(n_cells, dtype=np.int64)


def make_schedule(n_images: int, repeats: int, spontaneous_s: float, rng: np.random.Generator) -> Schedule:
    """Lay out a session-B-like recording (see module docstring)."""
    order = np.repeat(np.arange(-1, n_images), repeats)[rng.permutation((n_images + 1) * repeats)]
    epochs = np.array_split(order, N_EPOCHS)
    n_other = int(round(OTHER_STIMULUS_S / PRESENTATION_S))
    n_spont = int(round(max(spontaneous_s, 0.0) / PRESENTATION_S))
    blocks = [np.full(n_other, OTHER), epochs[0], np.full(n_spont, SPONTANEOUS), np.full(n_other, OTHER),
              epochs[1], np.full(n_other, OTHER), epochs[2], np.full(n_other, OTHER)]
    codes = np.concatenate(blocks).astype(np.int64)
    onsets = np.arange(len(codes)) * PRESENTATION_S
    n_frames = int(np.floor(len(codes) * PRESENTATION_S * fl.FRAME_RATE_HZ))
    ts = fl.frame_times(n_frames)
    start = np.searchsorted(ts, onsets, side="left")
    end = np.searchsorted(ts, onsets + PRESENTATION_S, side="left")
    ns = codes >= -1
    natural_scenes = np.stack([codes[ns], start[ns], end[ns]], axis=1)
    spont = np.flatnonzero(codes == SPONTANEOUS)
    spontaneous = (np.array([[start[spont[0]], end[spont[-1]]]], dtype=np.int64) if len(spont)
                   else np.zeros((0, 2), dtype=np.int64))
    return Schedule(onsets_s=onsets, codes=codes, natural_scenes=natural_scenes, spontaneous=spontaneous,
                    n_frames=n_frames)


def shared_gain(n_segments: int, sd: float, tau_s: float, rng: np.random.Generator) -> np.ndarray:
    """``(n_segments,)`` multiplicative gain shared by the whole population, log-normal with mean 1.

    Cortical responses to repeats of one stimulus co-fluctuate across the population, and most of
    that shared variability is a common gain (Goris et al. 2014; Lin et al. 2015). Half of the
    log-gain variance changes slowly (an AR(1) process with time constant ``tau_s``: arousal,
    running, state), half from one presentation to the next.
    """
    if sd == 0:
        return np.ones(n_segments)
    a = math.exp(-PRESENTATION_S / tau_s)
    white = rng.standard_normal(n_segments)
    drive = white * np.sqrt(1 - a * a)
    drive[0] = white[0]  # start the slow process at its stationary variance
    slow = lfilter([1.0], [1.0, -a], drive)
    fast = rng.standard_normal(n_segments)
    log_gain = sd * np.sqrt(0.5) * (slow + fast)
    return portable.exp(log_gain - sd * sd / 2)


def segment_rates(population: TruePopulation, image_rates: np.ndarray, codes: np.ndarray,
                  rng: np.random.Generator, gain_sd: float = 0.0, gain_tau_s: float = 20.0) -> np.ndarray:
    """Rate of every cell in every segment.

    Args:
        image_rates: ``(n_images, n_cells)`` true rates (Hz) for the scenes.
        codes: ``(n_segments,)`` segment codes of :class:`Schedule`.
        gain_sd, gain_tau_s: the shared gain fluctuations (:func:`shared_gain`); they scale each
            segment's rates above baseline.

    Returns:
        ``(n_segments, n_cells)`` Hz: scene rates, baseline for blank and gray, and for "other
        stimuli" baseline plus sparse random drive of the responsive cells; every rate above
        baseline times the segment's shared gain.
    """
    p = population.params
    rates = np.tile(p.baseline, (len(codes), 1))
    shown = codes >= 0
    rates[shown] = image_rates[codes[shown]]
    other = np.flatnonzero(codes == OTHER)
    bursts = portable.power(rng.random((len(other), p.n_cells)), 4) * (p.peak_rate - p.baseline)
    rates[other] += bursts * p.responsive
    gain = shared_gain(len(codes), gain_sd, gain_tau_s, rng)
    return p.baseline + gain[:, None] * (rates - p.baseline)


def quantise(x: np.ndarray, step: float = DFF_STEP) -> np.ndarray:
    """float32 values rounded to multiples of ``step`` (a power of two; NaN stays NaN)."""
    return (np.rint(np.asarray(x, dtype=np.float32) / np.float32(step)) * np.float32(step)).astype(np.float32)


def round_mantissa(x: np.ndarray, bits: int = TRACE_MANTISSA_BITS) -> np.ndarray:
    """float32 values rounded to ``bits`` mantissa bits (NaN stays NaN): gzip then shrinks them ~2x."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    drop = 23 - bits
    rounded = (u + np.uint32(1 << (drop - 1))) & np.uint32(~((1 << drop) - 1) & 0xFFFFFFFF)
    out = rounded.view(np.float32)
    return np.where(np.isnan(x), np.float32(np.nan), out)


def running_speed_trace(n_frames: int, rng: np.random.Generator) -> np.ndarray:
    """cm/s: slow running bouts plus jitter, never negative."""
    drive = fl.smooth_noise((1, n_frames), 20.0, rng)[0]
    jitter = fl.smooth_noise((1, n_frames), 0.3, rng)[0]
    return np.clip(25.0 * np.clip(drive - 0.3, 0, None) + 1.5 * jitter, 0, None)


def max_projection_image(n_cells: int, brightness: np.ndarray, rng: np.random.Generator, size: int = 512) -> np.ndarray:
    """A 512 x 512 maximum-intensity projection: blurred somata on a dim background."""
    from scipy.ndimage import gaussian_filter

    image = np.zeros((size, size))
    rows, cols = rng.integers(20, size - 20, n_cells), rng.integers(20, size - 20, n_cells)
    np.add.at(image, (rows, cols), brightness)
    image = gaussian_filter(image, 4.0) * (2 * np.pi * 16) + 60 + 10 * gaussian_filter(rng.random((size, size)), 8)
    return np.rint(np.clip(image, 0, 4095)).astype(np.float32)


def session_rngs(cfg: SyntheticConfig, index: int) -> list[np.random.Generator]:
    """The four generators of session ``index``: population, schedule, traces, extras."""
    seeds = np.random.SeedSequence(entropy=cfg.seed, spawn_key=(index,)).spawn(4)
    return [np.random.default_rng(s) for s in seeds]


def session_cells(cfg: SyntheticConfig, index: int, scenes: np.ndarray, device: Any = "cpu") -> CellParams:
    """The calibrated true cells of session ``index`` (also recorded by the synthetic Neuropixels session)."""
    experiment_id = cfg.first_experiment_id + index
    params = sample_cells(cfg.n_cells, asdict(cfg.kinds), tuple(cfg.rf_sigma_deg), tuple(cfg.peak_rate_hz),
                          cfg.baseline_rate_hz, cell_ids_for(experiment_id, cfg.n_cells), session_rngs(cfg, index)[0],
                          saturation=tuple(cfg.saturation), rf_centre_range=tuple(cfg.rf_centre_range),
                          extras=ExtraRanges.from_config(cfg))
    return calibrate(params, scenes, device=device)


def simulate_session(cfg: SyntheticConfig, index: int, scenes: np.ndarray, device: Any = "cpu"
                     ) -> tuple[SessionArrays, TruePopulation, fl.Traces]:
    """Simulate session ``index`` of ``cfg`` (nothing is written).

    Args:
        scenes: ``(n_images, H, W)`` 0-255 template shown in the session.

    Returns:
        ``(arrays, population, traces)``: what the NWB file holds, the true neurons (on cpu) and
        the full simulated traces (including the noise-free calcium).
    """
    import torch

    experiment_id = cfg.first_experiment_id + index
    _, schedule_rng, trace_rng, extra_rng = session_rngs(cfg, index)
    params = session_cells(cfg, index, scenes, device=device)
    # the rates that drive the simulation are computed in float64 (thread-count independent bytes)
    population = TruePopulation(params).to(device=device, dtype=torch.float64)
    with torch.no_grad():
        image_rates = np.concatenate([
            population(torch.from_numpy(np.ascontiguousarray(scenes[i:i + 16])).to(device)).cpu().numpy()
            for i in range(0, len(scenes), 16)])
    population = population.to(device="cpu", dtype=torch.float32)

    schedule = make_schedule(cfg.n_images, cfg.repeats, cfg.spontaneous_s, schedule_rng)
    rates = segment_rates(population, image_rates, schedule.codes, schedule_rng, gain_sd=cfg.shared_gain_sd,
                          gain_tau_s=cfg.shared_gain_tau_s)
    traces = fl.simulate_traces(schedule.onsets_s, PRESENTATION_S, rates, schedule.n_frames, trace_rng,
                                tau_rise_s=cfg.tau_rise_s, tau_decay_s=cfg.tau_decay_s,
                                spike_amplitude_dff=cfg.spike_amplitude_dff, noise_std_dff=cfg.noise_std_dff,
                                neuropil_r=cfg.neuropil_r, neuropil_r_sd=cfg.neuropil_r_sd,
                                neuropil_r_error_sd=cfg.neuropil_r_error_sd)

    dff = traces.dff.copy()
    for cell in np.sort(extra_rng.choice(cfg.n_cells, cfg.nan_cells, replace=False)):
        length = int(extra_rng.integers(30, 300))
        start = int(extra_rng.integers(0, max(schedule.n_frames - length, 1)))
        dff[cell, start:start + length] = np.nan

    genotype, depth = LINES[index % len(LINES)]
    metadata = SessionMetadata(
        experiment_id=experiment_id, experiment_container_id=700_000_000 + experiment_id % 100_000,
        genotype=genotype, imaging_depth_um=depth,
        specimen_name=";".join(part.split("/")[0] for part in genotype.split(";")) + f"-{index}",
        session_start_time=f"2017-03-{1 + index % 28:02d} 13:02:09")
    arrays = SessionArrays(
        metadata=metadata, cell_ids=params.cell_ids, roi_ids=np.array([str(i) for i in range(cfg.n_cells)]),
        timestamps=traces.timestamps, dff=quantise(dff), demixed=round_mantissa(traces.demixed),
        neuropil=round_mantissa(traces.neuropil), r=traces.r, natural_scenes=schedule.natural_scenes,
        template=scenes, spontaneous=schedule.spontaneous,
        running_speed=np.round(running_speed_trace(schedule.n_frames, extra_rng), 3),
        max_projection=max_projection_image(cfg.n_cells, np.nanmean(traces.demixed, axis=1), extra_rng),
        motion_correction=np.rint(2.0 * fl.smooth_noise((2, schedule.n_frames), 30.0, extra_rng).T) + 0.0)
    return arrays, population, traces


def synthesize_sessions(cfg: SyntheticConfig, cache_dir: Path, progress: bool = True,
                        device: Any = "cpu") -> list[int]:
    """Write ``cfg.n_sessions`` synthetic sessions into an allensdk cache directory.

    Writes ``cache_dir/manifest.json`` (allensdk's own), ``ophys_experiment_data/<id>.nwb`` and
    ``ground_truth/<id>.{npz,json}``, replacing existing files (the caller decides when to call).

    Returns:
        the experiment ids written.
    """
    from tqdm import tqdm

    from allensdk.core.brain_observatory_cache import BrainObservatoryCache

    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    manifest = cache_dir / "manifest.json"
    cache = BrainObservatoryCache(manifest_file=str(manifest))
    scenes = make_scenes(cfg.n_images, cfg.image_height, cfg.image_width, cfg.seed, progress=progress)
    config = recorded_config(cfg)
    ids = []
    for index in tqdm(range(cfg.n_sessions), desc="sessions", disable=not progress):
        arrays, population, _ = simulate_session(cfg, index, scenes, device=device)
        experiment_id = arrays.metadata.experiment_id
        nwb_path = Path(cache.get_cache_path(None, cache.EXPERIMENT_DATA_KEY, experiment_id))
        write_session_nwb(nwb_path, arrays)
        save_ground_truth(cache_dir, experiment_id, population, config)
        ids.append(experiment_id)
    return ids
