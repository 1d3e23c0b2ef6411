"""Every stimulus of a container as model-space images and responses of the studied cells.

The studied session B's natural scenes stay the :class:`~meiscope.dataset.ResponseDataset`
(ranking, splits, test scenes); this module adds what the same cells saw elsewhere in the
container, in the same visual field (:mod:`meiscope.visual_field`) and pixel normalisation:

- **static stimuli as trials** (static gratings in B, locally sparse noise in C): the same
  response window and baseline as the natural scenes (:func:`meiscope.responses.trial_responses`);
- **natural movies as traces**: frames follow each other every 33 ms, so the calcium responses
  of consecutive frames overlap and no per-frame response can be cut out of the trace. Each
  movie keeps its repeat-averaged dF/F trace, one sample per movie frame; the model predicts a
  rate per frame and a calcium kernel turns the rates into the trace before the loss
  (:mod:`meiscope.model.movies`). The kernel is fitted to the studied session's own natural-scene
  traces (:func:`fit_calcium_kernel`). We chose this over Allen's L0-deconvolved events because
  the kernel model uses the dF/F the rest of meiscope uses and needs no extra files.

A cell not found in a session (or with NaN traces there) has NaN responses for its stimuli; the
loss skips them. Movie frames are cut from no natural scene (:mod:`meiscope.synthetic.stimuli`),
so the natural-scene test images stay unseen.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from meiscope import visual_field as vf
from meiscope.config import ExtractConfig
from meiscope.recordings.container.settings import ContainerConfig
from meiscope.recordings.container.layout import MOVIES
from meiscope.dataset import ResponseDataset
from meiscope.recordings.training_stimuli import MovieStimulus, TrainingStimuli, TrialStimulus, grating_images
from meiscope.responses import SessionError, nwb_path, open_session, trial_responses, within_recording

log = logging.getLogger(__name__)

KERNEL_FRAMES = 30  # 1 s of calcium kernel at 30 Hz (GCaMP6f decays in ~0.3-0.5 s)
STATIC = ("static_gratings", "locally_sparse_noise", "locally_sparse_noise_4deg", "locally_sparse_noise_8deg")


def container_path(dataset_path: Path) -> Path:
    """Where the container's stimuli lie beside the studied dataset ``<id>.npz``."""
    dataset_path = Path(dataset_path)
    return dataset_path.with_name(dataset_path.stem + ".container.npz")


# ---------------------------------------------------------------------------------------------
# reading the sessions
# ---------------------------------------------------------------------------------------------
def session_info(cache_dir: Path, experiment_id: int) -> tuple[int, str]:
    """``(experiment_container_id, session letter)`` of a cached session, read from its NWB metadata."""
    import h5py

    path = nwb_path(cache_dir, experiment_id)
    try:
        with h5py.File(path, "r") as f:
            container = int(f["general/experiment_container_id"][()])
            session_type = f["general/session_type"][()].decode()
    except (OSError, KeyError, ValueError) as err:
        raise SessionError(f"{path}: cannot read its container id and session type ({err})") from None
    return container, session_type.replace("three_session_", "")[:1]


def container_sessions(cache_dir: Path, experiment_id: int, ids: list[int]) -> dict[str, int]:
    """The cached sessions of ``experiment_id``'s container: session letter (A, B, C) -> experiment id."""
    container, _ = session_info(cache_dir, experiment_id)
    out: dict[str, int] = {}
    for other in ids:
        c, letter = session_info(cache_dir, other)
        if c == container:
            if letter in out and out[letter] != other:
                raise SessionError(f"container {container} has two cached {letter} sessions "
                                   f"({out[letter]} and {other}); keep one")
            out[letter] = other
    return out


def _columns(session_cells: np.ndarray, studied_cells: np.ndarray) -> np.ndarray:
    """For each studied cell, its row in the session (-1: not recorded there)."""
    row = {int(c): i for i, c in enumerate(session_cells)}
    return np.array([row.get(int(c), -1) for c in studied_cells], dtype=int)


