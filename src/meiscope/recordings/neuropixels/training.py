"""A Neuropixels session's other stimuli as a training source of the studied units.

The natural scenes make the :class:`~meiscope.dataset.ResponseDataset`; every other stimulus of the
session that ``neuropixels.training_stimuli`` names is added as a
:class:`~meiscope.recordings.training_stimuli.TrainingStimuli` (the training-source class the
container uses), saved beside the dataset:

- **static stimuli as trials**: static gratings (one image per orientation, spatial frequency and
  phase; the blank is the gray screen) and flashes (the full field black or white). The response of
  a trial is its spike count in ``neuropixels.count_window``, as for the scenes (allensdk's
  ``presentationwise_spike_counts``), so the trials are in the dataset's units.
- **natural movies as traces**: movie one and three, one row of the stimulus table per 1/30-s
  frame. The trace of a frame is the spike count in the frame's own bin ``[onset, onset + 1/30 s)``,
  averaged over the repeats. Spikes lag the screen by the response latency, so the count of
  frame ``f`` mixes the rates of the frames shown a latency earlier: the training source's kernel
  is that delay (:func:`latency_kernel`), with the latency fitted to the session's natural scenes
  (:func:`fit_latency`).
- **drifting stimuli as traces**: drifting gratings (2 s, then 1 s of gray) and Gabor patches
  (250 ms, drifting one whole cycle at 4 Hz, back to back in random order). Each condition is a
  short movie of 1/30-s bins from its onset: a bin's frame is the mean of the 60-Hz screen frames
  shown in it (:mod:`.stimuli`), its trace the repeat-mean spike count in the bin. The conditions
  follow each other in one movie per stimulus, with the movies' kernel. A drifting grating's bins
  run on through its gray, so the next condition's history is the gray the screen showed; a Gabor
  patch follows another patch chosen at random, so its first ``len(kernel) - 1`` bins, whose
  spikes the previous patch drove, are NaN (not fitted).

Gabor patches are trained on like every other stimulus; they remain the receptive-field check
against the truth (:mod:`.gabor_check`, which reads their counts, not the model).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from meiscope import visual_field as vf
from meiscope.config import ExtractConfig
from meiscope.dataset import ResponseDataset
from meiscope.recordings import brain_observatory as bo
from meiscope.recordings.neuropixels import stimuli
from meiscope.recordings.neuropixels.responses import (PARAMETERS, SCENES, numeric_parameters, spike_counts,
                                                       stimulus_table)
from meiscope.recordings.neuropixels.settings import NeuropixelsConfig
from meiscope.recordings.screen import SCENE_SHAPE
from meiscope.recordings.training_stimuli import (GRATING_PARAMETERS, MovieStimulus, TrainingStimuli, TrialStimulus,
                                                  grating_images)

log = logging.getLogger(__name__)

FRAME_S = 1.0 / 30.0  # Allen's natural movies: one stimulus-table row per 30-Hz frame
MOVIE_NUMBERS = {"natural_movie_one": 1, "natural_movie_three": 3}  # get_natural_movie_template's numbers
# the drifting stimuli and the columns of allensdk's table that name a condition
DRIFTING = {"drifting_gratings": ("orientation", "temporal_frequency"), "gabors": PARAMETERS["gabors"]}
DG_GRAY_S = 1.0  # the gray after each drifting-grating sweep (Allen: 2 s on, 1 s gray)
# the latency fit's grid: 0-150 ms in 5-ms steps (mouse V1 spiking latencies are 30-100 ms,
# Siegle et al. 2021; a step well under a 33-ms movie frame)
LATENCY_GRID_S = np.round(np.arange(0.0, 0.1501, 0.005), 6)


# ---------------------------------------------------------------------------------------------
# the latency and the movies' kernel
# ---------------------------------------------------------------------------------------------
def window_counts(spike_times: dict[int, np.ndarray], onsets: np.ndarray, unit_ids: np.ndarray,
                  starts: np.ndarray, length: float) -> np.ndarray:
    """Spike counts in ``[onset + start, onset + start + length)``: ``(n_onsets, n_starts, n_units)`` int64.

    Args:
        spike_times: unit id -> its sorted spike times (s), as allensdk's ``session.spike_times``.
        onsets: ``(n_onsets,)`` s.  starts: ``(n_starts,)`` s after each onset.
    """
    edges = onsets[:, None] + np.concatenate([starts, starts + length])[None, :]
    out = np.empty((len(onsets), len(starts), len(unit_ids)), dtype=np.int64)
    for column, unit in enumerate(unit_ids):
        index = np.searchsorted(np.asarray(spike_times[unit]), edges, side="left")
        out[:, :, column] = index[:, len(starts):] - index[:, :len(starts)]
    return out


def explained_share(counts: np.ndarray, condition: np.ndarray) -> np.ndarray:
    """Share of each unit's count variance its trials' condition explains (one-way ANOVA's eta squared).

    Args:
        counts: ``(n_trials, ..., n_units)``.  condition: ``(n_trials,)`` int, each trial's condition.

    Returns:
        ``counts.shape[1:]``; NaN where a unit's counts do not vary.
    """
    counts = counts.astype(np.float64)
    _, inverse = np.unique(condition, return_inverse=True)
    repeats = np.bincount(inverse)
    sums = np.zeros((len(repeats), *counts.shape[1:]))
    np.add.at(sums, inverse, counts)
    means = sums / repeats.reshape(-1, *([1] * (counts.ndim - 1)))
    grand = counts.mean(axis=0)
    between = (repeats.reshape(-1, *([1] * (counts.ndim - 1))) * (means - grand) ** 2).sum(axis=0)
    total = ((counts - grand) ** 2).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, between / np.where(total > 0, total, 1.0), np.nan)


def fit_latency(session: Any, scenes: pd.DataFrame, unit_ids: np.ndarray,
                grid: np.ndarray = LATENCY_GRID_S) -> tuple[float, np.ndarray]:
    """The response latency: the lag at which a presentation-long count window is most scene-specific.

    The scenes follow each other every 250 ms in random order, so a count window as long as a
    presentation that starts at lag ``L`` after onset holds the response to the scene on screen
    alone when ``L`` is the latency: earlier, it starts inside the previous scene's response; later,
    it ends inside the next one's, and neither depends on the current scene. The share of the count
    variance the current scene explains (:func:`explained_share`, averaged over the units) peaks
    there. (The repeat-to-repeat reliability of the movies' frame bins does not identify it: any
    lag gives stimulus-locked, equally reliable bins, and their smoothing repeats every frame.)

    Args:
        session: allensdk's ``EcephysSession`` (``spike_times``).
        scenes: its natural-scene presentations (``start_time``, ``stop_time``, ``frame``; blank = -1).
        unit_ids: ``(n_units,)`` the studied units.  grid: ``(n_lags,)`` s, the lags tried.

    Returns:
        ``(latency_s, share)``: the best lag and the mean explained share at each lag ``(n_lags,)``.
    """
    onsets = scenes["start_time"].to_numpy(dtype=float)
    length = float(np.median(scenes["stop_time"].to_numpy(dtype=float) - onsets))
    frames = scenes["frame"].astype(float).astype(np.int64).to_numpy()
    # a few units at a time: 5,950 presentations x 31 lags per unit on a real session
    shares = [explained_share(window_counts(session.spike_times, onsets, unit_ids[i:i + 16],
                                            np.asarray(grid, dtype=float), length), frames)
              for i in range(0, len(unit_ids), 16)]
    share = np.nanmean(np.concatenate(shares, axis=-1), axis=-1)  # (n_lags,): units whose counts vary
    return float(grid[int(np.nanargmax(share))]), share


def latency_kernel(latency_s: float, frame_s: float = FRAME_S) -> np.ndarray:
    """The causal kernel of a pure delay of ``latency_s`` on frames of ``frame_s``: ``(taps,)``, sum 1.

    The bin of frame ``f`` (``[f, f + 1)`` frames) holds the spikes the screen drove ``d = latency /
    frame`` frames earlier, i.e. frames ``f - floor(d)`` (a share ``1 - frac(d)`` of the bin) and
    ``f - floor(d) - 1`` (a share ``frac(d)``): ``kernel[k]`` weighs the rate ``k`` frames back.
    """
    delay = latency_s / frame_s
    whole, part = int(np.floor(delay)), delay - np.floor(delay)
    kernel = np.zeros(whole + 2, dtype=np.float32)
    kernel[whole], kernel[whole + 1] = 1.0 - part, part
    return kernel


# ---------------------------------------------------------------------------------------------
# the stimuli
# ---------------------------------------------------------------------------------------------
def flash_images(table: pd.DataFrame, field_: vf.VisualField) -> tuple[np.ndarray, np.ndarray]:
    """Full-field flashes (``color`` -1 black, +1 white around the gray screen): ``(pixels (2, H, W),
    trial_image (n_trials,))``, rows in increasing colour."""
    colors = table["color"].astype(float).to_numpy()
    distinct, trial_image = np.unique(colors, return_inverse=True)
    pixels = np.stack([np.full(field_.shape, vf.GRAY * (1.0 + c), dtype=np.float32) for c in distinct])
    return pixels, trial_image.astype(np.int64).ravel()


def static_grating_images(table: pd.DataFrame, field_: vf.VisualField) -> tuple[np.ndarray, np.ndarray]:
    """:func:`~meiscope.recordings.training_stimuli.grating_images` of an allensdk table (``"null"``: blank)."""
    return grating_images(numeric_parameters(table, GRATING_PARAMETERS), field_)


def trial_stimulus(session: Any, name: str, table: pd.DataFrame, unit_ids: np.ndarray, ds: ResponseDataset,
                   field_: vf.VisualField, window: list[float]) -> TrialStimulus:
    """A static stimulus's trials: model-space images, each trial's image and its spike counts in ``window``."""
    draw = static_grating_images if name == "static_gratings" else flash_images
    pixels, trial_image = draw(table, field_)
    responses = spike_counts(session, table, unit_ids, window)
    return TrialStimulus(name, str(ds.experiment_id), ds.to_model(pixels).astype(np.float32), trial_image, responses)


def movie_trace(counts: np.ndarray, frame: np.ndarray, n_frames: int) -> tuple[np.ndarray, int]:
    """Repeat mean of per-frame counts: ``(trace (n_frames, n_units) float32, repeats)``; NaN where a frame
    was never shown (e.g. all its presentations fell in invalid times)."""
    sums = np.zeros((n_frames, counts.shape[1]))
    np.add.at(sums, frame, counts)
    shown = np.bincount(frame, minlength=n_frames)
    trace = (sums / np.maximum(shown, 1)[:, None]).astype(np.float32)
    trace[shown == 0] = np.nan
    return trace, int(shown.max(initial=0))


def movie_stimulus(session: Any, cache: Any, name: str, table: pd.DataFrame, unit_ids: np.ndarray,
                   ds: ResponseDataset, field_: vf.VisualField) -> MovieStimulus:
    """A natural movie: its template's frames in model space and the repeat-mean count of each frame's bin."""
    template = np.asarray(cache.get_natural_movie_template(MOVIE_NUMBERS[name]))
    frame = table["frame"].astype(float).astype(np.int64).to_numpy()
    counts = spike_counts(session, table, unit_ids, [0.0, FRAME_S])
    trace, repeats = movie_trace(counts, frame, len(template))
    frames = ds.to_model(vf.movie_to_field(template, field_)).astype(np.float32)
    return MovieStimulus(name, str(ds.experiment_id), frames, trace, repeats)


def bin_frames(draw: Callable[[float], np.ndarray], on_s: float, n_bins: int, field_: vf.VisualField
               ) -> np.ndarray:
    """``(n_bins, H, W)`` float32: each 1/30-s bin's mean screen image over the 60-Hz frames shown in it,
    ``draw(t)`` (``t`` s after onset) while the stimulus is on, gray once it is off (after ``on_s``)."""
    out = np.empty((n_bins, *field_.shape), dtype=np.float32)
    gray = np.full(field_.shape, vf.GRAY, dtype=np.float32)
    for k in range(n_bins):
        times = stimuli.screen_times(k * FRAME_S, (k + 1) * FRAME_S)
        out[k] = np.mean([draw(float(t)) if t < on_s else gray for t in times], axis=0)
    return out


def _drawer(name: str, params: np.ndarray, field_: vf.VisualField) -> Callable[[float], np.ndarray]:
    """``t -> (H, W)`` model-space pixels of one condition of a drifting stimulus."""
    if name == "drifting_gratings":
        direction, frequency = params
        return lambda t: vf.grating_to_field(direction % 180.0, bo.DG_SPATIAL_FREQUENCY,
                                             float(stimuli.drift_phase(direction, frequency, t)), bo.CONTRAST, field_)
    x, y, orientation = params
    render = patch_render_shape(field_)
    return lambda t: vf.scenes_to_field(stimuli.gabor_frame(x, y, orientation, t, render)[None], field_)[0]


def patch_render_shape(field_: vf.VisualField) -> tuple[int, int]:
    """A rendering of the scene frame twice as fine as ``field_``'s pixels, for drawing Gabor patches."""
    rows = 2 * field_.shape[0] * SCENE_SHAPE[0] / (field_.bottom - field_.top)
    cols = 2 * field_.shape[1] * SCENE_SHAPE[1] / (field_.right - field_.left)
    return int(np.ceil(rows)), int(np.ceil(cols))


def drifting_stimulus(session: Any, name: str, table: pd.DataFrame, unit_ids: np.ndarray, ds: ResponseDataset,
                      field_: vf.VisualField, kernel: np.ndarray) -> MovieStimulus:
    """A drifting stimulus (module docstring) as one movie of its conditions' 1/30-s bins."""
    params = numeric_parameters(table, DRIFTING[name]).to_numpy()
    shown = np.isfinite(params).all(axis=1)  # the drifting gratings' blank is the gray screen: left out
    params, onsets = params[shown], table["start_time"].to_numpy(dtype=float)[shown]
    on_s = float(np.median(table["stop_time"].to_numpy(dtype=float)[shown] - onsets))
    # whole bins only: a Gabor patch's 8th bin would hold the next (random) patch's first frame
    n_bins = int(np.floor((on_s + (DG_GRAY_S if name == "drifting_gratings" else 0.0)) / FRAME_S + 1e-6))
    distinct, condition = np.unique(params, axis=0, return_inverse=True)
    condition = condition.ravel()
    counts = window_counts(session.spike_times, onsets, unit_ids, np.arange(n_bins) * FRAME_S, FRAME_S)
    sums = np.zeros((len(distinct), n_bins, len(unit_ids)))
    np.add.at(sums, condition, counts)
    repeats = np.bincount(condition, minlength=len(distinct))
    trace = sums / repeats[:, None, None]
    if name != "drifting_gratings":  # these bins hold the previous (random) condition's spikes
        trace[:, :len(kernel) - 1] = np.nan
    frames = np.concatenate([bin_frames(_drawer(name, p, field_), on_s, n_bins, field_) for p in distinct])
    return MovieStimulus(name, str(ds.experiment_id), ds.to_model(frames).astype(np.float32),
                         trace.reshape(-1, len(unit_ids)).astype(np.float32), int(repeats.max()))


def training_stimuli(cache: Any, session: Any, ds: ResponseDataset, extract_cfg: ExtractConfig,
                     cfg: NeuropixelsConfig, path: Path) -> TrainingStimuli:
    """The stimuli of ``cfg.training_stimuli`` the session holds, for the units of ``ds`` (its ``cell_ids``).

    ``path`` names the session's file in messages. A stimulus the session does not show (or whose
    presentations all fall in invalid times) is simply absent (logged). The kernel is the fitted latency's
    delay (:func:`fit_latency` on the natural scenes, :func:`latency_kernel`).
    """
    field_ = vf.VisualField.from_crop(extract_cfg.crop, (extract_cfg.image_height, extract_cfg.image_width))
    held = set(session.stimulus_presentations["stimulus_name"])
    latency, _ = fit_latency(session, stimulus_table(session, SCENES, path), ds.cell_ids)
    log.info("session %d: response latency %.0f ms (fitted to the natural scenes)", ds.experiment_id, latency * 1e3)
    out = TrainingStimuli(experiment_id=ds.experiment_id, cell_ids=ds.cell_ids, kernel=latency_kernel(latency))
    for name in cfg.training_stimuli:
        table = stimulus_table(session, name, path) if name in held else None
        if table is None or table.empty:
            log.info("session %d shows no %s: it does not train the model", ds.experiment_id, name)
            continue
        if name in MOVIE_NUMBERS:
            out.movies.append(movie_stimulus(session, cache, name, table, ds.cell_ids, ds, field_))
        elif name in DRIFTING:
            out.movies.append(drifting_stimulus(session, name, table, ds.cell_ids, ds, field_, out.kernel))
        else:
            out.trials.append(trial_stimulus(session, name, table, ds.cell_ids, ds, field_, cfg.count_window))
    return out


def training_path(dataset_path: Path) -> Path:
    """Where a Neuropixels session's training stimuli lie beside its dataset ``<id>.npz``: ``<id>.training.npz``."""
    return Path(dataset_path).with_name(dataset_path.stem + ".training.npz")
