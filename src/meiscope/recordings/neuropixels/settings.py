"""The params sections of the Neuropixels recording: ``neuropixels`` (real sessions, units, counts) and
``synthetic_neuropixels`` (the simulated session)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from meiscope.checks import at_least, one_of, positive, require, seed


@dataclass(frozen=True)
class NeuropixelsConfig:
    """Selection of Allen Visual Coding - Neuropixels sessions, units and spike-count responses.

    Unit filters follow allensdk's defaults (``UNIT_FILTER_DEFAULTS``: amplitude cutoff <= 0.1,
    presence ratio >= 0.95, ISI violations <= 0.5, quality "good", in-brain); ``null`` disables one.
    """

    session_ids: list[int] = field(default_factory=list)  # explicit ids (e.g. 798911424) win over filters
    session_type: str = "brain_observatory_1.1"  # the stimulus set with natural scenes
    areas: list[str] = field(default_factory=lambda: ["VISp"])  # units kept; sessions must record them all
    max_sessions: int = 1
    count_window: list[float] = field(default_factory=lambda: [0.03, 0.25])  # s after onset
    amplitude_cutoff_maximum: Optional[float] = 0.1
    presence_ratio_minimum: Optional[float] = 0.95
    isi_violations_maximum: Optional[float] = 0.5
    snr_minimum: Optional[float] = None  # not filtered by allensdk; users often cut at 1-2

    def __post_init__(self) -> None:
        positive(self.max_sessions, "neuropixels.max_sessions")
        one_of(self.session_type, ("brain_observatory_1.1", "functional_connectivity"), "neuropixels.session_type")
        require(len(self.areas) > 0, "neuropixels.areas", "must name at least one area (e.g. [VISp])")
        require(len(self.count_window) == 2 and 0 <= self.count_window[0] < self.count_window[1] <= 0.5,
                 "neuropixels.count_window", f"must be [start, stop] seconds with 0 <= start < stop <= 0.5 "
                 f"(got {self.count_window})")
        for i, session_id in enumerate(self.session_ids):
            positive(session_id, f"neuropixels.session_ids[{i}]")
        for key in ("amplitude_cutoff_maximum", "presence_ratio_minimum", "isi_violations_maximum", "snr_minimum"):
            if getattr(self, key) is not None:  # Allen's quality metrics are all >= 0
                at_least(getattr(self, key), 0, f"neuropixels.{key}")


@dataclass(frozen=True)
class SyntheticNeuropixelsConfig:
    """The simulated Neuropixels session: the units are the synthetic cortex's first session's cells.

    Same true neurons (``synthetic.seed``, same scenes), recorded as spikes instead of calcium,
    plus units outside VISp and units that fail Allen's quality metrics.
    """

    session_id: int = 990000001
    scene_repeats: int = 50  # natural scenes and the blank (Allen: 50)
    grating_repeats: int = 50  # static gratings (Allen: ~50)
    gabor_repeats: int = 15  # Gabor patches per (x, y, orientation) (Allen: 15)
    baseline_rate_hz: list[float] = field(default_factory=lambda: [0.5, 8.0])  # per unit, log-uniform
    refractory_ms: float = 2.0
    other_area_units: int = 60  # units in CA1 and LP: they do not respond to the screen
    poor_units: int = 40  # units that fail a quality metric (the unit filters must drop them)
    spontaneous_s: float = 300.0
    seed: int = 0

    def __post_init__(self) -> None:
        for key in ("scene_repeats", "grating_repeats", "gabor_repeats"):
            require(getattr(self, key) >= 2, f"synthetic_neuropixels.{key}", "must be >= 2 (reliability needs repeats)")
        require(len(self.baseline_rate_hz) == 2 and 0 < self.baseline_rate_hz[0] <= self.baseline_rate_hz[1],
                 "synthetic_neuropixels.baseline_rate_hz", f"must be [low, high] with 0 < low <= high "
                 f"(got {self.baseline_rate_hz})")
        require(self.refractory_ms >= 0, "synthetic_neuropixels.refractory_ms", "must be >= 0")
        for key in ("other_area_units", "poor_units"):
            at_least(getattr(self, key), 0, f"synthetic_neuropixels.{key}")
        require(self.spontaneous_s >= 0, "synthetic_neuropixels.spontaneous_s", "must be >= 0")
        positive(self.session_id, "synthetic_neuropixels.session_id")
        seed(self.seed, "synthetic_neuropixels.seed")
