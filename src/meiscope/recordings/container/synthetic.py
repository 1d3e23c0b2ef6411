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

Outside the model's assumptions (each off by default; :func:`out_of_family_active`), drawn from random
streams of their own so that nothing above moves: per-cell temporal filters and adaptation on the movies
and drifting gratings (:mod:`meiscope.synthetic.dynamics`; a drifting grating then drives a cell through
its phases over time), per-cell spike amplitudes and a saturating indicator, tuning drift of A and C away
from B, wrong cell matches in A and C, and gaze shifts before natural-scene presentations. What was
planted is written beside the ground truth (``ground_truth/<id>.out_of_family.{npz,json}``).
"""

from __future__ import annotations

import gc
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from meiscope import visual_field as vf
from meiscope.config import SyntheticConfig, recorded_config
from meiscope.recordings.container.settings import SyntheticContainerConfig
from meiscope.recordings.brain_observatory import (CONTRAST, DG_SPATIAL_FREQUENCY, GRATING_PHASES,
                                                   drifting_grating_conditions, grating_conditions)
from meiscope.recordings.container import layout
from meiscope.atomic import write_json, write_npz
from meiscope.recordings.screen import PIXELS_PER_DEGREE, SCENE_HEIGHT_PX, SCENE_WIDTH_PX
from meiscope.synthetic import cortex
from meiscope.synthetic import dynamics as dyn
from meiscope.synthetic import fluorescence as fl
from meiscope.synthetic.nwb import SessionArrays, SessionMetadata, StimulusTable, write_session_nwb
from meiscope.synthetic.population import CellParams, TruePopulation, save_ground_truth
from meiscope.synthetic.scenes import make_scenes
from meiscope.synthetic.stimuli import natural_movie, sparse_noise_frames

RENDER_FIELD = vf.VisualField.from_crop([0.0, 1.0, 0.0, 1.0], (459, 587))  # half the scene's resolution
SESSION_KEYS = {"A": 1, "B": 2, "C": 3}  # random streams of a container's sessions (spawn keys)
TEMPLATE_KEY = 2 ** 31 - 1  # the stream of the movies and the sparse-noise template (all containers)
BATCH = 64
CELLS_KEY = 2 ** 31 - 2  # the stream of a container's per-cell draws outside the model's family (dynamics, calcium)
DRIFT_KEY, GAZE_KEY = 10, 11  # children of a session's stream beyond the four it always spawns
DG_PHASES = 30  # drifting-grating phases rendered per orientation: every 30-Hz frame of Allen's frequencies


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


def _responses(functions: Sequence[Callable], n_cells: int, frames: np.ndarray, to_field=None,
               batch: int = BATCH) -> list[np.ndarray]:
    """Each function's ``(n, n_cells)`` float64 responses to ``frames``, drawn into the scene frame by
    ``to_field`` once for all of them (the drawing costs more than a population's forward pass)."""
    import torch

    outs: list[list[np.ndarray]] = [[] for _ in functions]
    with torch.no_grad():
        for start in range(0, len(frames), batch):
            chunk = frames[start:start + batch]
            pixels = to_field(chunk, RENDER_FIELD) if to_field is not None else chunk
            x = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float64))
            for out, function in zip(outs, functions):
                out.append(function(x).double().numpy())
    return [np.concatenate(out) if out else np.zeros((0, n_cells)) for out in outs]


def _grating_frames(table, phases=None) -> np.ndarray:
    rows = []
    for r in table.itertuples():
        for phase in (phases if phases is not None else [r.phase]):
            rows.append(vf.grating_to_field(r.orientation % 180.0, r.spatial_frequency, phase, CONTRAST, RENDER_FIELD))
    return np.stack(rows)


