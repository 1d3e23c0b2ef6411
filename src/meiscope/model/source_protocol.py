"""What the trainer needs from "other stimuli the same cells saw": the :class:`TrainingSource` protocol.

The natural scenes of the studied session are the :class:`~meiscope.dataset.ResponseDataset`;
a recording kind may hand the trainer more data of the same cells (the Allen experiment
container's gratings, sparse noise and movies are one such kind). The model and tuning code type
against this protocol only, never against a recording's class, so a new kind of extra data is a
new class with these members and no change here.

Two kinds of stimulus, as :mod:`meiscope.model.sources` turns them into losses:

- :class:`TrialStimulusData`: static images shown as trials (responses in the dataset's units,
  the same response window), averaged per image like the scenes;
- :class:`MovieStimulusData`: a frame sequence and its repeat-averaged trace, which a causal
  kernel (``TrainingSource.kernel``, e.g. a calcium kernel) links to the model's per-frame rates.

This module stays light (no torch, no numpy at import) so the stages and the CLI can import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence, runtime_checkable

if TYPE_CHECKING:
    import numpy as np


class TrialStimulusData(Protocol):
    """A static stimulus shown as trials.

    Attributes:
        name, session: what it is and where it was shown (``<session>:<name>`` names its source).
        images: ``(n, H, W)`` model-space images (the dataset's pixel normalisation and size).
        trial_image: ``(n_trials,)`` int, row of ``images`` shown on each trial.
        responses: ``(n_trials, n_neurons)`` responses of the studied cells (NaN: not recorded).
    """

    name: str
    session: str
    images: "np.ndarray"
    trial_image: "np.ndarray"
    responses: "np.ndarray"


class MovieStimulusData(Protocol):
    """A movie: consecutive frames and the cells' trace sampled at each frame.

    Attributes:
        name, session: as :class:`TrialStimulusData`.
        frames: ``(n_frames, H, W)`` model-space frames.
        trace: ``(n_frames, n_neurons)`` repeat-averaged response at each frame (NaN: not recorded).
        position_map: its receptive-field map ``(n_neurons, H, W)``, or None until
            :func:`meiscope.model.sources.movie_position_maps` computes and keeps it (settable).
    """

    name: str
    session: str
    frames: "np.ndarray"
    trace: "np.ndarray"
    position_map: Any


@runtime_checkable
class TrainingSource(Protocol):
    """Other stimuli the studied cells saw, trained on together with the natural scenes.

    Attributes:
        kernel: ``(taps,)`` causal kernel from per-frame rates to the movies' trace (``kernel[k]``
            weighs the rate ``k`` frames back); used only when ``movies`` is not empty.
        trials: the static stimuli.
        movies: the movies.

    Neuron columns (``responses``, ``trace``) follow the studied dataset's ``cell_ids`` once
    :meth:`select_neurons` has been applied. :meth:`save` writes what the class's ``load``
    (a classmethod ``load(path) -> TrainingSource``) reads back: that pair carries the source to
    the tune workers (:class:`SavedSource`).
    """

    kernel: "np.ndarray"
    trials: Sequence[TrialStimulusData]
    movies: Sequence[MovieStimulusData]

    def select_neurons(self, cell_ids: "np.ndarray") -> "TrainingSource":
        """A copy restricted to ``cell_ids`` ``(n,)`` (in that order)."""
        ...

    def save(self, path: Path) -> None:
        """Write the source to ``path`` (read back by ``type(self).load(path)``)."""
        ...


@dataclass(frozen=True)
class SavedSource:
    """A :class:`TrainingSource` written to a file, and how to read it back: what a tune worker
    process receives (both picklable: a path and a class's ``load``), so it needs no recording's name.

    Attributes:
        path: the file :meth:`TrainingSource.save` wrote.
        loader: ``loader(path) -> TrainingSource`` (the source class's ``load``).
    """

    path: Path
    loader: Callable[[Path], TrainingSource]

    @classmethod
    def write(cls, source: TrainingSource, path: Path) -> "SavedSource":
        """Save ``source`` to ``path``; the handle that reads it back."""
        source.save(Path(path))
        return cls(Path(path), type(source).load)  # type: ignore[attr-defined]

    def load(self) -> TrainingSource:
        """The source, read from :attr:`path`."""
        return self.loader(self.path)

