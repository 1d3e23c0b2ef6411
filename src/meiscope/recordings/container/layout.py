"""The stimulus schedule of each session of an experiment container.

A session is tiled into segments: 250-ms presentations of static stimuli (natural scenes,
static gratings, sparse-noise frames, gray), 1/30-s movie frames, and 2-s drifting-grating
sweeps (cut into 250-ms segments so that the shared gain can change within them) each followed
by 1 s of gray. The block order follows Allen's sessions (stimulus sets from allensdk's
``stimulus_info.SESSION_STIMULUS_MAP``; each static stimulus in three epochs)::

    A: [DG 1/3][NM3 1st half][NM1][DG 2/3][spontaneous][NM3 2nd half][DG 3/3]
    B: [SG 1/3][NS 1/3][spontaneous][NS 2/3][SG 2/3][NM1][NS 3/3][SG 3/3]
    C: [LSN 1/3][spontaneous][NM1][LSN 2/3][NM2][LSN 3/3]

Drifting gratings: 8 directions x 5 temporal frequencies (1-15 Hz) at 0.04 cycles/deg, 80%
contrast, plus blank sweeps (Allen's parameters, ``../shared/docs/allen-brain-observatory.md``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from meiscope.config import SyntheticConfig
from meiscope.recordings.container.settings import SyntheticContainerConfig
from meiscope.recordings.brain_observatory import drifting_grating_conditions, grating_conditions

SESSION_TYPES = {"A": "three_session_A", "B": "three_session_B", "C": "three_session_C"}
STATIC_S = 0.25
MOVIE_FRAME_S = 1.0 / 30.0
DG_SWEEP_S, DG_GRAY_S = 2.0, 1.0
GRAY_CODE = "gray"  # the gray between drifting-grating sweeps
SPONTANEOUS = "spontaneous"  # the gray-screen epoch of spontaneous activity
MOVIES = ("natural_movie_one", "natural_movie_two", "natural_movie_three")
N_EPOCHS = 3
TICKS_PER_S = 120


@dataclass
class Timeline:
    """A session tiled into segments; every array is ``(n_segments,)``.

    Attributes:
        onsets_s, durations_s: start and length of each segment (s).
        stimulus: the stimulus name of each segment (``spontaneous``; ``gray`` between drifting gratings).
        condition: the row of the stimulus's conditions (gratings), its template frame (scenes,
            movies, sparse noise), -1 for a blank sweep or gray.
        trial: the presentation each segment belongs to (a drifting-grating sweep spans 8 segments).
    """

    onsets_s: np.ndarray
    durations_s: np.ndarray
    stimulus: np.ndarray
    condition: np.ndarray
    trial: np.ndarray

    @property
    def end_s(self) -> float:
        return float(self.onsets_s[-1] + self.durations_s[-1]) if len(self.onsets_s) else 0.0


class _Builder:
    """Appends blocks of segments in order."""

    def __init__(self) -> None:
        self.durations: list[np.ndarray] = []
        self.stimulus: list[np.ndarray] = []
        self.condition: list[np.ndarray] = []
        self.trial: list[np.ndarray] = []
        self.n_trials = 0

    def add(self, stimulus: str, conditions: np.ndarray, duration_s: float, segments_per_trial: int = 1) -> None:
        conditions = np.repeat(np.asarray(conditions, dtype=np.int64), segments_per_trial)
        n = len(conditions)
        self.durations.append(np.full(n, duration_s / segments_per_trial))
        self.stimulus.append(np.full(n, stimulus, dtype=object))
        self.condition.append(conditions)
        self.trial.append(self.n_trials + np.arange(n) // segments_per_trial)
        self.n_trials += n // segments_per_trial

    def spontaneous(self, seconds: float) -> None:
        self.add(SPONTANEOUS, np.full(int(round(seconds / STATIC_S)), -1), STATIC_S)

    def timeline(self) -> Timeline:
        durations = np.concatenate(self.durations)
        # onsets summed in whole ticks of 1/120 s (every duration is one): a running sum of
        # 1/30-s floats would drift off the frame clock
        ticks = np.rint(durations * TICKS_PER_S).astype(np.int64)
        onsets = np.concatenate([[0], np.cumsum(ticks)[:-1]]) / TICKS_PER_S
        return Timeline(onsets_s=onsets, durations_s=durations, stimulus=np.concatenate(self.stimulus),
                        condition=np.concatenate(self.condition), trial=np.concatenate(self.trial))


def _shuffled_epochs(n_conditions: int, repeats: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Conditions 0..n-1 and the blank (-1), ``repeats`` times each in random order, cut into 3 epochs."""
    order = np.repeat(np.arange(-1, n_conditions), repeats)[rng.permutation((n_conditions + 1) * repeats)]
    return np.array_split(order, N_EPOCHS)


