"""``meiscope synthesize`` for ``data.recording: neuropixels``: one Brain Observatory 1.1 session as spikes.

The units are the synthetic cortex's own cells (``synthetic`` section, session 0: the same seed,
scenes, calibration and truth module as the two-photon session), recorded with a Neuropixels probe:

- every VISp cell becomes a unit of probe C (new ids, its own spontaneous rate drawn from
  ``baseline_rate_hz``: Allen units fire ~1-10 Hz, far above the calcium model's 0.5 Hz);
- ``other_area_units`` units in CA1 and LP fire at their spontaneous rate whatever the screen shows;
- ``poor_units`` are poorly isolated copies of VISp units: each keeps a random 30-70% of its source's
  spikes (its true rate is scaled the same way) and fails one of Allen's quality metrics
  (``quality == "noise"``, amplitude cutoff, presence ratio or ISI violations), so the unit filters
  must drop it;
- quality metrics of the other units are drawn inside Allen's default thresholds.

Schedule (a shortened BO1.1 order, 250-ms presentations back to back)::

    [gabors][spontaneous][natural scenes 1/2][static gratings 1/2][natural scenes 2/2][static gratings 2/2][spontaneous 30 s]

Spikes: each 250-ms segment has one rate per unit, ``baseline + gain * (true rate - baseline)``
with the population's shared gain (:func:`meiscope.synthetic.cortex.shared_gain`), delayed by a
:data:`LATENCY_S` response latency; spike counts are Poisson, times uniform in the segment, then a
refractory period removes any spike closer than ``refractory_ms`` to the one before it (at 30 Hz and
2 ms that removes ~6% of the spikes, a small compressive bend of the true rate). Drifting Gabor
patches drive a unit with its true rate averaged over the 8 phases of their one cycle per
presentation (4 Hz x 250 ms). Same config -> identical spike times on any machine.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from meiscope.config import SyntheticConfig
from meiscope.recordings.neuropixels.settings import SyntheticNeuropixelsConfig
from meiscope.recordings import brain_observatory as bo
from meiscope.recordings.neuropixels import stimuli
from meiscope.recordings.neuropixels.nwb import Channels, EcephysSessionArrays, Probes, Units, write_session
from meiscope.recordings.screen import GRAY
from meiscope.synthetic import portable
from meiscope.synthetic.cortex import shared_gain
from meiscope.synthetic.population import WORK_SHAPE, CellParams, TruePopulation, save_ground_truth

PRESENTATION_S = 0.25
LATENCY_S = 0.04  # onset latency of mouse V1 spiking responses (~40 ms)
GABOR_PHASE_STEPS = 8
RENDER_SHAPE = (2 * WORK_SHAPE[0], 2 * WORK_SHAPE[1])  # gratings are drawn above the truth's resolution
VISP, OTHER_AREAS = "VISp", ("CA1", "LP")
N_CHANNELS = 96  # channels 0-29 LP, 30-59 CA1, 60-89 VISp, 90-95 above the brain
CHANNEL_AREAS = ("LP",) * 30 + ("CA1",) * 30 + (VISP,) * 30 + ("None",) * 6
POOR_DEFECTS = ("quality", "amplitude_cutoff", "presence_ratio", "isi_violations")


@dataclass
class Presentations:
    """Every presentation of the session in time order.

    Attributes:
        start: ``(n,)`` onset (s).  stimulus: ``(n,)`` str stimulus name.  block: ``(n,)`` int.
        condition: ``(n,)`` int row of that stimulus's condition table (-1 = blank or spontaneous).
    """

    start: np.ndarray
    stimulus: np.ndarray
    block: np.ndarray
    condition: np.ndarray


def unit_ids_for(session_id: int, n_units: int) -> np.ndarray:
    """Allen-like unit ids, distinct between sessions (assumes n_units <= 10,000)."""
    return 950_000_000 + (int(session_id) % 10_000) * 10_000 + np.arange(n_units, dtype=np.int64)


def _concat(parts: list[CellParams]) -> CellParams:
    return CellParams(**{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(CellParams)})


def unit_population(cells: CellParams, cfg: SyntheticNeuropixelsConfig, rng: np.random.Generator
                    ) -> tuple[CellParams, np.ndarray, np.ndarray]:
    """The true parameters of every unit: VISp cells, other-area units, poor copies (in that order).

    Returns:
        ``(params, source, keep)``: ``source[i]`` is the VISp unit a poor unit copies (-1 otherwise)
        and ``keep[i]`` the fraction of its spikes it keeps (1 otherwise).
    """
    n_visp = cells.n_cells
    low, high = cfg.baseline_rate_hz
    baseline = portable.log_uniform(rng, low, high, n_visp)
    visp = replace(cells, baseline=baseline, peak_rate=np.where(cells.responsive, cells.peak_rate, baseline))
    # other areas: copies of random cells made unresponsive, with their own spontaneous rates
    other = visp.rows(rng.integers(0, n_visp, cfg.other_area_units))
    other_rate = portable.log_uniform(rng, low, high, cfg.other_area_units)
    other = replace(other, kinds=np.full(cfg.other_area_units, "unresponsive", dtype=cells.kinds.dtype),
                    rate_max=np.zeros(cfg.other_area_units), baseline=other_rate, peak_rate=other_rate)
    source = rng.integers(0, n_visp, cfg.poor_units)
    keep = rng.uniform(0.3, 0.7, cfg.poor_units)
    poor = visp.rows(source)
    poor = replace(poor, baseline=poor.baseline * keep, rate_max=poor.rate_max * keep, peak_rate=poor.peak_rate * keep)
    params = _concat([visp, other, poor])
    n_units = params.n_cells
    params = replace(params, cell_ids=unit_ids_for(cfg.session_id, n_units))
    n_clean = n_visp + cfg.other_area_units
    return (params, np.concatenate([np.full(n_clean, -1), source]),
            np.concatenate([np.ones(n_clean), keep]))


def _rates(population: TruePopulation, images: np.ndarray, device: Any, batch: int = 16) -> np.ndarray:
    import torch

    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch):
            chunk = torch.from_numpy(np.ascontiguousarray(images[start:start + batch])).to(device=device)
            out.append(population(chunk).double().cpu().numpy())
    return np.concatenate(out)


def condition_rates(population: TruePopulation, scenes: np.ndarray, device: Any = "cpu") -> dict[str, np.ndarray]:
    """True rates ``(n_conditions + 1, n_units)`` of each stimulus; the last row is the blank (gray screen)."""
    gray = np.full((1, *RENDER_SHAPE), GRAY, dtype=np.float32)
    blank = _rates(population, gray, device)
    gratings = bo.grating_conditions()
    grating_images = np.stack([bo.grating_pixels(r.orientation, r.spatial_frequency, r.phase, RENDER_SHAPE)
                               for r in gratings.itertuples()])
    patches = stimuli.gabor_conditions()
    phases = np.arange(GABOR_PHASE_STEPS) / GABOR_PHASE_STEPS
    patch_rates = []
    for r in patches.itertuples():  # a drifting patch: its rate averaged over one cycle
        images = np.stack([stimuli.gabor_patch_pixels(r.x_position, r.y_position, r.orientation, p, RENDER_SHAPE)
                           for p in phases])
        patch_rates.append(_rates(population, images, device).mean(axis=0))
    return {"natural_scenes": np.concatenate([_rates(population, scenes, device), blank]),
            "static_gratings": np.concatenate([_rates(population, grating_images, device), blank]),
            "gabors": np.concatenate([np.stack(patch_rates), blank])}


def make_schedule(n_scenes: int, cfg: SyntheticNeuropixelsConfig, rng: np.random.Generator) -> Presentations:
    """Lay out the session (module docstring); blanks and spontaneous segments have condition -1."""
    def shuffled(n_conditions: int, repeats: int, blank: bool) -> np.ndarray:
        codes = np.repeat(np.arange(-1 if blank else 0, n_conditions), repeats)
        return codes[rng.permutation(len(codes))]

    scenes = np.array_split(shuffled(n_scenes, cfg.scene_repeats, True), 2)
    gratings = np.array_split(shuffled(len(bo.grating_conditions()), cfg.grating_repeats, True), 2)
    gabors = shuffled(len(stimuli.gabor_conditions()), cfg.gabor_repeats, False)
    spont = np.full(int(round(cfg.spontaneous_s / PRESENTATION_S)), -1)
    tail = np.full(int(round(30.0 / PRESENTATION_S)), -1)
    blocks = [("gabors", gabors), ("spontaneous", spont), ("natural_scenes", scenes[0]),
              ("static_gratings", gratings[0]), ("natural_scenes", scenes[1]), ("static_gratings", gratings[1]),
              ("spontaneous", tail)]
    blocks = [(name, codes) for name, codes in blocks if len(codes)]
    stimulus = np.concatenate([np.full(len(c), name, dtype=object) for name, c in blocks])
    block = np.concatenate([np.full(len(c), i) for i, (_, c) in enumerate(blocks)])
    condition = np.concatenate([c for _, c in blocks]).astype(np.int64)
    start = np.arange(len(condition)) * PRESENTATION_S
    return Presentations(start=start, stimulus=stimulus, block=block, condition=condition)


def segment_rates(schedule: Presentations, rates: dict[str, np.ndarray], baseline: np.ndarray,
                  gain: np.ndarray) -> np.ndarray:
    """``(n_segments, n_units)`` rate of every unit in every 250-ms segment (shared gain applied)."""
    out = np.repeat(baseline[None, :], len(schedule.start), axis=0)
    for name, table in rates.items():
        rows = np.flatnonzero(schedule.stimulus == name)
        above = table[schedule.condition[rows]] - baseline  # condition -1 = the blank row
        out[rows] = baseline + gain[rows, None] * above
    return out


def draw_spikes(starts: np.ndarray, rates: np.ndarray, refractory_s: float, rng: np.random.Generator
                ) -> list[np.ndarray]:
    """Poisson spikes in each ``[start + latency, start + latency + 250 ms)``, then a refractory period.

    Args:
        starts: ``(n_segments,)`` onsets (s).  rates: ``(n_segments, n_units)`` Hz.

    Returns:
        one sorted float64 array of spike times per unit.
    """
    counts = rng.poisson(rates * PRESENTATION_S)  # (n_segments, n_units)
    seg, unit = np.nonzero(counts)
    n = counts[seg, unit]
    unit_of_spike = np.repeat(unit, n)
    times = np.repeat(starts[seg] + LATENCY_S, n) + rng.random(int(n.sum())) * PRESENTATION_S
    order = np.lexsort((times, unit_of_spike))
    times, unit_of_spike = times[order], unit_of_spike[order]
    keep = np.ones(len(times), dtype=bool)
    while refractory_s > 0:  # drop the first too-close spike of each run until none is left
        idx = np.flatnonzero(keep)
        close = (np.diff(times[idx]) < refractory_s) & (unit_of_spike[idx[1:]] == unit_of_spike[idx[:-1]])
        first = close & ~np.concatenate([[False], close[:-1]])
        if not first.any():
            break
        keep[idx[1:][first]] = False
    times, unit_of_spike = times[keep], unit_of_spike[keep]
    bounds = np.searchsorted(unit_of_spike, np.arange(rates.shape[1] + 1))
    return [times[bounds[i]:bounds[i + 1]] for i in range(rates.shape[1])]


def _quality_metrics(n_units: int, poor: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Allen's quality metrics: inside the default thresholds, except one failed metric per poor unit."""
    metrics = {"quality": np.full(n_units, "good", dtype=object),
               "amplitude_cutoff": rng.uniform(0.0, 0.09, n_units),
               "presence_ratio": rng.uniform(0.96, 1.0, n_units),
               "isi_violations": rng.uniform(0.0, 0.4, n_units),
               "snr": rng.uniform(1.0, 6.0, n_units)}
    failing = {"quality": lambda k: "noise", "amplitude_cutoff": lambda k: rng.uniform(0.15, 0.5),
               "presence_ratio": lambda k: rng.uniform(0.5, 0.9), "isi_violations": lambda k: rng.uniform(0.8, 3.0)}
    for k, unit in enumerate(np.flatnonzero(poor)):
        defect = POOR_DEFECTS[k % len(POOR_DEFECTS)]
        metrics[defect][unit] = failing[defect](k)
    metrics["quality"] = metrics["quality"].astype(str)
    return metrics


