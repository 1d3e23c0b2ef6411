"""The params sections of the two-photon recording: ``allen`` (which real experiments to download)."""

from __future__ import annotations

from dataclasses import dataclass, field

from meiscope.checks import at_least, positive, require


@dataclass(frozen=True)
class AllenConfig:
    """Selection of real Allen Brain Observatory natural-scenes experiments."""

    experiment_ids: list[int] = field(default_factory=list)  # explicit ids win over filters
    targeted_structures: list[str] = field(default_factory=lambda: ["VISp"])
    cre_lines: list[str] = field(default_factory=list)
    imaging_depth_min: int = 0
    imaging_depth_max: int = 1000
    max_experiments: int = 1

    def __post_init__(self) -> None:
        positive(self.max_experiments, "allen.max_experiments")
        for i, experiment_id in enumerate(self.experiment_ids):
            positive(experiment_id, f"allen.experiment_ids[{i}]")
        at_least(self.imaging_depth_min, 0, "allen.imaging_depth_min")
        at_least(self.imaging_depth_max, 0, "allen.imaging_depth_max")
        require(self.imaging_depth_min <= self.imaging_depth_max, "allen.imaging_depth_min",
                 "must be <= allen.imaging_depth_max")
