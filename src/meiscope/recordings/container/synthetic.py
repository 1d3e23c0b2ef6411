"""The simulated experiment container: the synthetic cortex's cells seen in sessions A, B and C.

Container ``i`` holds the true cells of the synthetic cortex's session ``i`` (same seed, scenes
and calibration: :func:`meiscope.synthetic.cortex.session_cells`). Session B records every one
of them under the usual ids; sessions A and C each find a random ``match_fraction`` of them, under
the same ``cell_specimen_id`` (Allen matches cells across a container's sessions; not all are
found in every session; cells found ONLY in A or C are not simulated).

Every stimulus reaches the cells through the same ground truth: it is drawn in the natural
scenes' screen frame (:mod:`meiscope.visual_field`; half the scene's resolution, which the true
population resamples exactly as it does the scenes) and passed through the
:class:`~meiscope.synthetic.population.TruePopulation`. A drifting grating drives a cell at its
mean rate over the grating's phases (the truth has no temporal filter, so temporal frequency does
not matter; a simple cell's modulation at the temporal frequency is not simulated). Movies,
sparse noise and the Poisson spiking, shared gain, calcium and fluorescence chain
(:mod:`meiscope.synthetic.fluorescence`) are as in session B. The movies and the sparse-noise
template are the same in every session and container, as Allen's are.
"""

from __future__ import annotations

import gc
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from meiscope import visual_field as vf
from meiscope.config import SyntheticConfig
from meiscope.recordings.container.settings import SyntheticContainerConfig
from meiscope.recordings.brain_observatory import CONTRAST, GRATING_PHASES, grating_conditions
from meiscope.recordings.container import layout
from meiscope.synthetic import cortex
from meiscope.synthetic import fluorescence as fl
from meiscope.synthetic.nwb import SessionArrays, SessionMetadata, StimulusTable, write_session_nwb
from meiscope.synthetic.population import CellParams, TruePopulation, save_ground_truth
from meiscope.synthetic.scenes import make_scenes
from meiscope.synthetic.stimuli import natural_movie, sparse_noise_frames

RENDER_FIELD = vf.VisualField.from_crop([0.0, 1.0, 0.0, 1.0], (459, 587))  # half the scene's resolution
SESSION_KEYS = {"A": 1, "B": 2, "C": 3}  # random streams of a container's sessions (spawn keys)
TEMPLATE_KEY = 2 ** 31 - 1  # the stream of the movies and the sparse-noise template (all containers)
BATCH = 64


@dataclass
class ContainerTemplates:
    """The stimuli shown in every container.

    Attributes:
        scenes: ``(n_images, 918, 1174)`` uint8 (the synthetic cortex's scenes, integers 0-255: a quarter
            of the float32 template's memory; the NWB gets Allen's float32).
        movies: movie name -> ``(n_frames, 304, 608)`` uint8.
        sparse_noise: ``(n_frames, 16, 28)`` uint8.
    """

    scenes: np.ndarray
    movies: dict[str, np.ndarray]
    sparse_noise: np.ndarray


def make_templates(synthetic: SyntheticConfig, cfg: SyntheticContainerConfig, progress: bool = False
                   ) -> ContainerTemplates:
    """Scenes, movies and sparse noise from ``synthetic.seed`` (the movies share no source with the scenes)."""
    scenes = make_scenes(synthetic.n_images, synthetic.image_height, synthetic.image_width, synthetic.seed,
                         progress=progress)
    rng = np.random.default_rng(np.random.SeedSequence(entropy=synthetic.seed, spawn_key=(TEMPLATE_KEY,)))
    lengths = {"natural_movie_one": cfg.movie_one_frames, "natural_movie_two": cfg.movie_two_frames,
               "natural_movie_three": cfg.movie_three_frames}
    movies = {name: natural_movie(lengths[name], rng) for name in layout.MOVIES}
    return ContainerTemplates(scenes=scenes.astype(np.uint8), movies=movies,
                              sparse_noise=sparse_noise_frames(cfg.sparse_noise_frames, rng))