def _probe_layout(session_id: int, n_visp: int, n_other: int, source: np.ndarray,
                  rng: np.random.Generator) -> tuple[Probes, Channels, np.ndarray]:
    """Probe C through VISp, CA1 and LP; returns the peak channel id of each unit."""
    probe_id = 800_000_000 + (int(session_id) % 100_000) * 10
    channel_ids = 850_000_000 + (int(session_id) % 100_000) * 1_000 + np.arange(N_CHANNELS, dtype=np.int64)
    areas = np.array(CHANNEL_AREAS)
    channels = Channels(channel_ids=channel_ids, probe_ids=np.full(N_CHANNELS, probe_id, dtype=np.int64),
                        local_index=np.arange(N_CHANNELS, dtype=np.int64),
                        vertical_position=20.0 * (np.arange(N_CHANNELS) // 2) + 20.0,
                        horizontal_position=np.where(np.arange(N_CHANNELS) % 2 == 0, 11.0, 43.0),
                        structure_acronyms=areas)
    visp_ch = np.flatnonzero(areas == VISP)
    other_ch = np.flatnonzero(np.isin(areas, OTHER_AREAS))
    peak = np.concatenate([rng.choice(visp_ch, n_visp), rng.choice(other_ch, n_other)])
    peak = np.concatenate([peak, peak[source[source >= 0]]])  # a poor copy sits on its source's channel
    return Probes(probe_ids=np.array([probe_id]), names=np.array(["probeC"])), channels, channel_ids[peak]


def presentation_tables(schedule: Presentations) -> dict[str, pd.DataFrame]:
    """Allen's ``<stimulus>_presentations`` tables (columns as in BO1.1 NWB files)."""
    tables: dict[str, pd.DataFrame] = {}
    stimulus_index = {"gabors": 0.0, "spontaneous": -1.0, "natural_scenes": 1.0, "static_gratings": 2.0}
    conditions = {"static_gratings": bo.grating_conditions(), "gabors": stimuli.gabor_conditions()}
    for name in ("gabors", "natural_scenes", "static_gratings"):
        rows = np.flatnonzero(schedule.stimulus == name)
        if not len(rows):
            continue
        cond = schedule.condition[rows]
        table = pd.DataFrame({"start_time": schedule.start[rows], "stop_time": schedule.start[rows] + PRESENTATION_S,
                              "stimulus_name": name, "stimulus_block": schedule.block[rows].astype(float),
                              "stimulus_index": stimulus_index[name]})
        if name == "natural_scenes":
            table["frame"] = cond.astype(float)
        else:
            params = conditions[name].reindex(cond).reset_index(drop=True)  # blank (-1) -> NaN row
            for column in params.columns:
                table[column] = params[column].to_numpy(dtype=float)
        if name == "gabors":
            table["spatial_frequency"] = stimuli.GABOR_SF
            table["temporal_frequency"] = stimuli.GABOR_TF
            table["contrast"] = bo.CONTRAST
            table["size"] = f"[{stimuli.GABOR_SIZE_DEG}, {stimuli.GABOR_SIZE_DEG}]"
            table["phase"] = "[0.0, 0.0]"
        tables[name] = table
    spont_blocks = np.unique(schedule.block[schedule.stimulus == "spontaneous"])
    tables["spontaneous"] = pd.DataFrame([{
        "start_time": schedule.start[schedule.block == b].min(),
        "stop_time": schedule.start[schedule.block == b].max() + PRESENTATION_S,
        "stimulus_name": "spontaneous", "stimulus_block": float(b), "stimulus_index": -1.0} for b in spont_blocks])
    return tables


def simulate_neuropixels_session(synth: SyntheticConfig, cfg: SyntheticNeuropixelsConfig, scenes: np.ndarray,
                                 device: Any = "cpu") -> tuple[EcephysSessionArrays, TruePopulation]:
    """Simulate the session (nothing is written).

    Args:
        scenes: ``(n_images, H, W)`` the synthetic cortex's scenes (0-255 integers).

    Returns:
        ``(arrays, population)``: what the NWB and cache tables hold, and the true units.
    """
    import torch

    from meiscope.synthetic.cortex import session_cells

    unit_rng, schedule_rng, spike_rng = (np.random.default_rng(s) for s in
                                         np.random.SeedSequence(entropy=cfg.seed, spawn_key=(cfg.session_id,)).spawn(3))
    cells = session_cells(synth, 0, scenes, device=device)
    params, source, keep = unit_population(cells, cfg, unit_rng)
    n_clean = cells.n_cells + cfg.other_area_units
    population = TruePopulation(params.rows(np.arange(n_clean))).to(device=device, dtype=torch.float64)
    rates = condition_rates(population, scenes, device)
    schedule = make_schedule(len(scenes), cfg, schedule_rng)
    gain = shared_gain(len(schedule.start), synth.shared_gain_sd, synth.shared_gain_tau_s, schedule_rng)
    spikes = draw_spikes(schedule.start, segment_rates(schedule, rates, params.baseline[:n_clean], gain),
                         cfg.refractory_ms / 1000.0, spike_rng)
    for k in np.flatnonzero(source >= 0):  # poor copies: a random share of their source's spikes
        train = spikes[source[k]]
        spikes.append(train[spike_rng.random(len(train)) < keep[k]])
    metrics = _quality_metrics(params.n_cells, source >= 0, unit_rng)
    probes, channels, peak = _probe_layout(cfg.session_id, cells.n_cells, cfg.other_area_units, source,
                                           unit_rng)
    units = Units(unit_ids=params.cell_ids, spike_times=spikes, peak_channel_ids=peak, **metrics)
    arrays = EcephysSessionArrays(
        session_id=cfg.session_id, session_type="brain_observatory_1.1", specimen_id=700_000_000 + cfg.session_id % 100_000,
        age_in_days=110.0, sex="F", genotype="wt/wt", probes=probes, channels=channels, units=units,
        presentations=presentation_tables(schedule),
        scene_templates=np.clip(np.rint(scenes), 0, 255).astype(np.uint8))
    return arrays, TruePopulation(params)


def synthesize_neuropixels_session(synth: SyntheticConfig, cfg: SyntheticNeuropixelsConfig, cache_dir: Path,
                                   progress: bool = True, device: Any = "cpu") -> int:
    """Write the synthetic Neuropixels session and its ground truth into ``cache_dir``; return its id."""
    from meiscope.synthetic.scenes import make_scenes

    scenes = make_scenes(synth.n_images, synth.image_height, synth.image_width, synth.seed, progress=progress)
    arrays, population = simulate_neuropixels_session(synth, cfg, scenes, device=device)
    write_session(Path(cache_dir), arrays)
    # the config keys the truth module reads (seed, image size) stay those of the cortex
    save_ground_truth(Path(cache_dir), cfg.session_id, population, {**asdict(synth), "neuropixels": asdict(cfg)})
    # Allen's unit analysis metrics of the session, computed from its spikes: a file beside the NWB
    from meiscope.recordings.neuropixels.unit_metrics import write_synthetic_analysis_metrics

    write_synthetic_analysis_metrics(Path(cache_dir), cfg.session_id, cfg.seed)
    return cfg.session_id
