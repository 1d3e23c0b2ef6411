"""The params sections of the experiment-container recording: ``container`` (what trains the model) and
``synthetic_container`` (the simulated container)."""

from __future__ import annotations

from dataclasses import dataclass, field

from meiscope.checks import fraction, one_of, positive, require


CONTAINER_SESSIONS = ("A", "B", "C")  # Allen's three_session_A / B / C of one experiment container
CONTAINER_STIMULI = ("natural_scenes", "static_gratings", "natural_movies", "locally_sparse_noise")


@dataclass(frozen=True)
class ContainerConfig:
    """What the model trains on when ``data.recording: container`` (README: Every stimulus the cells saw).

    The natural scenes of session B are always the studied dataset (ranking, splits, test scenes);
    the other stimuli of the same cells, in the container's other sessions, add training data.
    """

    sessions: list[str] = field(default_factory=lambda: list(CONTAINER_SESSIONS))
    stimuli: list[str] = field(default_factory=lambda: list(CONTAINER_STIMULI))

    def __post_init__(self) -> None:
        for name in self.sessions:
            one_of(name, CONTAINER_SESSIONS, "container.sessions")
        require("B" in self.sessions, "container.sessions", "must include B (the natural scenes' session)")
        for name in self.stimuli:
            one_of(name, CONTAINER_STIMULI, "container.stimuli")
        require("natural_scenes" in self.stimuli, "container.stimuli",
                 "must include natural_scenes (the studied responses and their test split)")


@dataclass(frozen=True)
class SyntheticContainerConfig:
    """The simulated experiment container: the synthetic cortex's cells in sessions A, B and C.

    Session B's experiment ids are ``synthetic.first_experiment_id + i`` (as without a container);
    A and C add ``session_id_step`` and twice it. Sizes default to Allen's.
    """

    match_fraction: float = 0.85  # share of the container's cells also found in sessions A and C
    static_grating_repeats: int = 50  # 120 conditions + blank (Allen: ~50)
    drifting_grating_repeats: int = 15  # 40 conditions + blank, 2 s + 1 s gray (Allen: 15)
    sparse_noise_frames: int = 8880  # 250 ms each (37 min; our choice, not checked against Allen's count)
    movie_repeats: int = 10  # every movie (Allen: 10)
    movie_one_frames: int = 900  # 30 Hz (Allen: 900 / 900 / 3600)
    movie_two_frames: int = 900
    movie_three_frames: int = 3600
    session_id_step: int = 10_000_000

    def __post_init__(self) -> None:
        fraction(self.match_fraction, "synthetic_container.match_fraction", low_open=True)
        for key in ("static_grating_repeats", "drifting_grating_repeats", "movie_repeats"):
            require(getattr(self, key) >= 2, f"synthetic_container.{key}", "must be >= 2 (reliability needs repeats)")
        for key in ("sparse_noise_frames", "movie_one_frames", "movie_two_frames", "movie_three_frames",
                    "session_id_step"):
            positive(getattr(self, key), f"synthetic_container.{key}")
