"""Other stimuli of the studied cells as a :class:`~meiscope.model.source_protocol.TrainingSource`: the
generic part every recording kind shares (the container's sessions, a Neuropixels session's other stimuli).

:class:`TrainingStimuli` holds static stimuli as trials (:class:`TrialStimulus`) and movies as
repeat-averaged traces (:class:`MovieStimulus`) with the causal kernel that links per-frame rates to
the traces; it is saved beside the studied dataset as one ``.npz`` and read back by its ``load``.
:func:`grating_images` draws the distinct gratings of an Allen static-grating table in the model's
visual field (both the two-photon and the Neuropixels sessions show the same static gratings).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from meiscope import visual_field as vf
from meiscope.atomic import write_npz
from meiscope.dataset import DatasetError, neuron_columns
from meiscope.recordings.brain_observatory import CONTRAST

GRATING_PARAMETERS = ("orientation", "spatial_frequency", "phase")


@dataclass
class TrialStimulus:
    """A static stimulus shown as trials: ``images`` ``(n, H, W)`` model space, ``trial_image``
    ``(n_trials,)``, ``responses`` ``(n_trials, n_neurons)`` (NaN: cell not recorded)."""

    name: str
    session: str
    images: np.ndarray
    trial_image: np.ndarray
    responses: np.ndarray


@dataclass
class MovieStimulus:
    """A natural movie in one session: ``frames`` ``(n_frames, H, W)`` model space, ``trace``
    ``(n_frames, n_neurons)`` repeat-averaged response at each frame (NaN: not recorded)."""

    name: str
    session: str
    frames: np.ndarray
    trace: np.ndarray
    repeats: int
    # its receptive-field map (meiscope.model.sources.movie_position_maps): computed on first use, never saved
    position_map: Any = field(default=None, repr=False, compare=False)


@dataclass
class TrainingStimuli:
    """Every other stimulus of the studied cells; saved beside the dataset as one ``.npz``.

    A :class:`~meiscope.model.source_protocol.TrainingSource` (``kernel``: the causal kernel from
    per-frame rates to the movies' traces; ``trials`` and ``movies``; :meth:`select_neurons`,
    :meth:`save` and :meth:`load`): the model trains on it without knowing which recording wrote it.
    ``experiment_id`` is the studied session's id and ``cell_ids`` ``(n_neurons,)`` name the columns.
    """

    experiment_id: int
    cell_ids: np.ndarray
    kernel: np.ndarray
    trials: list[TrialStimulus] = field(default_factory=list)
    movies: list[MovieStimulus] = field(default_factory=list)

    def save(self, path: Path) -> None:
        """Write every stimulus as arrays of one ``.npz`` (read back by :meth:`load`)."""
        arrays = {"experiment_id": self.experiment_id, "cell_ids": self.cell_ids, "kernel": self.kernel}
        for s in self.trials:
            key = f"trials__{s.session}__{s.name}"
            arrays.update({f"{key}__images": s.images, f"{key}__trial_image": s.trial_image,
                           f"{key}__responses": s.responses})
        for m in self.movies:
            key = f"movie__{m.session}__{m.name}"
            arrays.update({f"{key}__frames": m.frames, f"{key}__trace": m.trace, f"{key}__repeats": m.repeats})
        write_npz(path, arrays)

    @classmethod
    def load(cls, path: Path) -> "TrainingStimuli":
        """Read what :meth:`save` wrote; a missing file is a DatasetError."""
        path = Path(path)
        if not path.is_file():
            raise DatasetError(f"{path}: no training stimuli beside the dataset (run `meiscope extract`)")
        with np.load(path, allow_pickle=False) as f:
            data = {k: f[k] for k in f.files}
        out = cls(experiment_id=int(data["experiment_id"]), cell_ids=data["cell_ids"], kernel=data["kernel"])
        for key in sorted(k[:-len("__images")] for k in data if k.startswith("trials__") and k.endswith("__images")):
            _, session, name = key.split("__")
            out.trials.append(TrialStimulus(name, session, data[f"{key}__images"], data[f"{key}__trial_image"],
                                            data[f"{key}__responses"]))
        for key in sorted(k[:-len("__frames")] for k in data if k.startswith("movie__") and k.endswith("__frames")):
            _, session, name = key.split("__")
            out.movies.append(MovieStimulus(name, session, data[f"{key}__frames"], data[f"{key}__trace"],
                                            int(data[f"{key}__repeats"])))
        return out

    def select_neurons(self, cell_ids: np.ndarray) -> "TrainingStimuli":
        """A copy restricted to ``cell_ids`` (in that order; all must be present)."""
        cols = neuron_columns(self.cell_ids, cell_ids,
                              f"training stimuli of {self.experiment_id}: no responses of cells")
        return TrainingStimuli(
            self.experiment_id, self.cell_ids[cols], self.kernel,
            [TrialStimulus(s.name, s.session, s.images, s.trial_image, s.responses[:, cols]) for s in self.trials],
            [MovieStimulus(m.name, m.session, m.frames, m.trace[:, cols], m.repeats) for m in self.movies])


def grating_images(table: pd.DataFrame, field_: vf.VisualField) -> tuple[np.ndarray, np.ndarray]:
    """The distinct gratings of a static-grating table (blank = gray) and each trial's row of them.

    Args:
        table: one row per trial with numeric ``orientation``, ``spatial_frequency``, ``phase``
            (NaN on blank trials).

    Returns:
        ``(pixels (n_distinct, H, W) float32 0-255 screen pixels in ``field_``, trial_image (n_trials,) int64)``.
    """
    params = table[list(GRATING_PARAMETERS)].to_numpy(dtype=float)
    keys = [tuple(np.round(p, 6)) if np.isfinite(p).all() else None for p in params]
    distinct = list(dict.fromkeys(keys))
    images = np.stack([np.full(field_.shape, vf.GRAY, dtype=np.float32) if k is None
                       else vf.grating_to_field(k[0], k[1], k[2], CONTRAST, field_) for k in distinct])
    row = {k: i for i, k in enumerate(distinct)}
    return images, np.array([row[k] for k in keys], dtype=np.int64)
