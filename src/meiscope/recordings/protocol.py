"""What the pipeline needs from a kind of recording: the :class:`Recording` protocol.

A recording kind knows its cache layout (where a session's file lies), how to synthesize and to
download sessions, and how to turn one session into the :class:`~meiscope.dataset.ResponseDataset`
that every later stage reads, with any other training data of the same cells beside it (a
:class:`~meiscope.model.source_protocol.TrainingSource`, in the file :meth:`Recording.training_extras_path`
names). ``data.recording`` picks the kind
(:func:`meiscope.recordings.recording_of`) and ``data.source`` picks synthetic or real data within
it; the stages never ask which kind they got.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Protocol

if TYPE_CHECKING:
    import numpy as np

    from meiscope.config import Params

    from meiscope.dataset import ResponseDataset
    from meiscope.model.source_protocol import TrainingSource
    from meiscope.ranking import AllenMetrics


class Recording(Protocol):
    """What the pipeline needs from a recording kind (the methods of :class:`TwoPhoton`)."""

    name: str  # the value of data.recording
    label: str  # what its responses are, as the report names them
    sections: dict[str, type]  # the params.yaml sections it owns: {name: its dataclass (settings.py)}
    synthetic_dir_key: str  # the data.* key of the folder its synthetic sessions go to
    download_dir_key: str  # the data.* key of the folder its real sessions are downloaded to

    def find_sessions(self, cache_dir: Path) -> list[int]: ...
    def studied_sessions(self, cache_dir: Path) -> list[int]: ...
    def session_file(self, cache_dir: Path, session_id: int) -> Path: ...
    def synthesize(self, params: Params, folder: Path) -> list[int]: ...
    def synthetic_ids(self, params: Params) -> list[int]: ...
    def synthetic_stamp(self, params: Params) -> dict: ...
    def download(self, params: Params, folder: Path) -> list[int]: ...
    def extract(self, params: Params, cache_dir: Path, session_id: int, source: str,
                dataset_path: Path) -> "ResponseDataset": ...
    def allen_metrics(self, cache_dir: Path, session_id: int) -> "Optional[AllenMetrics]": ...
    def training_extras(self, dataset_path: Path, cell_ids: "np.ndarray") -> "Optional[TrainingSource]":
        """Other training data of ``cell_ids`` ``(n,)`` beside the dataset, or None (scenes only)."""
        ...
    def training_extras_path(self, dataset_path: Path) -> Optional[Path]:
        """Where this kind keeps its other training data beside ``dataset_path`` (None: it has none)."""
        ...
    def training_stimuli(self, params: Params) -> tuple[str, ...]:
        """The stimuli the model trains on, as Allen names them (the report says which)."""
        ...
    def check_optimal_gabors(self, params: Params, cache_dir: Path, experiment_id: int, dataset_path: Path,
                             cell_ids: "np.ndarray", image_shape: tuple[int, int], optimal_params: "np.ndarray",
                             out: Path) -> dict[str, Any]:
        """Check the optimal Gabors ``(n, n_params)`` of ``cell_ids`` against stimuli this recording presented;
        write any table or figure into ``out``; return the metrics (empty: nothing to check)."""
        ...


class ScenesOnly:
    """Defaults of a recording studied on its natural scenes alone: every session can be studied, and
    nothing but the scenes trains the model (the container overrides these)."""

    sections: dict[str, type] = {}
    synthetic_dir_key = "synthetic_dir"
    download_dir_key = "allen_dir"

    def studied_sessions(self, cache_dir: Path) -> list[int]:
        """The sessions a study can take (``extract.experiment_id`` or the smallest of them)."""
        return self.find_sessions(cache_dir)

    def training_extras(self, dataset_path: Path, cell_ids: "np.ndarray") -> "Optional[TrainingSource]":
        """More training data for the studied cells beside the dataset (none: natural scenes only)."""
        return None

    def training_extras_path(self, dataset_path: Path) -> Optional[Path]:
        """Where more training data would lie beside the dataset (nowhere: natural scenes only)."""
        return None

    def training_stimuli(self, params: "Params") -> tuple[str, ...]:
        """Natural scenes alone."""
        return ("natural_scenes",)

    def check_optimal_gabors(self, params: "Params", cache_dir: Path, experiment_id: int, dataset_path: Path,
                             cell_ids: "np.ndarray", image_shape: tuple[int, int], optimal_params: "np.ndarray",
                             out: Path) -> dict[str, Any]:
        """No presented stimulus to check the optimal Gabors against."""
        return {}