def _onto_studied(values: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """``(n, n_session_cells)`` -> ``(n, n_studied)``, NaN for cells the session did not record."""
    out = np.full((values.shape[0], len(columns)), np.nan, dtype=np.float32)
    found = columns >= 0
    out[:, found] = values[:, columns[found]]
    return out


def _read_trials(data_set, name: str, dff: np.ndarray, cfg: ExtractConfig, field: vf.VisualField
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(pixels, trial_image, responses)`` of a static stimulus; responses ``(n_trials, n_session_cells)``."""
    table = data_set.get_stimulus_table(name)
    if name == "static_gratings":
        pixels, trial_image = grating_images(table, field)
    else:
        template = np.asarray(data_set.get_stimulus_template(name))
        pixels = vf.sparse_noise_to_field(template, field, name)
        trial_image = table["frame"].to_numpy(dtype=np.int64)
    onsets = table["start"].to_numpy(dtype=np.int64)
    keep = within_recording(onsets, dff.shape[1], cfg)
    responses = trial_responses(dff, onsets[keep], cfg.response_window, cfg.baseline_window)
    return pixels, trial_image[keep], responses


def _read_movie(data_set, name: str, dff: np.ndarray, field: vf.VisualField) -> tuple[np.ndarray, np.ndarray, int]:
    """``(pixels, trace, repeats)``: the movie's frames and the repeat-mean dF/F at each frame's onset."""
    table = data_set.get_stimulus_table(name)
    template = np.asarray(data_set.get_stimulus_template(name))
    frame, start = table["frame"].to_numpy(dtype=np.int64), table["start"].to_numpy(dtype=np.int64)
    ok = start < dff.shape[1]
    sums = np.zeros((len(template), dff.shape[0]))
    np.add.at(sums, frame[ok], dff[:, start[ok]].T)
    counts = np.bincount(frame[ok], minlength=len(template))
    trace = (sums / np.maximum(counts, 1)[:, None]).astype(np.float32)
    trace[counts == 0] = np.nan
    return vf.movie_to_field(template, field), trace, int(counts.max(initial=0))


def double_exponential(n_taps: int, latency: float, tau_rise: float, tau_decay: float) -> np.ndarray:
    """``(n_taps,)`` calcium kernel (in frames): ``exp(-t/tau_decay) - exp(-t/tau_rise)`` from ``latency`` on."""
    t = np.arange(n_taps) - latency
    return np.where(t > 0, np.exp(-np.clip(t, 0, None) / tau_decay) - np.exp(-np.clip(t, 0, None) / tau_rise), 0.0)


LATENCIES = np.arange(0.0, 4.01, 0.25)  # frames: the kernel fit's grid
TAU_RISES = np.geomspace(0.3, 4.0, 12)
TAU_DECAYS = np.geomspace(2.0, 40.0, 24)


def fit_calcium_kernel(dff: np.ndarray, frames: np.ndarray, starts: np.ndarray, ends: np.ndarray,
                       image_means: np.ndarray, n_taps: int = KERNEL_FRAMES, n_cells: int = 50) -> np.ndarray:
    """The calcium kernel from rate to dF/F, fitted to natural-scene traces.

    Each trial's expected response (its image's mean response, per cell) is laid out on the
    acquisition frames the presentation covers; the dF/F trace is regressed on that drive
    through a double-exponential kernel with a latency (GCaMP's rise and decay), pooled over the
    ``n_cells`` cells whose image means vary most. The three shape parameters are searched on a
    grid (the scale is the least-squares one), so the fit captures latency, rise and decay as the
    data show them while staying a physiological shape (a free kernel picks up the 250-ms rhythm
    of the trials).

    Args:
        dff: ``(n_cells, n_frames)`` traces.  frames, starts, ends: ``(n_trials,)`` image shown (-1
            blank), first and end acquisition frame of each natural-scene presentation. Only the
            frames whose whole kernel history lies within presentations are fitted (the epochs
            are separated by other stimuli).
        image_means: ``(n_images, n_cells)`` mean response of each image (template index rows).

    Returns:
        ``(n_taps,)`` kernel normalised to sum 1 (a steady drive of 1 gives a steady trace of 1).
    """
    order = np.argsort(starts)
    frames, starts, ends = (np.asarray(a)[order] for a in (frames, starts, ends))
    cells = np.argsort(image_means.var(axis=0))[::-1][:n_cells]
    first, last = int(starts[0]), int(min(ends[-1], dff.shape[1]))
    n = last - first
    # the drive of each acquisition frame: the image on screen at that frame (blank: 0)
    owner = np.searchsorted(starts - first, np.arange(n), side="right") - 1
    covered = np.arange(n) < ends[owner] - first
    shown = frames[owner]
    drive = np.where(shown[:, None] >= 0, image_means[np.maximum(shown, 0)][:, cells], 0.0).T  # (cells, n)
    drive -= drive[:, covered].mean(axis=1, keepdims=True)
    drive[:, ~covered] = 0.0
    target = dff[cells, first:last].astype(np.float64)
    target -= target[:, covered].mean(axis=1, keepdims=True)
    # fitted frames: the kernel's whole history within presentations
    history = np.convolve(covered.astype(float), np.ones(n_taps))[:n] >= n_taps - 0.5
    weight = history[n_taps:n].astype(float)

    def lag(k: int) -> np.ndarray:  # the drive k frames earlier, at the fitted frames
        return drive[:, n_taps - k:n - k] * weight

    # normal equations of the lagged drives: any kernel's fit follows from them
    lags = [lag(k) for k in range(n_taps)]
    gram = np.array([[np.vdot(a, b) for b in lags] for a in lags])
    moment = np.array([np.vdot(a, target[:, n_taps:n]) for a in lags])
    best, best_gain = None, 0.0
    for latency in LATENCIES:
        for tau_rise in TAU_RISES:
            for tau_decay in TAU_DECAYS[TAU_DECAYS > tau_rise]:
                kernel = double_exponential(n_taps, latency, tau_rise, tau_decay)
                fit, power = kernel @ moment, kernel @ gram @ kernel
                if power > 0 and fit > 0 and fit * fit / power > best_gain:  # explained sum of squares
                    best, best_gain = kernel, fit * fit / power
    if best is None:
        raise SessionError("the calcium kernel fit found no response to the natural scenes")
    return (best / best.sum()).astype(np.float32)


def extract_container(cache_dir: Path, ds: ResponseDataset, ids: list[int], extract: ExtractConfig,
                      cfg: ContainerConfig) -> TrainingStimuli:
    """Read the studied session's container: every stimulus in ``cfg`` for the cells of ``ds``."""
    field_ = vf.VisualField.from_crop(extract.crop, (extract.image_height, extract.image_width))
    sessions = container_sessions(cache_dir, ds.experiment_id, ids)
    wanted = set(cfg.stimuli)
    out = TrainingStimuli(experiment_id=ds.experiment_id, cell_ids=ds.cell_ids, kernel=np.zeros(0, dtype=np.float32))
    for letter in cfg.sessions:
        if letter not in sessions:
            log.warning("container of %d: no cached session %s (its stimuli are left out)", ds.experiment_id, letter)
            continue
        data_set = open_session(cache_dir, sessions[letter])
        _, dff = data_set.get_dff_traces()
        dff = np.asarray(dff, dtype=np.float32)
        bad = np.isnan(dff).any(axis=1)
        columns = _columns(np.where(bad, -1, data_set.get_cell_specimen_ids()), ds.cell_ids)
        dff = np.nan_to_num(dff)
        stimuli = data_set.list_stimuli()
        if letter == "B":
            table = data_set.get_stimulus_table("natural_scenes")
            image_means = np.zeros((int(ds.image_ids.max()) + 1, ds.n_neurons))
            image_means[ds.image_ids] = ds.image_means()  # B recorded every studied cell (columns >= 0)
            out.kernel = fit_calcium_kernel(dff[columns], table["frame"].to_numpy(), table["start"].to_numpy(),
                                            table["end"].to_numpy(), image_means)
        for name in STATIC:  # C2's 4-deg and 8-deg sparse noise count as locally_sparse_noise
            if name in stimuli and ("locally_sparse_noise" if name.startswith("locally") else name) in wanted:
                pixels, trial_image, responses = _read_trials(data_set, name, dff, extract, field_)
                out.trials.append(TrialStimulus(name, letter, ds.to_model(pixels).astype(np.float32), trial_image,
                                                _onto_studied(responses, columns)))
        for name in MOVIES:
            if name in stimuli and "natural_movies" in wanted:
                pixels, trace, repeats = _read_movie(data_set, name, dff, field_)
                out.movies.append(MovieStimulus(name, letter, ds.to_model(pixels).astype(np.float32),
                                                _onto_studied(trace, columns), repeats))
    return out