def _rates(population: TruePopulation, frames: np.ndarray, to_field=None, batch: int = BATCH) -> np.ndarray:
    """``(n, n_cells)`` float64 true rates of frames, drawn into the scene frame by ``to_field`` first."""
    import torch

    out = []
    with torch.no_grad():
        for start in range(0, len(frames), batch):
            chunk = frames[start:start + batch]
            pixels = to_field(chunk, RENDER_FIELD) if to_field is not None else chunk
            x = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float64))
            out.append(population(x).double().numpy())
    return np.concatenate(out) if out else np.zeros((0, population.n_cells))


def _grating_frames(table, phases=None) -> np.ndarray:
    rows = []
    for r in table.itertuples():
        for phase in (phases if phases is not None else [r.phase]):
            rows.append(vf.grating_to_field(r.orientation % 180.0, r.spatial_frequency, phase, CONTRAST, RENDER_FIELD))
    return np.stack(rows)


def stimulus_rates(population: TruePopulation, templates: ContainerTemplates) -> dict[str, np.ndarray]:
    """The true rate of every cell for every condition / frame of every stimulus: name -> ``(n, n_cells)`` Hz."""
    dg = layout.drifting_grating_conditions().assign(spatial_frequency=layout.DG_SPATIAL_FREQUENCY)
    dg_rates = _rates(population, _grating_frames(dg, GRATING_PHASES)).reshape(len(dg), len(GRATING_PHASES), -1)
    rates = {
        "natural_scenes": _rates(population, templates.scenes, batch=8),  # full-size scenes: small batches
        "static_gratings": _rates(population, _grating_frames(grating_conditions())),
        "drifting_gratings": dg_rates.mean(axis=1),
        "locally_sparse_noise": _rates(population, templates.sparse_noise, vf.sparse_noise_to_field),
    }
    for name, frames in templates.movies.items():
        rates[name] = _rates(population, frames, vf.movie_to_field)
    return rates


def segment_rates(timeline: layout.Timeline, rates: dict[str, np.ndarray], baseline: np.ndarray,
                  gain: np.ndarray) -> np.ndarray:
    """``(n_segments, n_cells)`` Hz: each segment's true rate (baseline for gray and blanks) times the
    shared gain above baseline (``gain`` per 250-ms bin of the session)."""
    out = np.tile(baseline, (len(timeline.onsets_s), 1))
    for name, table in rates.items():
        rows = np.flatnonzero((timeline.stimulus == name) & (timeline.condition >= 0))
        out[rows] = table[timeline.condition[rows]]
    bins = np.minimum((timeline.onsets_s / layout.STATIC_S).astype(np.int64), len(gain) - 1)
    return baseline + gain[bins][:, None] * (out - baseline)


