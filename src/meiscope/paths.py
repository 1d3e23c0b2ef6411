"""Where every stage reads and writes, relative to the repository root (mirrors dvc.yaml)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from meiscope.config import Params


@dataclass(frozen=True)
class Layout:
    """The project's folders. ``root`` is the folder holding params.yaml."""

    root: Path
    source: str = "synthetic"
    cache_dir_name: str = "data/synthetic"  # data.cache_dir_name: one folder per (source, recording)

    @classmethod
    def from_params(cls, params: Params, root: Path) -> "Layout":
        return cls(root=Path(root), source=params.data.source, cache_dir_name=params.data.cache_dir_name)

    @property
    def cache_dir(self) -> Path:
        """The cache of the configured ``data.source`` and ``data.recording``: what the stages read."""
        return self.root / self.cache_dir_name

    @property
    def results(self) -> Path:
        return self.root / "results"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics"

    def dataset(self, experiment_id: int) -> Path:
        return self.results / "responses" / f"{experiment_id}.npz"

    @property
    def study_file(self) -> Path:
        """Names the session that the later stages study (written by extract)."""
        return self.results / "responses" / "study.json"

    @property
    def ranking(self) -> Path:
        return self.results / "ranking"

    @property
    def sessions(self) -> Path:
        """The other sessions that share the model's core (``sessions.shared``), one folder each."""
        return self.results / "sessions"

    @property
    def sessions_index(self) -> Path:
        """Names the studied session and the sessions sharing its core (written by ``meiscope sessions``)."""
        return self.sessions / "index.json"

    def session_dataset(self, experiment_id: int) -> Path:
        """The dataset of a session of ``sessions.shared`` (``meiscope extract --session``)."""
        return self.sessions / str(int(experiment_id)) / "responses" / f"{int(experiment_id)}.npz"

    def session_ranking(self, experiment_id: int) -> Path:
        """The ranking folder of a session of ``sessions.shared`` (``meiscope rank --session``)."""
        return self.sessions / str(int(experiment_id)) / "ranking"

    @property
    def ensemble(self) -> Path:
        return self.root / "models" / "ensemble"

    @property
    def train(self) -> Path:
        return self.results / "train"

    @property
    def tune(self) -> Path:
        return self.results / "tune"

    @property
    def mei(self) -> Path:
        return self.results / "mei"

    @property
    def gabor(self) -> Path:
        return self.results / "gabor"

    @property
    def validate(self) -> Path:
        return self.results / "validate"

    @property
    def report(self) -> Path:
        return self.root / "report"

    def metrics_file(self, stage: str) -> Path:
        return self.metrics / f"{stage}.json"
