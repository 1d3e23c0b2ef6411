"""The compact per-session dataset that the extract stage writes and every later stage reads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from meiscope.atomic import write_npz
from meiscope.errors import MeiscopeError

SPLITS = ("train", "val", "test")
RESPONSE_KINDS = ("dff", "counts")  # what a dataset's responses are: dF/F (two-photon) or spike counts
_ARRAYS = ("images", "image_ids", "trial_image", "responses", "blank_responses", "cell_ids", "split",
           "dropped_cell_ids")


class DatasetError(MeiscopeError, ValueError):
    """A dataset file is missing, unreadable or inconsistent."""


@dataclass
class ResponseDataset:
    """Trial responses of one session and the images, in the model's normalised pixel space.

    Attributes:
        experiment_id: Allen ophys experiment id of the session.
        images: ``(n_images, height, width)`` float32, model space: ``(pixels - pixel_mean) / pixel_std``.
        image_ids: ``(n_images,)`` int, index of each image in the Allen template.
        trial_image: ``(n_trials,)`` int, row of ``images`` shown on each trial.
        responses: ``(n_trials, n_neurons)`` float32, dF/F response of each trial (two-photon) or its
            spike count (Neuropixels).
        blank_responses: ``(n_blank_trials, n_neurons)`` float32, responses to the gray blank.
        cell_ids: ``(n_neurons,)`` int, Allen cell specimen ids.
        split: ``(n_images,)`` str, ``train`` / ``val`` / ``test`` per image.
        dropped_cell_ids: ``(n_dropped,)`` int, cells removed because their traces had NaNs.
        pixel_mean, pixel_std: the normalisation (of 0-255 screen pixels at model resolution).
        source: ``synthetic`` or ``allen`` (two-photon), ``synthetic_neuropixels`` or ``allen_neuropixels``.
        response_kind: what ``responses`` are, one of :data:`RESPONSE_KINDS`: ``dff`` or ``counts``
            (spike counts: the model's loss is Poisson). Left out, it follows ``source``
            (:func:`response_kind_of`), as in files written before the field existed.
    """

    experiment_id: int
    images: np.ndarray
    image_ids: np.ndarray
    trial_image: np.ndarray
    responses: np.ndarray
    blank_responses: np.ndarray
    cell_ids: np.ndarray
    split: np.ndarray
    dropped_cell_ids: np.ndarray
    pixel_mean: float
    pixel_std: float
    source: str
    response_kind: str = ""

    def __post_init__(self) -> None:
        if not self.response_kind:
            self.response_kind = response_kind_of(self.source)
        if self.response_kind not in RESPONSE_KINDS:
            raise DatasetError(f"response_kind {self.response_kind!r}: expected one of {RESPONSE_KINDS}")

    @property
    def n_neurons(self) -> int:
        return self.responses.shape[1]

    @property
    def n_images(self) -> int:
        return self.images.shape[0]

    def to_pixels(self, model_images: np.ndarray) -> np.ndarray:
        """Model-space images -> 0-255 screen pixels (not clipped)."""
        return model_images * self.pixel_std + self.pixel_mean

    def to_model(self, pixels: np.ndarray) -> np.ndarray:
        """0-255 screen pixels -> model space."""
        return (pixels - self.pixel_mean) / self.pixel_std

    def image_indices(self, split: str) -> np.ndarray:
        """Rows of ``images`` in ``split`` (``train``, ``val`` or ``test``)."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        return np.flatnonzero(self.split == split)

    def image_means(self) -> np.ndarray:
        """``(n_images, n_neurons)`` mean response over the repeats of each image."""
        sums = np.zeros((self.n_images, self.n_neurons), dtype=np.float64)
        np.add.at(sums, self.trial_image, self.responses)
        counts = np.bincount(self.trial_image, minlength=self.n_images)
        return (sums / np.maximum(counts, 1)[:, None]).astype(np.float32)

    def repeats(self) -> np.ndarray:
        """``(n_images,)`` number of trials of each image."""
        return np.bincount(self.trial_image, minlength=self.n_images)

    def select_neurons(self, cell_ids: np.ndarray) -> "ResponseDataset":
        """A copy restricted to ``cell_ids`` (in that order)."""
        cols = neuron_columns(self.cell_ids, cell_ids, f"experiment {self.experiment_id}: no cells")
        return ResponseDataset(
            experiment_id=self.experiment_id, images=self.images, image_ids=self.image_ids,
            trial_image=self.trial_image, responses=self.responses[:, cols],
            blank_responses=self.blank_responses[:, cols], cell_ids=self.cell_ids[cols],
            split=self.split, dropped_cell_ids=self.dropped_cell_ids,
            pixel_mean=self.pixel_mean, pixel_std=self.pixel_std, source=self.source,
            response_kind=self.response_kind)

    def save(self, path: str | Path) -> None:
        """Write atomically as a compressed ``.npz`` (byte-identical for identical data)."""
        arrays = {name: getattr(self, name) for name in _ARRAYS}
        if self.response_kind != response_kind_of(self.source):
            # stored only where ``source`` does not say it: the files of every existing kind keep their bytes
            arrays["response_kind"] = self.response_kind
        write_npz(path, {"experiment_id": self.experiment_id, "pixel_mean": self.pixel_mean,
                         "pixel_std": self.pixel_std, "source": self.source, **arrays})

    @classmethod
    def load(cls, path: str | Path) -> "ResponseDataset":
        """Read a dataset written by :meth:`save`; a missing or inconsistent file is a DatasetError."""
        path = Path(path)
        if not path.is_file():
            raise DatasetError(f"{path}: no such dataset file (run `meiscope extract` first)")
        try:
            with np.load(path, allow_pickle=False) as f:
                data = {k: f[k] for k in f.files}
        except Exception as err:  # zip / format errors of a corrupt file
            raise DatasetError(f"{path}: unreadable dataset file ({err})") from None
        missing = [k for k in (*_ARRAYS, "experiment_id", "pixel_mean", "pixel_std", "source") if k not in data]
        if missing:
            raise DatasetError(f"{path}: missing arrays {missing}")
        ds = cls(experiment_id=int(data["experiment_id"]), pixel_mean=float(data["pixel_mean"]),
                 pixel_std=float(data["pixel_std"]), source=str(data["source"]),
                 response_kind=str(data.get("response_kind", "")), **{k: data[k] for k in _ARRAYS})
        if ds.responses.shape != (len(ds.trial_image), len(ds.cell_ids)):
            raise DatasetError(f"{path}: responses shape {ds.responses.shape} does not match "
                               f"{len(ds.trial_image)} trials x {len(ds.cell_ids)} cells")
        return ds


def neuron_columns(have: np.ndarray, wanted: np.ndarray, missing_message: str) -> np.ndarray:
    """The columns ``(len(wanted),)`` of the ids ``wanted`` in ``have`` (ids ``(n_neurons,)``), in ``wanted``'s
    order; a DatasetError ``"<missing_message> [first missing ids]"`` when some are not there."""
    index = {int(c): i for i, c in enumerate(have)}
    missing = [int(c) for c in wanted if int(c) not in index]
    if missing:
        raise DatasetError(f"{missing_message} {missing[:5]}")
    return np.array([index[int(c)] for c in wanted], dtype=int)


def response_kind_of(source: str) -> str:
    """What the responses of a dataset from ``source`` are when the file does not say:
    spike counts for the Neuropixels sources (``*_neuropixels``), dF/F otherwise."""
    return "counts" if source.endswith("_neuropixels") else "dff"


def dataset_path(results_dir: str | Path, experiment_id: int) -> Path:
    """Where the extract stage puts the dataset of one session."""
    return Path(results_dir) / "responses" / f"{experiment_id}.npz"