def _trials_of(timeline: layout.Timeline, timestamps: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """The trials of stimulus ``name``: each one's condition ``(n_trials,)`` and its start / end
    acquisition frames ``(n_trials, 2)`` (a trial may span several segments)."""
    rows = np.flatnonzero(timeline.stimulus == name)
    trials, first = np.unique(timeline.trial[rows], return_index=True)
    last = np.searchsorted(timeline.trial[rows], trials, side="right") - 1
    start = np.searchsorted(timestamps, timeline.onsets_s[rows][first], side="left")
    end_s = timeline.onsets_s[rows][last] + timeline.durations_s[rows][last]
    frames = np.stack([start, np.searchsorted(timestamps, end_s, side="left")], axis=1).astype(np.int64)
    return timeline.condition[rows[first]], frames


def stimulus_tables(timeline: layout.Timeline, timestamps: np.ndarray, templates: ContainerTemplates
                    ) -> tuple[np.ndarray | None, list[StimulusTable], np.ndarray]:
    """The session's stimulus tables as the NWB file stores them.

    Returns:
        ``(natural_scenes, others, spontaneous)``: the ``(n, 3)`` (frame, start, end) natural-scenes
        table (None when not shown), every other stimulus's :class:`StimulusTable`, and the
        ``(n_epochs, 2)`` spontaneous epochs.
    """
    natural_scenes, others = None, []
    sg_table, dg_table = grating_conditions(), layout.drifting_grating_conditions()
    for name in dict.fromkeys(timeline.stimulus):  # in order of first appearance
        if name in (layout.GRAY_CODE, layout.SPONTANEOUS):
            continue
        condition, frames = _trials_of(timeline, timestamps, name)
        blank = condition < 0
        if name == "natural_scenes":
            natural_scenes = np.column_stack([condition, frames])
        elif name == "static_gratings":
            values = sg_table[["orientation", "spatial_frequency", "phase"]].to_numpy()[np.maximum(condition, 0)]
            values[blank] = np.nan
            others.append(StimulusTable(name, values, frames, ("orientation", "spatial_frequency", "phase")))
        elif name == "drifting_gratings":
            values = np.column_stack([dg_table["temporal_frequency"].to_numpy()[np.maximum(condition, 0)],
                                      dg_table["orientation"].to_numpy()[np.maximum(condition, 0)],
                                      blank.astype(float)])
            values[blank, :2] = np.nan
            others.append(StimulusTable(name, values, frames, ("temporal_frequency", "orientation", "blank_sweep")))
        else:
            template = templates.sparse_noise if name == "locally_sparse_noise" else templates.movies[name]
            others.append(StimulusTable(name, condition.astype(np.int32), frames, template=template))
    spont_rows = np.flatnonzero(timeline.stimulus == layout.SPONTANEOUS)
    runs = np.split(spont_rows, np.flatnonzero(np.diff(spont_rows) > 1) + 1) if len(spont_rows) else []
    spontaneous = np.array([[np.searchsorted(timestamps, timeline.onsets_s[r[0]]),
                             np.searchsorted(timestamps, timeline.onsets_s[r[-1]] + timeline.durations_s[r[-1]])]
                            for r in runs], dtype=np.int64).reshape(-1, 2)
    return natural_scenes, others, spontaneous


def session_id(synthetic: SyntheticConfig, cfg: SyntheticContainerConfig, index: int, session: str) -> int:
    """Experiment id of ``session`` of container ``index`` (B keeps the synthetic cortex's ids)."""
    offset = {"B": 0, "A": cfg.session_id_step, "C": 2 * cfg.session_id_step}[session]
    return synthetic.first_experiment_id + index + offset


def simulate_container_session(synthetic: SyntheticConfig, cfg: SyntheticContainerConfig, index: int, session: str,
                               cells: CellParams, rates: dict[str, np.ndarray], templates: ContainerTemplates
                               ) -> tuple[SessionArrays, CellParams]:
    """Simulate ``session`` (A, B or C) of container ``index``; returns the NWB arrays and the recorded cells."""
    seeds = np.random.SeedSequence(entropy=synthetic.seed, spawn_key=(index, SESSION_KEYS[session])).spawn(4)
    match_rng, schedule_rng, trace_rng, extra_rng = [np.random.default_rng(s) for s in seeds]
    keep = (np.ones(cells.n_cells, dtype=bool) if session == "B"
            else match_rng.random(cells.n_cells) < cfg.match_fraction)
    recorded = cells.rows(keep)
    timeline = layout.session_timeline(session, synthetic, cfg, schedule_rng)
    n_frames = int(np.floor(timeline.end_s * fl.FRAME_RATE_HZ))
    gain = cortex.shared_gain(int(np.ceil(timeline.end_s / layout.STATIC_S)), synthetic.shared_gain_sd,
                              synthetic.shared_gain_tau_s, schedule_rng)
    segment = segment_rates(timeline, {k: v[:, keep] for k, v in rates.items()}, recorded.baseline, gain)
    traces = fl.simulate_traces(timeline.onsets_s, timeline.durations_s, segment, n_frames, trace_rng,
                                tau_rise_s=synthetic.tau_rise_s, tau_decay_s=synthetic.tau_decay_s,
                                spike_amplitude_dff=synthetic.spike_amplitude_dff,
                                noise_std_dff=synthetic.noise_std_dff, neuropil_r=synthetic.neuropil_r,
                                neuropil_r_sd=synthetic.neuropil_r_sd,
                                neuropil_r_error_sd=synthetic.neuropil_r_error_sd)
    natural_scenes, others, spontaneous = stimulus_tables(timeline, traces.timestamps, templates)
    genotype, depth = cortex.LINES[index % len(cortex.LINES)]
    b_id = session_id(synthetic, cfg, index, "B")
    metadata = SessionMetadata(
        experiment_id=session_id(synthetic, cfg, index, session), experiment_container_id=700_000_000 + b_id % 100_000,
        session_type=layout.SESSION_TYPES[session], genotype=genotype, imaging_depth_um=depth,
        specimen_name=";".join(part.split("/")[0] for part in genotype.split(";")) + f"-{index}",
        session_start_time=f"2017-03-{1 + (index + SESSION_KEYS[session]) % 28:02d} 13:02:09")
    arrays = SessionArrays(
        metadata=metadata, cell_ids=recorded.cell_ids, roi_ids=np.array([str(i) for i in np.flatnonzero(keep)]),
        timestamps=traces.timestamps, dff=cortex.quantise(traces.dff), demixed=cortex.round_mantissa(traces.demixed),
        neuropil=cortex.round_mantissa(traces.neuropil), r=traces.r, natural_scenes=natural_scenes,
        template=templates.scenes.astype(np.float32) if natural_scenes is not None else None, spontaneous=spontaneous,
        running_speed=np.round(cortex.running_speed_trace(n_frames, extra_rng), 3),
        max_projection=cortex.max_projection_image(recorded.n_cells, np.nanmean(traces.demixed, axis=1), extra_rng),
        motion_correction=np.rint(2.0 * fl.smooth_noise((2, n_frames), 30.0, extra_rng).T) + 0.0,
        stimuli=tuple(others))
    return arrays, recorded


def container_ids(synthetic: SyntheticConfig, cfg: SyntheticContainerConfig, sessions: list[str]) -> list[int]:
    """Every experiment id :func:`synthesize_containers` writes, sorted."""
    return sorted(session_id(synthetic, cfg, i, s) for i in range(synthetic.n_sessions) for s in sessions)


def synthesize_containers(synthetic: SyntheticConfig, cfg: SyntheticContainerConfig, sessions: list[str],
                          cache_dir: Path, progress: bool = True, device: Any = "cpu") -> list[int]:
    """Write ``synthetic.n_sessions`` containers (``sessions`` of each) into an allensdk cache directory.

    Writes ``manifest.json``, ``ophys_experiment_data/<id>.nwb`` and ``ground_truth/<id>.{npz,json}``
    (the recorded cells of each session), replacing existing files. Returns the ids written.
    """
    import torch
    from tqdm import tqdm

    from allensdk.core.brain_observatory_cache import BrainObservatoryCache

    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    cache = BrainObservatoryCache(manifest_file=str(cache_dir / "manifest.json"))
    templates = make_templates(synthetic, cfg, progress=progress)
    config = {**asdict(synthetic), "synthetic_container": asdict(cfg)}  # the cortex at the top, as in session B
    ids = []
    for index in tqdm(range(synthetic.n_sessions), desc="containers", disable=not progress):
        cells = cortex.session_cells(synthetic, index, templates.scenes.astype(np.float32), device=device)
        population = TruePopulation(cells).to(dtype=torch.float64)  # float64: thread-count independent bytes
        rates = stimulus_rates(population, templates)
        for session in tqdm(sessions, desc="sessions", disable=not progress, leave=False):
            arrays, recorded = simulate_container_session(synthetic, cfg, index, session, cells, rates, templates)
            experiment_id = arrays.metadata.experiment_id
            write_session_nwb(Path(cache.get_cache_path(None, cache.EXPERIMENT_DATA_KEY, experiment_id)), arrays)
            save_ground_truth(cache_dir, experiment_id, TruePopulation(recorded), {**config, "session": session})
            ids.append(experiment_id)
            del arrays  # before the next session is simulated: a session's traces are ~1 GB
            gc.collect()
    return sorted(ids)