def _movie(builder: _Builder, name: str, n_frames: int, repeats: int) -> None:
    builder.add(name, np.tile(np.arange(n_frames), repeats), MOVIE_FRAME_S)


def _drifting(builder: _Builder, conditions: np.ndarray) -> None:
    for condition in conditions:  # a 2-s sweep in 250-ms segments, then 1 s of gray
        builder.add("drifting_gratings", [condition], DG_SWEEP_S, segments_per_trial=int(DG_SWEEP_S / STATIC_S))
        builder.add(GRAY_CODE, np.full(int(DG_GRAY_S / STATIC_S), -1), STATIC_S)


def session_timeline(session: str, synthetic: SyntheticConfig, cfg: SyntheticContainerConfig,
                     rng: np.random.Generator) -> Timeline:
    """The schedule of session ``A``, ``B`` or ``C`` (module docstring)."""
    b = _Builder()
    if session == "A":
        dg = _shuffled_epochs(len(drifting_grating_conditions()), cfg.drifting_grating_repeats, rng)
        first_half = cfg.movie_repeats // 2
        _drifting(b, dg[0])
        _movie(b, "natural_movie_three", cfg.movie_three_frames, first_half)
        _movie(b, "natural_movie_one", cfg.movie_one_frames, cfg.movie_repeats)
        _drifting(b, dg[1])
        b.spontaneous(synthetic.spontaneous_s)
        _movie(b, "natural_movie_three", cfg.movie_three_frames, cfg.movie_repeats - first_half)
        _drifting(b, dg[2])
    elif session == "B":
        sg = _shuffled_epochs(len(grating_conditions()), cfg.static_grating_repeats, rng)
        ns = _shuffled_epochs(synthetic.n_images, synthetic.repeats, rng)
        b.add("static_gratings", sg[0], STATIC_S)
        b.add("natural_scenes", ns[0], STATIC_S)
        b.spontaneous(synthetic.spontaneous_s)
        b.add("natural_scenes", ns[1], STATIC_S)
        b.add("static_gratings", sg[1], STATIC_S)
        _movie(b, "natural_movie_one", cfg.movie_one_frames, cfg.movie_repeats)
        b.add("natural_scenes", ns[2], STATIC_S)
        b.add("static_gratings", sg[2], STATIC_S)
    elif session == "C":
        lsn = np.array_split(np.arange(cfg.sparse_noise_frames), N_EPOCHS)
        b.add("locally_sparse_noise", lsn[0], STATIC_S)
        b.spontaneous(synthetic.spontaneous_s)
        _movie(b, "natural_movie_one", cfg.movie_one_frames, cfg.movie_repeats)
        b.add("locally_sparse_noise", lsn[1], STATIC_S)
        _movie(b, "natural_movie_two", cfg.movie_two_frames, cfg.movie_repeats)
        b.add("locally_sparse_noise", lsn[2], STATIC_S)
    else:
        raise ValueError(f"unknown container session {session!r}; expected one of {sorted(SESSION_TYPES)}")
    return b.timeline()
