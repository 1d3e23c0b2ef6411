"""The params sections of the Neuropixels recording: ``neuropixels`` (real sessions, units, counts) and
``synthetic_neuropixels`` (the simulated session)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

from meiscope.checks import at_least, one_of, positive, require, seed

# the session's other stimuli the model can train on beside the natural scenes (recordings/neuropixels/training.py)
TRAINABLE_STIMULI = ("static_gratings", "flashes", "natural_movie_one", "natural_movie_three", "drifting_gratings",
                     "gabors")


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
    # the other stimuli that train the model too (any of TRAINABLE_STIMULI; [] = natural scenes only)
    training_stimuli: list[str] = field(default_factory=lambda: list(TRAINABLE_STIMULI))

    def __post_init__(self) -> None:
        positive(self.max_sessions, "neuropixels.max_sessions")
        one_of(self.session_type, ("brain_observatory_1.1", "functional_connectivity"), "neuropixels.session_type")
        require(len(self.areas) > 0, "neuropixels.areas", "must name at least one area (e.g. [VISp])")
        require(len(self.count_window) == 2 and 0 <= self.count_window[0] < self.count_window[1] <= 0.5,
                 "neuropixels.count_window", f"must be [start, stop] seconds with 0 <= start < stop <= 0.5 "
                 f"(got {self.count_window})")
        for i, session_id in enumerate(self.session_ids):
            positive(session_id, f"neuropixels.session_ids[{i}]")
        for name in self.training_stimuli:
            one_of(name, TRAINABLE_STIMULI, "neuropixels.training_stimuli")
        require(len(set(self.training_stimuli)) == len(self.training_stimuli), "neuropixels.training_stimuli",
                f"names a stimulus twice (got {self.training_stimuli})")
        for key in ("amplitude_cutoff_maximum", "presence_ratio_minimum", "isi_violations_maximum", "snr_minimum"):
            if getattr(self, key) is not None:  # Allen's quality metrics are all >= 0
                at_least(getattr(self, key), 0, f"neuropixels.{key}")


def _range(value: float, low: float, high: float, key: str) -> None:
    """``value`` must be finite and in ``[low, high]``."""
    require(math.isfinite(value) and low <= value <= high, key, f"must be in [{low}, {high}] (got {value})")


def _pair(values: list[float], low: float, high: float, key: str) -> None:
    """``values`` must be ``[a, b]`` with ``low <= a <= b <= high`` (finite)."""
    require(len(values) == 2 and all(math.isfinite(v) for v in values) and low <= values[0] <= values[1] <= high,
            key, f"must be [low, high] with {low} <= low <= high <= {high} (got {values})")


@dataclass(frozen=True)
class SyntheticNeuropixelsConfig:
    """The simulated Neuropixels session: its VISp units are the synthetic cortex's first session's cells.

    Same true neurons (``synthetic.seed``, same scenes), recorded as spikes instead of calcium on six
    probes, with units outside VISp, units that fail Allen's quality metrics, heavy-tailed rates,
    over-dispersed counts, running, onset transients, invalid intervals and the whole Brain
    Observatory 1.1 schedule. Each value's basis is in params.yaml and docs/data-sources.md.
    """

    session_id: int = 990000001
    scene_repeats: int = 50  # natural scenes and the blank (Allen: 50)
    grating_repeats: int = 50  # static gratings (Allen: ~50)
    gabor_repeats: int = 15  # Gabor patches per (x, y, orientation) (Allen: 15)
    drifting_grating_repeats: int = 15  # 8 directions x 5 TF (Allen: 15)
    movie_one_repeats: int = 20  # Allen: 20
    movie_three_repeats: int = 10  # Allen: 10
    movie_one_frames: int = 900  # 30 Hz (Allen: 900)
    movie_three_frames: int = 3600  # Allen: 3600
    flash_repeats: int = 75  # per colour (Allen: ~75)
    visp_units: int = 200  # VISp units recorded, at most synthetic.n_cells (798911424: 200)
    visp_responsive_fraction: float = 0.8  # share of the VISp units that respond to the screen (replaces the
    # cortex's ``kinds.unresponsive``; 798911424: 70.2% of passing VISp units have a significant Gabor-patch map)
    visp_pass_fraction: float = 0.47  # share passing allensdk's default filters (798911424: 94 / 200)
    amplitude_cutoff_fail: float = 0.335  # share of units failing each metric (798911424: 67, 33, 44 of 200)
    presence_ratio_fail: float = 0.165
    isi_violations_fail: float = 0.22
    other_area_units: int = 8  # units in each area segment of a probe outside VISp
    channels_per_probe: int = 384  # Neuropixels 1.0 (allensdk reads every channel once per probe: tests use fewer)
    rate_median_hz: float = 2.5  # spontaneous rates: log-normal (median, log s.d.)
    rate_log_sd: float = 1.0
    fast_spiking_fraction: float = 0.15  # fast-spiking units, their rates log-uniform in fast_spiking_rate_hz
    fast_spiking_rate_hz: list[float] = field(default_factory=lambda: [10.0, 50.0])
    shared_gain_sd: float = 0.3  # log s.d. of the population's gain per presentation (half slow)
    shared_gain_tau_s: float = 20.0
    unit_gain_sd: float = 0.45  # log s.d. of each unit's own gain per presentation
    running_modulation: list[float] = field(default_factory=lambda: [-0.2, 1.0])  # rate change when running
    transient_s: float = 0.05  # onset transient: its length after the response latency...
    transient_gain: list[float] = field(default_factory=lambda: [0.5, 2.0])  # ...and its extra rate / rate
    invalid_intervals: int = 3  # intervals in invalid_times (tags cycle: stimulus, probe A, probe F)
    invalid_interval_s: float = 5.0
    refractory_ms: float = 2.0
    spontaneous_s: float = 300.0
    seed: int = 0

    def __post_init__(self) -> None:
        key = "synthetic_neuropixels."
        for name in ("scene_repeats", "grating_repeats", "gabor_repeats", "drifting_grating_repeats",
                     "movie_one_repeats", "movie_three_repeats", "flash_repeats"):
            require(getattr(self, name) >= 2, key + name, "must be >= 2 (reliability needs repeats)")
        for name in ("movie_one_frames", "movie_three_frames", "visp_units"):
            positive(getattr(self, name), key + name)
        _range(self.visp_responsive_fraction, 0.0, 1.0, key + "visp_responsive_fraction")
        _range(self.visp_pass_fraction, 0.0, 1.0, key + "visp_pass_fraction")
        # a unit failing any metric fails the filters, and every failing unit fails at least one metric
        fail = 1.0 - self.visp_pass_fraction
        shares = ("amplitude_cutoff_fail", "presence_ratio_fail", "isi_violations_fail")
        for name in shares:
            value = getattr(self, name)
            require(math.isfinite(value) and 0.0 <= value <= fail + 1e-9, key + name,
                    f"must be in [0, 1 - visp_pass_fraction = {fail:g}] (got {value})")
        total = sum(getattr(self, name) for name in shares)
        require(total >= fail - 1e-9, key + "amplitude_cutoff_fail",
                f"+ presence_ratio_fail + isi_violations_fail ({total:g}) must be at least 1 - visp_pass_fraction "
                f"({fail:g}): every unit that fails the filters fails one of them")
        at_least(self.other_area_units, 0, key + "other_area_units")
        # each probe needs one channel above the brain and one per area segment (four) below it
        require(8 <= self.channels_per_probe <= 384, key + "channels_per_probe",
                f"must be in [8, 384] (Neuropixels 1.0 has 384; got {self.channels_per_probe})")
        _range(self.rate_median_hz, 0.01, 100.0, key + "rate_median_hz")
        _range(self.rate_log_sd, 0.0, 3.0, key + "rate_log_sd")
        _range(self.fast_spiking_fraction, 0.0, 1.0, key + "fast_spiking_fraction")
        _pair(self.fast_spiking_rate_hz, 0.01, 200.0, key + "fast_spiking_rate_hz")
        _range(self.shared_gain_sd, 0.0, 2.0, key + "shared_gain_sd")
        _range(self.shared_gain_tau_s, 0.01, 1e4, key + "shared_gain_tau_s")
        _range(self.unit_gain_sd, 0.0, 2.0, key + "unit_gain_sd")
        _pair(self.running_modulation, -1.0, 10.0, key + "running_modulation")
        _range(self.transient_s, 0.0, 0.2, key + "transient_s")
        _pair(self.transient_gain, 0.0, 20.0, key + "transient_gain")
        at_least(self.invalid_intervals, 0, key + "invalid_intervals")
        _range(self.invalid_interval_s, 0.0, 60.0, key + "invalid_interval_s")
        _range(self.refractory_ms, 0.0, 10.0, key + "refractory_ms")
        _range(self.spontaneous_s, 0.0, 1e4, key + "spontaneous_s")
        positive(self.session_id, key + "session_id")
        seed(self.seed, key + "seed")