def stimulus_rates(populations: Sequence[TruePopulation], templates: ContainerTemplates) -> list[dict[str, np.ndarray]]:
    """Each population's true rate of every cell for every condition / frame of every stimulus: one dict per
    population, name -> ``(n, n_cells)`` Hz (the stimuli are drawn into the scene frame once for all)."""
    n_cells = populations[0].n_cells
    rates: list[dict[str, np.ndarray]] = [{} for _ in populations]

    def put(name: str, frames: np.ndarray, to_field=None, batch: int = BATCH) -> None:
        for out, values in zip(rates, _responses(populations, n_cells, frames, to_field, batch)):
            out[name] = values

    dg = drifting_grating_conditions().assign(spatial_frequency=DG_SPATIAL_FREQUENCY)
    put("natural_scenes", templates.scenes, batch=8)  # full-size scenes: small batches
    put("static_gratings", _grating_frames(grating_conditions()))
    put("drifting_gratings", _grating_frames(dg, GRATING_PHASES))
    put("locally_sparse_noise", templates.sparse_noise, vf.sparse_noise_to_field)
    for name, frames in templates.movies.items():
        put(name, frames, vf.movie_to_field)
    for out in rates:  # the mean over the phases a drifting grating sweeps
        out["drifting_gratings"] = out["drifting_gratings"].reshape(len(dg), len(GRATING_PHASES), -1).mean(axis=1)
    return rates


