"""Where every stage reads and writes, relative to the repository root (mirrors dvc.yaml)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from meiscope.config import Params


@dataclass(frozen=True)
class Layout:
    """The project's folders. ``root`` is the folder holding params.yaml."""

    root: Path
    cache_dir_name: str = "data/allen"

    @classmethod
    def from_params(cls, params: Params, root: Path) -> "Layout":
        return cls(root=Path(root), cache_dir_name=params.data.cache_dir)

    @property
    def cache_dir(self) -> Path:
        """The Allen-layout cache (real downloads or the synthetic cortex)."""
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