def segment_rates(timeline: layout.Timeline, rates: dict[str, np.ndarray], baseline: np.ndarray,
                  gain: np.ndarray, override: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """``(n_segments, n_cells)`` Hz: each segment's true rate (baseline for gray and blanks) times the
    shared gain above baseline (``gain`` per 250-ms bin of the session).

    ``override``: ``(rows, values)`` rates of the segments that are not their condition's static rate
    (temporal dynamics, gaze shifts), ``(n_rows,)`` int and ``(n_rows, n_cells)`` Hz, before the gain."""
    out = np.tile(baseline, (len(timeline.onsets_s), 1))
    for name, table in rates.items():
        rows = np.flatnonzero((timeline.stimulus == name) & (timeline.condition >= 0))
        out[rows] = table[timeline.condition[rows]]
    if override is not None:
        out[override[0]] = override[1]
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
    sg_table, dg_table = grating_conditions(), drifting_grating_conditions()
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


# --------------------------------------------------------------------------------------
# outside the model's assumptions
# --------------------------------------------------------------------------------------
@dataclass
class OutOfFamily:
    """What a container's cells do beyond the in-family cortex (one entry per container cell).

    Attributes:
        dynamics: the cells' temporal filters and adaptation.
        amplitude: ``(n_cells,)`` dF/F of one spike of each cell, or None (one amplitude, linear calcium).
    """

    dynamics: dyn.CellDynamics
    amplitude: np.ndarray | None


def out_of_family_active(synthetic: SyntheticConfig) -> bool:
    """Whether any element outside the model's family is switched on (else: the in-family container)."""
    return bool(synthetic.temporal_peak_ms[1] > 0 or synthetic.adaptation_strength > 0
                or synthetic.spike_amplitude_sd > 0 or synthetic.indicator_hill_n > 0
                or synthetic.saccade_fraction > 0 or synthetic.drift_rf_deg > 0 or synthetic.drift_orientation_deg > 0
                or synthetic.mismatch_fraction > 0)


def draw_out_of_family(synthetic: SyntheticConfig, index: int, n_cells: int) -> OutOfFamily:
    """The per-cell draws of container ``index`` (their own stream: the in-family draws do not move)."""
    root = np.random.SeedSequence(entropy=synthetic.seed, spawn_key=(index, CELLS_KEY))
    dynamics_rng, calcium_rng = [np.random.default_rng(s) for s in root.spawn(2)]
    dynamics = dyn.draw_dynamics(n_cells, tuple(synthetic.temporal_peak_ms), synthetic.temporal_biphasic,
                                 synthetic.adaptation_strength, synthetic.adaptation_tau_s, dynamics_rng)
    amplitude = None
    if synthetic.spike_amplitude_sd > 0 or synthetic.indicator_hill_n > 0:
        amplitude = fl.draw_amplitudes(n_cells, synthetic.spike_amplitude_dff, synthetic.spike_amplitude_sd,
                                       calcium_rng)
    return OutOfFamily(dynamics=dynamics, amplitude=amplitude)


def _dg_orientations(dg) -> np.ndarray:
    """The drifting gratings' orientations mod 180, sorted: the rows of :func:`stimulus_drives`' grating drives."""
    return np.unique(dg["orientation"].to_numpy() % 180.0)


def stimulus_drives(populations: Sequence[TruePopulation],
                    templates: ContainerTemplates) -> list[dict[str, np.ndarray]]:
    """Each population's static drives in units of each cell's semisaturation, for the dynamics (the
    stimuli are drawn into the scene frame once for all populations).

    Returns:
        one dict per population: movie name -> ``(n_frames, n_cells)``; ``drifting_gratings`` ->
        ``(n_orientations, DG_PHASES, n_cells)`` at the orientations of :func:`drifting_grating_conditions`
        (mod 180, sorted) and phases ``k / DG_PHASES`` cycles.
    """
    functions = [population.drive for population in populations]
    semisats = [population.params.semisaturation[None, :] for population in populations]
    n_cells = populations[0].n_cells
    out: list[dict[str, np.ndarray]] = [{} for _ in populations]
    for name, frames in templates.movies.items():
        for drives, values, semisat in zip(out, _responses(functions, n_cells, frames, vf.movie_to_field), semisats):
            drives[name] = values / semisat
    orientations = _dg_orientations(drifting_grating_conditions())
    frames = np.stack([vf.grating_to_field(o, DG_SPATIAL_FREQUENCY, k / DG_PHASES, CONTRAST, RENDER_FIELD)
                       for o in orientations for k in range(DG_PHASES)])
    for drives, values, semisat in zip(out, _responses(functions, n_cells, frames), semisats):
        drives["drifting_gratings"] = (values / semisat).reshape(len(orientations), DG_PHASES, -1)
    return out


def _runs(mask: np.ndarray) -> list[np.ndarray]:
    """The maximal runs of consecutive True rows of ``mask``, as row indices."""
    rows = np.flatnonzero(mask)
    return np.split(rows, np.flatnonzero(np.diff(rows) > 1) + 1) if len(rows) else []


def _run_drive(timeline: layout.Timeline, rows: np.ndarray, drives: dict[str, np.ndarray],
               cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The static drive of ``cells`` at every substep of the segments ``rows`` (a run of movie or
    drifting-grating and gray segments), and each substep's segment (position in ``rows``)."""
    dg = drifting_grating_conditions()
    orientations = _dg_orientations(dg)
    # each sweep's start: its segments are consecutive and inside the run (a search per row over the whole
    # timeline made hour-long sessions slow)
    trials = timeline.trial[rows]
    _, first = np.unique(trials, return_index=True)
    sweep_onset = dict(zip(trials[first].tolist(), timeline.onsets_s[rows[first]].tolist()))
    pieces, owner = [], []
    for position, row in enumerate(rows):
        n_sub = max(int(round(timeline.durations_s[row] / dyn.SUBSTEP_S)), 1)
        name, condition = timeline.stimulus[row], int(timeline.condition[row])
        piece = np.zeros((n_sub, len(cells)))
        if name in drives and name != "drifting_gratings" and condition >= 0:
            piece[:] = drives[name][condition, cells]
        elif name == "drifting_gratings" and condition >= 0:
            t = timeline.onsets_s[row] - sweep_onset[int(timeline.trial[row])] + np.arange(n_sub) * dyn.SUBSTEP_S
            direction, tf = dg["orientation"].iloc[condition], dg["temporal_frequency"].iloc[condition]
            sign = 1.0 if direction < 180.0 else -1.0  # the opposite direction runs through the phases backwards
            phase = np.rint(sign * tf * t * DG_PHASES).astype(np.int64) % DG_PHASES
            o = int(np.searchsorted(orientations, direction % 180.0))
            piece[:] = drives["drifting_gratings"][o][phase][:, cells]
        pieces.append(piece)
        owner.append(np.full(n_sub, position))
    return np.concatenate(pieces), np.concatenate(owner)


def dynamic_rates(timeline: layout.Timeline, drives: dict[str, np.ndarray], cells: CellParams,
                  dynamics: dyn.CellDynamics) -> tuple[np.ndarray, np.ndarray]:
    """The rates of the movie and drifting-grating segments through the cells' dynamics.

    Each run of consecutive segments of one movie (or of drifting gratings and their gray) starts from
    rest; a segment's rate is the mean of its substeps' rates.

    Returns:
        ``(rows, rates)``: ``(n_rows,)`` segment rows and ``(n_rows, n_cells)`` Hz (for ``segment_rates``).
    """
    runs = [run for name in layout.MOVIES for run in _runs(timeline.stimulus == name)]
    runs += _runs(np.isin(timeline.stimulus, ["drifting_gratings", layout.GRAY_CODE]))
    all_rows, all_rates = [], []
    for rows in runs:
        rates = np.empty((len(rows), cells.n_cells))
        for start in range(0, cells.n_cells, dyn.CELL_BLOCK):
            block = np.arange(start, min(start + dyn.CELL_BLOCK, cells.n_cells))
            drive, owner = _run_drive(timeline, rows, drives, block)
            v = dyn.respond(drive, dynamics.rows(block))
            per_step = dyn.naka_rushton(v, cells.baseline[block], cells.rate_max[block])
            rates[:, block] = (np.add.reduceat(per_step, np.flatnonzero(np.r_[True, np.diff(owner) > 0]), axis=0)
                               / np.bincount(owner)[:, None])
        all_rows.append(rows)
        all_rates.append(rates)
    if not all_rows:
        return np.zeros(0, dtype=np.int64), np.zeros((0, cells.n_cells))
    return np.concatenate(all_rows), np.concatenate(all_rates)


def drift_cells(cells: CellParams, synthetic: SyntheticConfig, rng: np.random.Generator
                ) -> tuple[CellParams, dict[str, np.ndarray]]:
    """The cells as session A or C finds them: each RF centre and orientation moved a little from B.

    Returns:
        ``(drifted, planted)``: the drifted cells and the planted changes, ``(n_cells,)`` each
        (``drift_x_deg``, ``drift_y_deg`` right / down, ``drift_orientation_deg``).
    """
    n = cells.n_cells
    dx, dy = synthetic.drift_rf_deg * rng.standard_normal(n), synthetic.drift_rf_deg * rng.standard_normal(n)
    turn = synthetic.drift_orientation_deg * rng.standard_normal(n)
    arrays = cells.arrays()
    arrays["x"] = cells.x + dx * PIXELS_PER_DEGREE / SCENE_WIDTH_PX
    arrays["y"] = cells.y + dy * PIXELS_PER_DEGREE / SCENE_HEIGHT_PX
    arrays["orientation"] = np.mod(cells.orientation + np.deg2rad(turn), np.pi)
    arrays["orientation2"] = np.mod(cells.orientation2 + np.deg2rad(turn), np.pi)
    return CellParams(**arrays), {"drift_x_deg": dx, "drift_y_deg": dy, "drift_orientation_deg": turn}


def mismatch_ids(cell_ids: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """``cell_ids`` with ``round(fraction * n)`` of them (at least 2 when any) handed on in a cycle,
    so exactly that many cells are recorded under another cell's id."""
    n = len(cell_ids)
    k = int(round(fraction * n))
    k = 0 if k == 0 or n < 2 else max(k, 2)
    out = np.array(cell_ids, copy=True)
    if k:
        chosen = rng.choice(n, k, replace=False)
        out[chosen] = cell_ids[np.roll(chosen, 1)]
    return out


def gaze_rates(timeline: layout.Timeline, shifts_deg: np.ndarray, population: TruePopulation,
               templates: ContainerTemplates, columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rates of the natural-scene presentations seen after a gaze shift.

    Args:
        shifts_deg: ``(n_shown, 2)`` (down, right) shift of each natural-scene presentation of an image
            (blank sweeps excluded), in the timeline's order.
        columns: the population's cells recorded in the session.

    Returns:
        ``(rows, rates)`` of the shifted presentations (for ``segment_rates``).
    """
    import torch

    shown = np.flatnonzero((timeline.stimulus == "natural_scenes") & (timeline.condition >= 0))
    moved = np.flatnonzero(np.any(shifts_deg != 0, axis=1))
    out = np.empty((len(moved), len(columns)))
    # the template always fills the scene's place on the screen: its pixels per degree scale with its width
    pixels_per_degree = PIXELS_PER_DEGREE * templates.scenes.shape[-1] / SCENE_WIDTH_PX
    with torch.no_grad():
        for start in range(0, len(moved), 8):  # full-size scenes: small batches
            batch = moved[start:start + 8]
            pixels = np.stack([dyn.shift_image(templates.scenes[timeline.condition[shown[i]]].astype(np.float64),
                                               shifts_deg[i], pixels_per_degree) for i in batch])
            out[start:start + len(batch)] = population(torch.from_numpy(pixels)).double().numpy()[:, columns]
    return shown[moved], out


def _planted_files(cache_dir: Path, experiment_id: int) -> tuple[Path, Path]:
    """``ground_truth/<id>.out_of_family.{npz,json}`` (:func:`_write_planted`)."""
    folder = Path(cache_dir) / "ground_truth"
    return folder / f"{experiment_id}.out_of_family.npz", folder / f"{experiment_id}.out_of_family.json"


def _write_planted(cache_dir: Path, experiment_id: int, planted: dict[str, np.ndarray] | None) -> None:
    """Write what was planted beyond the in-family cortex into :func:`_planted_files`; ``None`` (an in-family
    session) removes the files an earlier out-of-family synthesis of the session left, so that
    :func:`load_planted` never reads another cortex's truth."""
    npz, summary_json = _planted_files(cache_dir, experiment_id)
    if planted is None:
        npz.unlink(missing_ok=True)
        summary_json.unlink(missing_ok=True)
        return
    write_npz(npz, planted)
    summary = {key: (value.tolist() if value.ndim else value.item()) for key, value in planted.items()
               if value.ndim <= 1 and value.dtype.kind in "fiub"}
    write_json(summary_json, summary)


def load_planted(cache_dir: Path, experiment_id: int) -> dict[str, np.ndarray]:
    """What :func:`synthesize_containers` planted in a session beyond the in-family cortex ({} if nothing)."""
    path = _planted_files(cache_dir, experiment_id)[0]
    if not path.is_file():
        return {}
    with np.load(path, allow_pickle=False) as f:
        return {key: f[key] for key in f.files}


def session_id(synthetic: SyntheticConfig, cfg: SyntheticContainerConfig, index: int, session: str) -> int:
    """Experiment id of ``session`` of container ``index`` (B keeps the synthetic cortex's ids)."""
    offset = {"B": 0, "A": cfg.session_id_step, "C": 2 * cfg.session_id_step}[session]
    return synthetic.first_experiment_id + index + offset


def simulate_container_session(synthetic: SyntheticConfig, cfg: SyntheticContainerConfig, index: int, session: str,
                               cells: CellParams, rates: dict[str, np.ndarray], templates: ContainerTemplates,
                               world: OutOfFamily | None = None, population: TruePopulation | None = None,
                               drives: dict[str, np.ndarray] | None = None,
                               planted: dict[str, np.ndarray] | None = None) -> tuple[SessionArrays, CellParams]:
    """Simulate ``session`` (A, B or C) of container ``index``; returns the NWB arrays and the recorded cells.

    Args:
        cells, rates: the session's true cells (drifted from B's in A and C) and their static rates.
        world: the container's draws outside the model's family (None: the in-family session); with it,
            ``population`` (the float64 :class:`TruePopulation` of ``cells``, for gaze shifts) and ``drives``
            (:func:`stimulus_drives`, for the dynamics) when those are on.
        planted: filled with what was planted in this session (recorded cells' rows), when given.
    """
    seeds = np.random.SeedSequence(entropy=synthetic.seed, spawn_key=(index, SESSION_KEYS[session])).spawn(4)
    match_rng, schedule_rng, trace_rng, extra_rng = [np.random.default_rng(s) for s in seeds]
    keep = (np.ones(cells.n_cells, dtype=bool) if session == "B"
            else match_rng.random(cells.n_cells) < cfg.match_fraction)
    recorded = cells.rows(keep)
    timeline = layout.session_timeline(session, synthetic, cfg, schedule_rng)
    n_frames = int(np.floor(timeline.end_s * fl.FRAME_RATE_HZ))
    gain = cortex.shared_gain(int(np.ceil(timeline.end_s / layout.STATIC_S)), synthetic.shared_gain_sd,
                              synthetic.shared_gain_tau_s, schedule_rng)
    override, indicator = None, None
    if world is not None:
        override, indicator, recorded = _out_of_family_session(synthetic, cfg, index, session, keep, recorded,
                                                               timeline, world, population, drives, templates,
                                                               planted if planted is not None else {})
    segment = segment_rates(timeline, {k: v[:, keep] for k, v in rates.items()}, recorded.baseline, gain,
                            override=override)
    traces = fl.simulate_traces(timeline.onsets_s, timeline.durations_s, segment, n_frames, trace_rng,
                                tau_rise_s=synthetic.tau_rise_s, tau_decay_s=synthetic.tau_decay_s,
                                spike_amplitude_dff=synthetic.spike_amplitude_dff,
                                noise_std_dff=synthetic.noise_std_dff, neuropil_r=synthetic.neuropil_r,
                                neuropil_r_sd=synthetic.neuropil_r_sd,
                                neuropil_r_error_sd=synthetic.neuropil_r_error_sd, indicator=indicator)
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


def _out_of_family_session(synthetic: SyntheticConfig, cfg: SyntheticContainerConfig, index: int, session: str,
                           keep: np.ndarray, recorded: CellParams, timeline: layout.Timeline, world: OutOfFamily,
                           population: TruePopulation | None, drives: dict[str, np.ndarray] | None,
                           templates: ContainerTemplates, planted: dict[str, np.ndarray]
                           ) -> tuple[tuple[np.ndarray, np.ndarray] | None, fl.Indicator | None, CellParams]:
    """The session's rates that leave the static model, its indicator and its (maybe mismatched) cells."""
    columns = np.flatnonzero(keep)
    gaze_rng = np.random.default_rng(np.random.SeedSequence(entropy=synthetic.seed,
                                                            spawn_key=(index, SESSION_KEYS[session], GAZE_KEY)))
    rows, values = [np.zeros(0, dtype=np.int64)], [np.zeros((0, len(columns)))]
    if world.dynamics.active and drives is not None:
        r, v = dynamic_rates(timeline, {k: d[..., columns] for k, d in drives.items()}, recorded,
                             world.dynamics.rows(columns))
        rows.append(r)
        values.append(v)
    planted["temporal_peak_ms"] = world.dynamics.peak_s[columns] * 1000.0
    if synthetic.saccade_fraction > 0 and population is not None:
        n_shown = int(np.sum((timeline.stimulus == "natural_scenes") & (timeline.condition >= 0)))
        shifts = dyn.draw_gaze_shifts(n_shown, synthetic.saccade_fraction, tuple(synthetic.saccade_amplitude_deg),
                                      gaze_rng)
        r, v = gaze_rates(timeline, shifts, population, templates, columns)
        rows.append(r)
        values.append(v)
        planted["gaze_shift_deg"] = shifts
    override = (np.concatenate(rows), np.concatenate(values)) if sum(len(r) for r in rows) else None
    indicator = None
    if world.amplitude is not None:
        indicator = fl.Indicator(amplitude=world.amplitude[columns], hill_n=synthetic.indicator_hill_n,
                                 kd_spikes=synthetic.indicator_kd_spikes)
        planted["spike_amplitude_dff"] = indicator.amplitude
    planted["true_cell_ids"] = recorded.cell_ids.copy()  # the cell each row really is (its id in B)
    if session != "B" and synthetic.mismatch_fraction > 0:
        match_rng = np.random.default_rng(np.random.SeedSequence(
            entropy=synthetic.seed, spawn_key=(index, SESSION_KEYS[session], DRIFT_KEY, 1)))
        arrays = recorded.arrays()
        arrays["cell_ids"] = mismatch_ids(recorded.cell_ids, synthetic.mismatch_fraction, match_rng)
        recorded = CellParams(**arrays)
    planted["recorded_cell_ids"] = recorded.cell_ids
    planted["mismatched"] = planted["true_cell_ids"] != recorded.cell_ids
    return override, indicator, recorded


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
    # the cortex at the top, as in session B (settings at their in-family defaults are left out: same bytes)
    config = {**recorded_config(synthetic), "synthetic_container": recorded_config(cfg)}
    active = out_of_family_active(synthetic)
    ids = []
    for index in tqdm(range(synthetic.n_sessions), desc="containers", disable=not progress):
        cells = cortex.session_cells(synthetic, index, templates.scenes.astype(np.float32), device=device)
        world = draw_out_of_family(synthetic, index, cells.n_cells) if active else None
        # each session's cells (sessions other than B drift when drift is on), drawn up front so that every
        # stimulus is drawn into the scene frame once for all of them
        cell_sets, of_session, drifts = [cells], {}, {}  # of_session: session -> its entry of cell_sets
        for session in sessions:
            of_session[session] = 0
            if session != "B" and (synthetic.drift_rf_deg > 0 or synthetic.drift_orientation_deg > 0):
                drift_rng = np.random.default_rng(np.random.SeedSequence(
                    entropy=synthetic.seed, spawn_key=(index, SESSION_KEYS[session], DRIFT_KEY)))
                drifted, drifts[session] = drift_cells(cells, synthetic, drift_rng)
                of_session[session] = len(cell_sets)
                cell_sets.append(drifted)
        # float64: thread-count independent bytes
        populations = [TruePopulation(c).to(dtype=torch.float64) for c in cell_sets]
        rates = stimulus_rates(populations, templates)
        dynamic = world is not None and world.dynamics.active
        drives = stimulus_drives(populations, templates) if dynamic else [None] * len(populations)
        for session in tqdm(sessions, desc="sessions", disable=not progress, leave=False):
            k = of_session[session]
            planted: dict[str, np.ndarray] = dict(drifts.get(session, {}))
            arrays, recorded = simulate_container_session(
                synthetic, cfg, index, session, cell_sets[k], rates[k], templates, world=world,
                population=populations[k], drives=drives[k], planted=planted)
            experiment_id = arrays.metadata.experiment_id
            write_session_nwb(Path(cache.get_cache_path(None, cache.EXPERIMENT_DATA_KEY, experiment_id)), arrays)
            save_ground_truth(cache_dir, experiment_id, TruePopulation(recorded), {**config, "session": session})
            if world is None:
                _write_planted(cache_dir, experiment_id, None)
            else:
                keep = np.isin(cells.cell_ids, planted["true_cell_ids"])  # the drift of the recorded rows
                for key in ("drift_x_deg", "drift_y_deg", "drift_orientation_deg"):
                    if key in planted:
                        planted[key] = planted[key][keep]
                _write_planted(cache_dir, experiment_id, planted)
            ids.append(experiment_id)
            del arrays  # before the next session is simulated: a session's traces are ~1 GB
            gc.collect()
    return sorted(ids)

