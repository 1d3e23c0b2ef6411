"""Typed configuration: ``params.yaml`` parsed once into frozen dataclasses.

Every stage receives the section it needs (``params.train``, ``params.mei``, ...) as an
explicit argument. Unknown keys, wrong types and out-of-range values are refused with a
one-line :class:`ConfigError` that names the key, before any work starts.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from meiscope.checks import (ConfigError, at_least, fits_memory, fraction, one_of, positive, require,  # noqa: F401
                             seed)  # (ConfigError: re-exported)


# --------------------------------------------------------------------------------------
# data sources
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DataConfig:
    """Where the raw sessions come from, and the two allensdk-layout caches (never mixed).

    Synthetic sessions and downloaded Allen sessions live in separate folders, so that writing
    the synthetic cortex can never touch a download (hundreds of MB each).
    """

    source: str = "synthetic"  # synthetic | allen
    recording: str = "two_photon"  # two_photon (Brain Observatory, dF/F) | neuropixels (spike counts) | container
    allen_dir: str = "data/allen"  # real Allen downloads (meiscope download)
    synthetic_dir: str = "data/synthetic"  # the synthetic cortex (meiscope synthesize)
    neuropixels_dir: str = "data/allen_ecephys"  # real Neuropixels downloads (EcephysProjectCache layout)
    synthetic_neuropixels_dir: str = "data/synthetic_ecephys"  # the synthetic Neuropixels session
    synthetic_container_dir: str = "data/synthetic_container"  # the synthetic experiment container (sessions A/B/C)

    def __post_init__(self) -> None:
        one_of(self.source, ("synthetic", "allen"), "data.source")
        from meiscope.recordings import RECORDINGS  # the recording kinds (they read these settings)

        one_of(self.recording, tuple(RECORDINGS), "data.recording")
        folders = {"allen_dir": self.allen_dir, "synthetic_dir": self.synthetic_dir,
                   "neuropixels_dir": self.neuropixels_dir, "synthetic_neuropixels_dir": self.synthetic_neuropixels_dir,
                   "synthetic_container_dir": self.synthetic_container_dir}
        for key, folder in folders.items():
            require(folder.strip() != "", f"data.{key}", "must be a folder name")
        seen: dict[Path, str] = {}
        for key, folder in folders.items():
            require(Path(folder) not in seen, f"data.{key}",
                     f"must differ from data.{seen.get(Path(folder))} ({folder}): each source has its own folder, "
                     "so synthetic data never shares a folder with downloads")
            seen[Path(folder)] = key

    @property
    def synthetic_folder(self) -> str:
        """Where ``meiscope synthesize`` writes sessions of ``recording`` (the key its kind names)."""
        from meiscope.recordings import RECORDINGS

        return getattr(self, RECORDINGS[self.recording].synthetic_dir_key)

    @property
    def download_folder(self) -> str:
        """Where ``meiscope download`` puts real sessions of ``recording`` (the key its kind names)."""
        from meiscope.recordings import RECORDINGS

        return getattr(self, RECORDINGS[self.recording].download_dir_key)

    @property
    def cache_dir_name(self) -> str:
        """The folder the stages read: one per (source, recording)."""
        return self.synthetic_folder if self.source == "synthetic" else self.download_folder


@dataclass(frozen=True)
class CellKindFractions:
    """Share of each synthetic cell kind (the fields are :data:`meiscope.synthetic.population.KINDS`); they sum to 1."""

    simple: float = 0.14
    complex: float = 0.12
    conjunction: float = 0.09
    centre_surround: float = 0.0  # outside the Gabor family (the out_of_family profile sets them)
    suppressed: float = 0.0
    unresponsive: float = 0.65

    def __post_init__(self) -> None:
        names = [f.name for f in dataclasses.fields(self)]
        for name in names:
            fraction(getattr(self, name), f"synthetic.kinds.{name}")
        total = sum(getattr(self, name) for name in names)
        require(abs(total - 1) < 1e-6, "synthetic.kinds", f"fractions must sum to 1 (got {total:.3f})")


# Named synthetic cortices (``synthetic.profile``): each supplies defaults for the keys of the
# ``synthetic`` section it lists; keys set in params.yaml win over the profile's. Plain data, so a new
# element of the cortex adds its key here.
SYNTHETIC_PROFILES: dict[str, dict[str, Any]] = {
    "gabor_family": {},  # the cortex built in the model's image: every cell one or two Gabor subunits
    "out_of_family": {
        "kinds": {"simple": 0.10, "complex": 0.09, "conjunction": 0.06, "centre_surround": 0.05,
                  "suppressed": 0.05, "unresponsive": 0.65},
        "rf_centre_range": [0.0, 1.0],
        # dynamics, calcium, gaze, drift and fresh scenes outside the model's family (params.yaml: basis)
        "temporal_peak_ms": [40.0, 120.0], "temporal_biphasic": 0.3, "adaptation_strength": 1.0,
        "adaptation_tau_s": 2.0, "spike_amplitude_sd": 0.5, "indicator_hill_n": 2.3, "indicator_kd_spikes": 10.0,
        "saccade_fraction": 0.1, "saccade_amplitude_deg": [2.0, 8.0], "fresh_scene_sources": "unseen",
        "drift_rf_deg": 2.0, "drift_orientation_deg": 10.0, "mismatch_fraction": 0.05,
    },
}


def _range(value: list[float], key: str, low: float, high: float) -> None:
    """``value`` is ``[a, b]`` with ``low <= a <= b <= high``."""
    require(len(value) == 2 and low <= value[0] <= value[1] <= high, key,
            f"must be [low, high] with {low:g} <= low <= high <= {high:g} (got {value})")


@dataclass(frozen=True)
class SyntheticConfig:
    """The simulated V1 population and recording (the offline default data source)."""

    seed: int = 0
    n_sessions: int = 1
    first_experiment_id: int = 900000001
    n_cells: int = 300
    n_images: int = 118
    repeats: int = 50
    image_height: int = 918
    image_width: int = 1174
    profile: str = "gabor_family"  # SYNTHETIC_PROFILES: the defaults of the keys below (set keys win)
    kinds: CellKindFractions = field(default_factory=CellKindFractions)
    rf_centre_range: list[float] = field(default_factory=lambda: [0.2, 0.8])  # RF centre, fraction of each axis
    centre_surround_ratio: list[float] = field(default_factory=lambda: [1.5, 3.0])  # DoG surround / centre s.d.
    centre_surround_on_fraction: float = 0.5  # ON-centre share of the centre-surround cells
    suppressed_ratio: list[float] = field(default_factory=lambda: [2.0, 4.0])  # surround / centre Gabor s.d.
    suppressed_strength: list[float] = field(default_factory=lambda: [0.5, 1.0])  # share of the full-field response cancelled
    rf_sigma_deg: list[float] = field(default_factory=lambda: [4.0, 8.0])  # Gaussian envelope
    peak_rate_hz: list[float] = field(default_factory=lambda: [1.0, 30.0])  # log-uniform
    saturation: list[float] = field(default_factory=lambda: [2.0, 4.0])  # ceiling / best scene, log-uniform
    baseline_rate_hz: float = 0.5
    shared_gain_sd: float = 0.3  # s.d. of the population's shared log-gain per presentation
    shared_gain_tau_s: float = 20.0  # time constant of its slow half
    spike_amplitude_dff: float = 0.15  # dF/F of one spike, GCaMP6f-like
    tau_decay_s: float = 0.3
    tau_rise_s: float = 0.05
    noise_std_dff: float = 0.05
    neuropil_r: float = 0.7  # mean true contamination ratio
    neuropil_r_sd: float = 0.1  # its spread over cells
    neuropil_r_error_sd: float = 0.1  # error of the pipeline's per-cell estimate
    spontaneous_s: float = 300.0
    nan_cells: int = 0  # cells whose traces get NaNs (to exercise the extract checks)
    # Outside the model's assumptions (meiscope.synthetic.dynamics; every default reproduces the in-family cortex):
    temporal_peak_ms: list[float] = field(default_factory=lambda: [0.0, 0.0])  # per-cell filter time to peak; [0, 0] off
    temporal_biphasic: float = 0.0  # weight of the filter's negative lobe: sustained / transient = 1 - this
    adaptation_strength: float = 0.0  # divisive adaptation weight (0 = none)
    adaptation_tau_s: float = 1.0  # its time constant
    spike_amplitude_sd: float = 0.0  # log-normal s.d. of the per-cell dF/F of one spike (0 = one amplitude)
    indicator_hill_n: float = 0.0  # Hill coefficient of the indicator (0 = linear calcium -> dF/F)
    indicator_kd_spikes: float = 10.0  # its Kd, as the calcium of this many spikes' peaks
    saccade_fraction: float = 0.0  # share of natural-scene presentations seen after a gaze shift
    saccade_amplitude_deg: list[float] = field(default_factory=lambda: [5.0, 10.0])  # gaze shift size, uniform
    fresh_scene_sources: str = "session"  # fresh scenes: "session" (same photographs) or "unseen" (others only)
    drift_rf_deg: float = 0.0  # container: s.d. of A's / C's RF centre shift from B, per axis (degrees)
    drift_orientation_deg: float = 0.0  # container: s.d. of A's / C's preferred orientation change from B (deg)
    mismatch_fraction: float = 0.0  # container: share of A's / C's cells recorded under another cell's id

    def __post_init__(self) -> None:
        one_of(self.profile, tuple(SYNTHETIC_PROFILES), "synthetic.profile")
        _range(self.rf_centre_range, "synthetic.rf_centre_range", 0.0, 1.0)
        _range(self.centre_surround_ratio, "synthetic.centre_surround_ratio", 1.1, 10.0)
        fraction(self.centre_surround_on_fraction, "synthetic.centre_surround_on_fraction")
        _range(self.suppressed_ratio, "synthetic.suppressed_ratio", 1.1, 10.0)
        _range(self.suppressed_strength, "synthetic.suppressed_strength", 0.0, 2.0)
        for key in ("n_sessions", "n_cells", "repeats", "image_height", "image_width",
                    "tau_decay_s", "tau_rise_s", "spike_amplitude_dff"):
            positive(getattr(self, key), f"synthetic.{key}")
        require(2 <= self.n_images <= 118, "synthetic.n_images", f"must be in [2, 118] (got {self.n_images})")
        require(self.noise_std_dff >= 0, "synthetic.noise_std_dff", "must be >= 0")
        require(len(self.rf_sigma_deg) == 2 and 0 < self.rf_sigma_deg[0] <= self.rf_sigma_deg[1],
                 "synthetic.rf_sigma_deg", "must be [low, high] with 0 < low <= high")
        require(len(self.peak_rate_hz) == 2 and self.baseline_rate_hz < self.peak_rate_hz[0] <= self.peak_rate_hz[1],
                 "synthetic.peak_rate_hz", f"must be [low, high] with baseline_rate_hz ({self.baseline_rate_hz}) "
                 f"< low <= high (got {self.peak_rate_hz})")
        require(len(self.saturation) == 2 and 1 < self.saturation[0] <= self.saturation[1],
                 "synthetic.saturation", f"must be [low, high] with 1 < low <= high (got {self.saturation})")
        require(self.baseline_rate_hz >= 0, "synthetic.baseline_rate_hz", "must be >= 0")
        require(self.shared_gain_sd >= 0, "synthetic.shared_gain_sd", "must be >= 0")
        positive(self.shared_gain_tau_s, "synthetic.shared_gain_tau_s")
        fraction(self.neuropil_r, "synthetic.neuropil_r")
        for key in ("neuropil_r_sd", "neuropil_r_error_sd"):
            require(getattr(self, key) >= 0, f"synthetic.{key}", "must be >= 0")
        require(0 <= self.nan_cells < self.n_cells, "synthetic.nan_cells", "must be in [0, n_cells)")
        seed(self.seed, "synthetic.seed")
        positive(self.first_experiment_id, "synthetic.first_experiment_id")
        self._check_out_of_family()
        at_least(self.spontaneous_s, 0, "synthetic.spontaneous_s")
        # checked before the id range below: a size that cannot fit in memory is the clearer message
        fits_memory(synthetic_memory_bytes(self), "synthetic.n_cells",
                    f"{self.n_cells} cells x {synthetic_frames(self)} frames (synthetic.n_images, .repeats, "
                    f".spontaneous_s) plus {self.n_images} scenes of {self.image_height} x {self.image_width}")
        # cortex.cell_ids_for keeps the cell ids of different sessions apart only up to 10,000 cells
        require(self.n_cells <= MAX_SYNTHETIC_CELLS, "synthetic.n_cells",
                f"must be <= {MAX_SYNTHETIC_CELLS} (cell ids of different sessions would collide; got {self.n_cells})")


    def _check_out_of_family(self) -> None:
        """Range checks of the dynamics, calcium, gaze and fresh-scene settings (all finite)."""
        def ranged(key: str, low: float, high: float) -> None:
            value = getattr(self, key)
            require(isinstance(value, (int, float)) and math.isfinite(value) and low <= value <= high,
                    f"synthetic.{key}", f"must be a number in [{low}, {high}] (got {value!r})")

        peak = self.temporal_peak_ms
        require(len(peak) == 2 and all(isinstance(v, (int, float)) and math.isfinite(v) for v in peak)
                and (peak[0] == peak[1] == 0 or 5 <= peak[0] <= peak[1] <= 500), "synthetic.temporal_peak_ms",
                f"must be [0, 0] (no filter) or [low, high] ms with 5 <= low <= high <= 500 (got {peak})")
        ranged("temporal_biphasic", 0.0, 0.95)
        ranged("adaptation_strength", 0.0, 10.0)
        ranged("adaptation_tau_s", 0.01, 60.0)
        ranged("spike_amplitude_sd", 0.0, 2.0)
        require(isinstance(self.indicator_hill_n, (int, float)) and (self.indicator_hill_n == 0
                or 1.0 <= self.indicator_hill_n <= 4.0), "synthetic.indicator_hill_n",
                f"must be 0 (linear) or in [1, 4] (got {self.indicator_hill_n!r})")
        ranged("indicator_kd_spikes", 0.5, 1000.0)
        ranged("saccade_fraction", 0.0, 1.0)
        amp = self.saccade_amplitude_deg
        require(len(amp) == 2 and all(isinstance(v, (int, float)) and math.isfinite(v) for v in amp)
                and 0 <= amp[0] <= amp[1] <= 40, "synthetic.saccade_amplitude_deg",
                f"must be [low, high] degrees with 0 <= low <= high <= 40 (got {amp})")
        one_of(self.fresh_scene_sources, ("session", "unseen"), "synthetic.fresh_scene_sources")
        ranged("drift_rf_deg", 0.0, 20.0)
        ranged("drift_orientation_deg", 0.0, 90.0)
        ranged("mismatch_fraction", 0.0, 0.5)


# Settings outside the model's family (meiscope.synthetic.dynamics, the indicator, drift, gaze, fresh scenes):
# the ground truth's config leaves them out at their in-family defaults, so an in-family cortex keeps its bytes.
OUT_OF_FAMILY_SETTINGS = ("temporal_peak_ms", "temporal_biphasic", "adaptation_strength", "adaptation_tau_s",
                          "spike_amplitude_sd", "indicator_hill_n", "indicator_kd_spikes", "saccade_fraction",
                          "saccade_amplitude_deg", "fresh_scene_sources", "drift_rf_deg", "drift_orientation_deg",
                          "mismatch_fraction",
                          # the cell kinds outside the Gabor family (meiscope.synthetic.population, synthetic.profile)
                          "profile", "rf_centre_range", "centre_surround_ratio", "centre_surround_on_fraction",
                          "suppressed_ratio", "suppressed_strength")


def recorded_config(cfg: Any) -> dict[str, Any]:
    """``asdict(cfg)`` without the :data:`OUT_OF_FAMILY_SETTINGS` at their defaults, nor the kinds whose share is 0
    by default and here (the stamp of the data and their ground truth record it)."""
    defaults = type(cfg)()
    out = {key: value for key, value in dataclasses.asdict(cfg).items()
           if key not in OUT_OF_FAMILY_SETTINGS or value != getattr(defaults, key)}
    if isinstance(out.get("kinds"), dict):
        default_kinds = CellKindFractions()
        out["kinds"] = {k: v for k, v in out["kinds"].items() if v != 0 or getattr(default_kinds, k) != 0}
    return out


# The synthetic session's schedule (meiscope.synthetic.cortex.make_schedule): 0.25 s presentations at 30 Hz,
# (n_images + 1) x repeats scenes and blanks, four 30 s blocks of other stimuli and the spontaneous epoch.
_PRESENTATION_S, _FRAME_RATE_HZ, _OTHER_BLOCKS_S = 0.25, 30.0, 4 * 30.0
# float64 (n_cells, n_frames) arrays alive together at the peak of fluorescence.simulate_traces (calcium,
# neuropil, neighbours, local noise, the bincount buffer, the output traces): a lower bound, not a promise
_TRACE_ARRAYS = 6
MAX_SYNTHETIC_CELLS = 10_000


def synthetic_frames(cfg: SyntheticConfig) -> int:
    """Two-photon frames of one synthetic session (as cortex.make_schedule lays it out)."""
    segments = ((cfg.n_images + 1) * cfg.repeats + round(_OTHER_BLOCKS_S / _PRESENTATION_S)
                + round(max(cfg.spontaneous_s, 0.0) / _PRESENTATION_S))
    return int(segments * _PRESENTATION_S * _FRAME_RATE_HZ)


def synthetic_memory_bytes(cfg: SyntheticConfig) -> float:
    """A lower bound of the memory ``meiscope synthesize`` needs for one session of ``cfg`` (bytes)."""
    traces = _TRACE_ARRAYS * 8.0 * cfg.n_cells * synthetic_frames(cfg)
    scenes = 2 * 4.0 * cfg.n_images * cfg.image_height * cfg.image_width  # float32 scenes + one working copy
    return traces + scenes


# --------------------------------------------------------------------------------------
# extract: trial responses and model images
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SplitConfig:
    """Split by image (all repeats of an image stay together)."""

    val_fraction: float = 0.1
    test_fraction: float = 0.15
    seed: int = 0

    def __post_init__(self) -> None:
        fraction(self.val_fraction, "extract.split.val_fraction", low_open=True)
        fraction(self.test_fraction, "extract.split.test_fraction", low_open=True)
        seed(self.seed, "extract.split.seed")
        require(self.val_fraction + self.test_fraction < 1, "extract.split",
                 "val_fraction + test_fraction must be < 1")


@dataclass(frozen=True)
class ExtractConfig:
    """Per-trial responses (frames relative to stimulus onset) and model-space images."""

    experiment_id: Optional[int] = None  # the session later stages study; None = smallest id
    response_window: list[int] = field(default_factory=lambda: [1, 8])
    baseline_window: list[int] = field(default_factory=lambda: [-2, 0])
    crop: list[float] = field(default_factory=lambda: [0.0, 1.0, 0.0, 1.0])  # top, bottom, left, right
    image_height: int = 36
    image_width: int = 46
    split: SplitConfig = field(default_factory=SplitConfig)

    def __post_init__(self) -> None:
        rw, bw = self.response_window, self.baseline_window
        require(len(rw) == 2 and 0 <= rw[0] < rw[1], "extract.response_window",
                 f"must be [start, stop) frames after onset with 0 <= start < stop (got {rw})")
        require(len(bw) == 2 and bw[0] < bw[1] <= 0, "extract.baseline_window",
                 f"must be [start, stop) frames before onset with start < stop <= 0 (got {bw})")
        c = self.crop
        require(len(c) == 4 and 0 <= c[0] < c[1] <= 1 and 0 <= c[2] < c[3] <= 1, "extract.crop",
                 f"must be [top, bottom, left, right] fractions with top < bottom, left < right (got {c})")
        for key in ("image_height", "image_width"):
            require(getattr(self, key) >= 8, f"extract.{key}", f"must be >= 8 (got {getattr(self, key)})")
        if self.experiment_id is not None:
            positive(self.experiment_id, "extract.experiment_id")


# --------------------------------------------------------------------------------------
# sessions: many sessions, one core
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SessionsConfig:
    """The other sessions whose cells train the model's core together with the studied session's.

    Each listed session gets its own extract and rank (DVC ``extract-session@<id>`` /
    ``rank-session@<id>``: its cells are ranked and selected on their own) and its own readout;
    the core is shared. The studied session (``extract.experiment_id``) is always in and is not
    listed. Ids are listed explicitly because DVC needs the stage list before any data is read.
    """

    shared: list[int] = field(default_factory=list)  # experiment ids; [] = the studied session alone

    def __post_init__(self) -> None:
        for i, experiment_id in enumerate(self.shared):
            require(experiment_id > 0, f"sessions.shared[{i}]", f"must be an experiment id > 0 (got {experiment_id})")
        repeated = sorted({e for e in self.shared if self.shared.count(e) > 1})
        require(not repeated, "sessions.shared", f"lists {repeated} more than once")


# --------------------------------------------------------------------------------------
# rank
# --------------------------------------------------------------------------------------
RANK_METRICS = ("reliability", "explainable_var", "oracle_corr", "frac_sig_trials", "peak_response")


@dataclass(frozen=True)
class RankConfig:
    """How neurons are scored, ordered and selected."""

    metric: str = "oracle_corr"
    top_k: Optional[int] = None  # keep at most this many (after thresholds); None = all passing
    min_reliability: Optional[float] = 0.3
    max_p_anova: Optional[float] = 0.001
    min_frac_sig_trials: Optional[float] = None
    n_splits: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        one_of(self.metric, RANK_METRICS, "rank.metric")
        if self.top_k is not None:
            positive(self.top_k, "rank.top_k")
        positive(self.n_splits, "rank.n_splits")
        if self.max_p_anova is not None:
            fraction(self.max_p_anova, "rank.max_p_anova")
        if self.min_reliability is not None:  # a correlation between halves of the repeats
            require(-1 <= self.min_reliability <= 1, "rank.min_reliability",
                    f"must be in [-1, 1] (got {self.min_reliability})")
        if self.min_frac_sig_trials is not None:
            fraction(self.min_frac_sig_trials, "rank.min_frac_sig_trials")
        seed(self.seed, "rank.seed")


# --------------------------------------------------------------------------------------
# model and training
# --------------------------------------------------------------------------------------
READOUTS = ("gaussian", "factorized")
LOSSES = ("auto", "mse", "poisson")  # auto: poisson for spike counts, mse for dF/F (can be negative)


@dataclass(frozen=True)
class ModelConfig:
    """Shared convolutional core + per-neuron readout. The tune stage overrides these."""

    layers: int = 3
    channels: list[int] = field(default_factory=lambda: [16, 16, 16])  # one entry per layer
    first_kernel: int = 9
    hidden_kernel: int = 5
    depth_separable: bool = False
    batch_norm: bool = True
    laplace_weight: float = 0.001  # smoothness penalty on first-layer filters
    readout: str = "gaussian"
    readout_l1: float = 0.001  # sparsity of readout feature weights (and mask, factorized)
    loss: str = "auto"

    def __post_init__(self) -> None:
        positive(self.layers, "model.layers")
        require(len(self.channels) == self.layers, "model.channels",
                 f"needs one entry per layer ({self.layers}), got {len(self.channels)}")
        for i, c in enumerate(self.channels):
            require(isinstance(c, int) and c > 0, f"model.channels[{i}]", f"must be a positive integer (got {c})")
        for key in ("first_kernel", "hidden_kernel"):
            k = getattr(self, key)
            require(k > 0 and k % 2 == 1, f"model.{key}", f"must be a positive odd integer (got {k})")
        require(self.laplace_weight >= 0, "model.laplace_weight", "must be >= 0")
        require(self.readout_l1 >= 0, "model.readout_l1", "must be >= 0")
        one_of(self.readout, READOUTS, "model.readout")
        one_of(self.loss, LOSSES, "model.loss")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, early stopping and the ensemble."""

    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])  # one ensemble member per seed
    lr: float = 0.01
    batch_size: int = 32
    max_epochs: int = 200
    patience: int = 30
    weight_decay: float = 0.0
    ln_l2: float = 1.0  # ridge penalty of the linear-nonlinear baseline
    architecture_file: str = "results/tune/best_model.yaml"  # tuned model section, if present
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    fresh_scenes: int = 1000  # synthetic data: new scenes on which the models are scored against the truth
    fresh_seed: int = 0
    batches_per_source: int = 2  # data.recording container: batches of each other stimulus per epoch
    source_warmup_epochs: int = 4  # data.recording container: the other stimuli's learning rate ramps up over these epochs
    relocate_epochs: list[int] = field(default_factory=lambda: [15, 40])  # data.recording container: after these epochs,
    # readouts far from where the core's own features predict their neuron best jump there ([] = never)

    def __post_init__(self) -> None:
        require(len(self.seeds) >= 2, "train.seeds",
                 "needs at least 2 seeds (the MEI stage optimises on some models and checks on another)")
        require(len(set(self.seeds)) == len(self.seeds), "train.seeds", "must be distinct")
        for i, value in enumerate(self.seeds):
            seed(value, f"train.seeds[{i}]")
        seed(self.fresh_seed, "train.fresh_seed")
        for key in ("lr", "batch_size", "max_epochs", "patience"):
            positive(getattr(self, key), f"train.{key}")
        require(self.weight_decay >= 0, "train.weight_decay", "must be >= 0")
        require(self.ln_l2 >= 0, "train.ln_l2", "must be >= 0")
        require(self.fresh_scenes >= 0, "train.fresh_scenes", f"must be >= 0 (got {self.fresh_scenes})")
        require(self.batches_per_source >= 0, "train.batches_per_source", "must be >= 0")
        require(self.source_warmup_epochs >= 0, "train.source_warmup_epochs", "must be >= 0")
        require(all(isinstance(e, int) and e >= 1 for e in self.relocate_epochs), "train.relocate_epochs",
                 f"must be a list of epoch numbers >= 1 (got {self.relocate_epochs})")


# --------------------------------------------------------------------------------------
# tune
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SearchSpace:
    """Ranges and choices the Optuna study samples from."""

    layers: list[int] = field(default_factory=lambda: [1, 4])  # [low, high]
    channels: list[int] = field(default_factory=lambda: [8, 32])  # [low, high], log scale, per layer
    first_kernel: list[int] = field(default_factory=lambda: [5, 7, 9, 11])
    hidden_kernel: list[int] = field(default_factory=lambda: [3, 5, 7])
    depth_separable: list[bool] = field(default_factory=lambda: [False, True])
    batch_norm: list[bool] = field(default_factory=lambda: [False, True])
    readout: list[str] = field(default_factory=lambda: ["gaussian", "factorized"])
    readout_l1: list[float] = field(default_factory=lambda: [1e-5, 1e-1])  # log range
    laplace_weight: list[float] = field(default_factory=lambda: [1e-4, 1.0])  # log range
    lr: list[float] = field(default_factory=lambda: [1e-3, 3e-2])  # log range
    batch_size: list[int] = field(default_factory=lambda: [16, 32, 64])

    def __post_init__(self) -> None:
        for key in ("layers", "channels", "readout_l1", "laplace_weight", "lr"):
            r = getattr(self, key)
            require(len(r) == 2 and 0 < r[0] <= r[1], f"tune.space.{key}", f"must be [low, high] with 0 < low <= high (got {r})")
        for key in ("first_kernel", "hidden_kernel", "depth_separable", "batch_norm", "readout", "batch_size"):
            require(len(getattr(self, key)) > 0, f"tune.space.{key}", "must list at least one choice")
        for r in self.readout:
            one_of(r, READOUTS, "tune.space.readout")
        for key in ("first_kernel", "hidden_kernel"):
            for k in getattr(self, key):
                require(k > 0 and k % 2 == 1, f"tune.space.{key}", f"must list positive odd integers (got {k})")
        for b in self.batch_size:
            positive(b, "tune.space.batch_size")


@dataclass(frozen=True)
class TuneConfig:
    """The Optuna architecture search."""

    study_name: str = "meiscope-arch"
    n_trials: int = 6
    epochs: int = 8
    objective: str = "val_corr_to_avg"  # val_corr_to_avg | val_feve
    seed: int = 0
    pruner: str = "median"  # median | none
    pruner_startup_trials: int = 3
    pruner_warmup_epochs: int = 3
    storage: Optional[str] = None  # RDB URL; None = local journal file below
    journal_file: str = ".optuna/journal.log"
    workers: int = 1
    space: SearchSpace = field(default_factory=SearchSpace)

    def __post_init__(self) -> None:
        positive(self.n_trials, "tune.n_trials")
        positive(self.epochs, "tune.epochs")
        positive(self.workers, "tune.workers")
        one_of(self.objective, ("val_corr_to_avg", "val_feve"), "tune.objective")
        one_of(self.pruner, ("median", "none"), "tune.pruner")
        seed(self.seed, "tune.seed")
        at_least(self.pruner_startup_trials, 0, "tune.pruner_startup_trials")
        at_least(self.pruner_warmup_epochs, 0, "tune.pruner_warmup_epochs")


# --------------------------------------------------------------------------------------
# MEI, Gabor, validation
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MeiConfig:
    """Gradient-ascent recipe (defaults after Walker et al. 2019 and sinzlab/mei)."""

    n_starts: int = 2
    steps: int = 200  # the cap: an image stops earlier once converged (converge_tol)
    lr: float = 0.25  # first step's L2 length as a fraction of the norm budget (unit-norm gradient)
    lr_decay: float = 0.1  # smallest step = lr * lr_decay; an image's step halves at each plateau
    blur_sigma: list[float] = field(default_factory=lambda: [1.5, 0.01])  # gradient blur, start -> end
    jitter: int = 0  # max random shift in pixels per step (0 = off)
    norm: Optional[float] = None  # L2 budget in model space; None = norm_fraction x median natural-image norm
    norm_fraction: float = 0.25  # a whole scene's contrast concentrated in one receptive field would clip
    init_std: float = 0.1
    window: bool = True  # run each model only on the receptive-field window of its neuron (exact)
    converge_tol: float = 0.001  # plateau: best objective rose by at most this (relative) over converge_window
    converge_window: int = 10  # steps between an image's plateau tests
    agree_threshold: float = 0.8  # starts whose phase-aware similarity is below this "disagree"
    n_val_models: int = 1  # ensemble members held out to score the MEIs
    n_show: int = 12  # neurons in the gallery
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        for key in ("n_starts", "steps", "n_val_models", "n_show", "converge_window"):
            positive(getattr(self, key), f"mei.{key}")
        fraction(self.lr, "mei.lr", low_open=True)  # a step longer than the budget's norm only overshoots
        fraction(self.lr_decay, "mei.lr_decay", low_open=True)
        require(len(self.blur_sigma) == 2 and all(s >= 0 for s in self.blur_sigma), "mei.blur_sigma",
                 "must be [start, end] with both >= 0")
        require(self.jitter >= 0, "mei.jitter", "must be >= 0")
        if self.norm is not None:
            positive(self.norm, "mei.norm")
        fraction(self.norm_fraction, "mei.norm_fraction", low_open=True)
        positive(self.init_std, "mei.init_std")
        require(isinstance(self.window, bool), "mei.window", "must be true or false")
        require(0 <= self.converge_tol < 1, "mei.converge_tol", "must be in [0, 1) (0 = never stop early)")
        fraction(self.agree_threshold, "mei.agree_threshold")
        seed(self.seed, "mei.seed")


@dataclass(frozen=True)
class GaborConfig:
    """Grid over Gabor parameters (in model pixels), then a local refinement."""

    n_positions: list[int] = field(default_factory=lambda: [7, 9])  # rows, cols over the image
    orientations: int = 8
    wavelengths: list[float] = field(default_factory=lambda: [4.0, 7.0, 10.0, 15.0, 20.0])
    sigmas: list[float] = field(default_factory=lambda: [2.0, 3.0, 5.0, 7.0])
    phases: int = 4
    preselect: int = 128  # grid candidates per neuron scored exactly after ranking by translation (0: score all)
    refine_steps: int = 200
    converge_tol: float = 0.0  # a neuron's refinement stops when its best response gains less than this in 10 steps
    window: bool = True  # refine on each neuron's receptive-field window (exact, see mei.window)
    batch_size: int = 128  # candidates per forward pass (CPU caches: 128 is ~3x faster per image than 4096)
    fit_steps: int = 300  # least-squares fit of a Gabor to each MEI

    def __post_init__(self) -> None:
        require(len(self.n_positions) == 2 and min(self.n_positions) > 0, "gabor.n_positions",
                 "must be [rows, cols], both > 0")
        for key in ("orientations", "phases", "batch_size"):
            positive(getattr(self, key), f"gabor.{key}")
        for key in ("refine_steps", "fit_steps"):
            at_least(getattr(self, key), 0, f"gabor.{key}")
        require(self.preselect >= 0, "gabor.preselect", f"must be >= 0 (got {self.preselect})")
        require(0 <= self.converge_tol < 1, "gabor.converge_tol", "must be in [0, 1) (0 = never stop early)")
        require(isinstance(self.window, bool), "gabor.window", "must be true or false")
        require(all(w > 0 for w in self.wavelengths) and self.wavelengths, "gabor.wavelengths", "must be > 0")
        require(all(s > 0 for s in self.sigmas) and self.sigmas, "gabor.sigmas", "must be > 0")


@dataclass(frozen=True)
class ValidateConfig:
    """The closed loop's intervals over cells and its MEI-vs-Gabor verdicts (meiscope.validation)."""

    confidence: float = 0.95  # of every bootstrap / Wilson interval over one replicate's cells
    n_bootstrap: int = 2000  # resamples of the cells per interval (Efron & Tibshirani 1993 advise >= 1000)
    seed: int = 0  # of the resampling, so a rerun gives the same intervals
    tie_tolerance: float = 0.05  # MEI and Gabor "tie" when the ratio's interval meets [1/1.05, 1.05]

    def __post_init__(self) -> None:
        require(math.isfinite(self.confidence) and 0.5 <= self.confidence < 1, "validate.confidence",
                f"must be in [0.5, 1) (got {self.confidence})")
        require(1000 <= self.n_bootstrap <= 100000, "validate.n_bootstrap",
                f"must be an integer in [1000, 100000] (got {self.n_bootstrap})")
        seed(self.seed, "validate.seed")
        require(math.isfinite(self.tie_tolerance) and 0 <= self.tie_tolerance <= 0.5, "validate.tie_tolerance",
                f"must be in [0, 0.5] (a relative difference in rate; got {self.tie_tolerance})")


@dataclass(frozen=True)
class ReplicateConfig:
    """``meiscope replicate``: the synthetic study on several new cortices (see meiscope.replicate)."""

    # confirmatory: seeds drawn from the committed code and params.yaml (meiscope.replicate.derive_seeds), on a
    # clean tree only; development: the fixed ``seeds`` below, which were looked at while developing
    protocol: str = "confirmatory"
    n_confirmatory: int = 3  # replicates of a confirmatory run (3 at least: a t-interval on 2 is nearly unbounded)
    seeds: list[int] = field(default_factory=lambda: [101, 102, 103])  # development seeds, never the default run's
    folder: str = "replicates"  # one project root per seed below it
    confidence: float = 0.95  # of the t-interval of each figure's mean

    def __post_init__(self) -> None:
        import posixpath

        one_of(self.protocol, ("confirmatory", "development"), "replicate.protocol")
        require(3 <= self.n_confirmatory <= 20, "replicate.n_confirmatory",
                f"must be an integer in [3, 20] (got {self.n_confirmatory})")
        require(len(self.seeds) >= 2, "replicate.seeds", f"needs at least 2 seeds for an interval (got {self.seeds})")
        require(len(set(self.seeds)) == len(self.seeds), "replicate.seeds", "must be distinct")
        for i, value in enumerate(self.seeds):
            require(value >= 0, f"replicate.seeds[{i}]", f"must be >= 0 (got {value})")
        require(0 < self.confidence < 1, "replicate.confidence", f"must be in (0, 1) (got {self.confidence})")
        # lexically here; after symlinks where the project root is known (meiscope.containment)
        folder = posixpath.normpath(self.folder.strip() or ".")
        require(folder != "." and not folder.startswith("/") and folder.split("/")[0] != "..", "replicate.folder",
                f"must be a relative folder below the project root (got {self.folder!r})")


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow store (relative paths are taken from the repository root)."""

    uri: str = "sqlite:///mlflow.db"
    experiment: str = "meiscope"
    enabled: bool = True


@dataclass(frozen=True)
class ServicesConfig:
    """The local team stack of `make services`: a PostgreSQL server and an MLflow tracking server."""

    dir: str = ".services"  # everything the servers write (database, logs, artifacts); under the repository
    host: str = "127.0.0.1"  # anything but a loopback address needs `meiscope services start --expose`
    postgres_port: int = 5433
    mlflow_port: int = 5001

    def __post_init__(self) -> None:
        require(self.valid_host(self.host), "services.host",
                f"must be an IP address or a host name (dot-separated labels of letters, digits and '-'; "
                f"got {self.host!r})")
        for key in ("postgres_port", "mlflow_port"):
            require(1024 <= getattr(self, key) <= 65535, f"services.{key}", "must be a port in 1024..65535")
        require(self.postgres_port != self.mlflow_port, "services.mlflow_port", "must differ from postgres_port")
        require(not Path(self.dir).is_absolute() and ".." not in Path(self.dir).parts, "services.dir",
                 "must be a folder inside the repository (a relative path without '..')")

    @staticmethod
    def valid_host(host: object) -> bool:
        """An IP address, or a host name of RFC 1123 labels (it reaches a command line and a URL)."""
        import ipaddress
        import re

        if not isinstance(host, str):
            return False
        try:
            ipaddress.ip_address(host)
            return True
        except ValueError:
            pass
        labels = (host[:-1] if host.endswith(".") else host).split(".")
        label = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
        return (len(host) <= 253 and all(label.fullmatch(part) for part in labels)
                and not labels[-1].isdigit())  # an all-digit last label is a malformed IPv4 address


# --------------------------------------------------------------------------------------
# per-recording values
# --------------------------------------------------------------------------------------
# the sections a recording's table may set: what the model can afford on that recording's data
OVERRIDABLE_SECTIONS = ("model", "train", "tune")


def _recording_overrides_section() -> type:
    """``recording_overrides``: one mapping per recording kind, mirroring the nesting of ``model``, ``train``
    and ``tune`` (e.g. ``neuropixels: {model: {channels: [32, 32, 32]}}``); empty = the sections' own values."""
    from meiscope.recordings import RECORDINGS

    cls = dataclasses.make_dataclass(
        "RecordingOverrides", [(name, dict[str, Any], field(default_factory=dict)) for name in RECORDINGS],
        frozen=True, namespace={"__doc__": _recording_overrides_section.__doc__})
    cls.__module__ = __name__
    return cls


RecordingOverrides = _recording_overrides_section()


def _merge(base: dict, table: dict) -> dict:
    """``base`` with ``table``'s leaves put in (a mapping in ``table`` descends, any other value replaces)."""
    merged = dict(base)
    for key, value in table.items():
        node = merged.get(key)
        merged[key] = _merge(node if isinstance(node, dict) else {}, value) if isinstance(value, dict) else value
    return merged


def _checked_table(raw: dict, recording: str, table: Any) -> dict:
    """``recording``'s table, refused (naming the key) unless it sets known keys of OVERRIDABLE_SECTIONS to
    valid values."""
    key = f"recording_overrides.{recording}"
    require(isinstance(table, dict), key, f"must be a mapping of sections (got {table!r})")
    for section in table:
        require(section in OVERRIDABLE_SECTIONS, f"{key}.{section}",
                f"is not a section a recording may set (only {', '.join(OVERRIDABLE_SECTIONS)})")
        require(isinstance(table[section], dict), f"{key}.{section}", f"must be a mapping (got {table[section]!r})")
    try:
        build_section(Params, _merge(raw, table), "")
    except ConfigError as err:
        raise ConfigError(f"params: '{key}' sets a value that is refused: {str(err).removeprefix('params: ')}") from None
    return table


def with_recording_overrides(raw: dict) -> dict:
    """``raw`` with the studied recording's table of ``recording_overrides`` put into its sections (every
    recording's table is checked, so a bad one fails whichever recording is studied)."""
    tables = raw.get("recording_overrides") or {}
    require(isinstance(tables, dict), "recording_overrides",
            f"must be a mapping of recording kinds (got {tables!r})")
    if not tables:
        return raw
    build_section(Params, raw, "")  # the file's own values first: an error in them is not the table's
    checked = {name: _checked_table(raw, name, table) for name, table in tables.items()
               if name in RecordingOverrides.__dataclass_fields__}  # an unknown kind: refused with the section
    studied = (raw.get("data") or {}).get("recording", DataConfig.recording)
    return _merge(raw, checked.get(studied, {}))


def without_overridden(raw: dict, keys: "list[str] | tuple[str, ...]") -> dict:
    """``raw`` with the dotted ``keys`` (a ``--set``) removed from every recording's table: a value set on the
    command line wins over the table, as over the file."""
    import copy

    raw = copy.deepcopy(raw)
    for table in (raw.get("recording_overrides") or {}).values():
        for key in keys:
            *path, leaf = key.split(".")
            node = table
            for part in path:
                node = node.get(part) if isinstance(node, dict) else None
            if isinstance(node, dict):
                node.pop(leaf, None)
    return raw


class _StudyChecks:
    """Checks across sections of :class:`Params`."""

    def __post_init__(self) -> None:
        studied = self.extract.experiment_id  # type: ignore[attr-defined]
        require(studied is None or studied not in self.sessions.shared, "sessions.shared",  # type: ignore[attr-defined]
                f"lists {studied}, the studied session (extract.experiment_id): list only the other sessions")


def _recording_sections() -> list[tuple[str, type]]:
    """The sections the recording packages own (``recordings/<kind>/settings.py``), in registry order."""
    from meiscope.recordings import RECORDINGS

    owned: dict[str, type] = {}
    for kind in RECORDINGS.values():
        for name, section in kind.sections.items():
            owned.setdefault(name, section)
    return list(owned.items())


# All of params.yaml, one field per section: the study's own sections, and each recording's (a new
# recording adds its sections by declaring them, not here).
_SECTIONS: list[tuple[str, type]] = [
    ("data", DataConfig), ("synthetic", SyntheticConfig), *_recording_sections(), ("extract", ExtractConfig),
    ("sessions", SessionsConfig), ("rank", RankConfig), ("model", ModelConfig), ("train", TrainConfig),
    ("tune", TuneConfig), ("mei", MeiConfig), ("gabor", GaborConfig), ("validate", ValidateConfig), ("tracking", TrackingConfig),
    ("replicate", ReplicateConfig), ("services", ServicesConfig), ("recording_overrides", RecordingOverrides)]
Params = dataclasses.make_dataclass("Params", [(name, section, field(default_factory=section))
                                               for name, section in _SECTIONS],
                                    bases=(_StudyChecks,), frozen=True, namespace={"__doc__": "All of params.yaml."})
Params.__module__ = __name__


# --------------------------------------------------------------------------------------
# parsing
# --------------------------------------------------------------------------------------
def _check_type(value: Any, hint: Any, key: str) -> Any:
    """Return ``value`` converted to ``hint`` where lossless (int -> float), else raise."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check_type(value, inner[0], key)
    if origin is list:
        (item,) = typing.get_args(hint)
        require(isinstance(value, list), key, f"must be a list (got {value!r})")
        return [_check_type(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if hint is Any:  # checked where it is used (recording_overrides: by the sections it sets)
        return value
    if origin is dict:
        require(isinstance(value, dict) and all(isinstance(k, str) for k in value), key,
                f"must be a mapping (got {value!r})")
        return {k: _check_type(v, typing.get_args(hint)[1], f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        require(isinstance(value, dict), key, f"must be a mapping (got {value!r})")
        return build_section(hint, value, key)
    if hint is bool:
        require(isinstance(value, bool), key, f"must be true or false (got {value!r})")
        return value
    if hint is int:
        require(isinstance(value, int) and not isinstance(value, bool), key, f"must be an integer (got {value!r})")
        return value
    if hint is float:
        require(isinstance(value, (int, float)) and not isinstance(value, bool), key, f"must be a number (got {value!r})")
        # .inf passes every "> 0" check and .nan every comparison: refuse them before any range check
        require(math.isfinite(value), key, f"must be a finite number (got {value!r})")
        return float(value)
    if hint is str:
        require(isinstance(value, str), key, f"must be a string (got {value!r})")
        return value
    raise TypeError(f"unsupported config type {hint} for {key}")


def with_profile(raw: dict) -> dict:
    """The ``synthetic`` mapping with its profile's defaults under the keys it sets itself."""
    name = raw.get("profile", SyntheticConfig.profile)
    require(isinstance(name, str) and name in SYNTHETIC_PROFILES, "synthetic.profile",
            f"must be one of {', '.join(SYNTHETIC_PROFILES)} (got {name!r})")
    return {**SYNTHETIC_PROFILES[name], **raw}


def switch_profile(params: "Params", name: str) -> "Params":
    """``params`` on the cortex of profile ``name``: every key a profile supplies takes the new profile's value
    unless ``params`` set it to something other than its own profile's (set keys win, as in params.yaml)."""
    require(name in SYNTHETIC_PROFILES, "synthetic.profile",
            f"must be one of {', '.join(SYNTHETIC_PROFILES)} (got {name!r})")
    raw = as_dict(params)
    synthetic = raw["synthetic"]
    supplied = {key for profile in SYNTHETIC_PROFILES.values() for key in profile}
    own = as_dict(build_section(SyntheticConfig, {"profile": synthetic["profile"]}, "synthetic"))
    for key in supplied:
        if synthetic[key] == own[key]:  # the old profile's value, not one the user pinned
            del synthetic[key]
    synthetic["profile"] = name
    return parse_params(raw)


def build_section(cls: type, raw: dict, prefix: str) -> Any:
    """Build dataclass ``cls`` from a mapping, refusing unknown keys (named with ``prefix``)."""
    if cls is SyntheticConfig:
        raw = with_profile(raw)
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        require(key in known, f"{prefix}.{key}" if prefix else str(key),
                 f"is not a known key (known: {', '.join(sorted(known))})")
    kwargs = {k: _check_type(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in raw.items()}
    return cls(**kwargs)


def parse_params(raw: dict | None) -> Params:
    """Validate a params mapping (as loaded from YAML) into :class:`Params`."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("params: the top level must be a mapping of sections")
    return build_section(Params, with_recording_overrides(raw), "")


def apply_overrides(raw: dict, overrides: "list[str] | tuple[str, ...]") -> dict:
    """``raw`` with ``section.key=value`` overrides applied (values parsed as YAML), as ``dvc exp run -S`` does."""
    import copy

    raw = copy.deepcopy(raw)
    for item in overrides:
        key, sep, value = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise ConfigError(f"params: override {item!r} must read section.key=value")
        node = raw
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"params: override {item!r}: '{part}' is not a section")
        node[parts[-1]] = _override_value(item, value)
    return raw


def _override_value(item: str, value: str) -> Any:
    """The YAML value of override ``item`` (its text after '='); a ConfigError when it is not YAML."""
    import yaml

    try:
        return yaml.safe_load(value)
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"params: override {item!r}: the value is not valid YAML ({problem}); "
                          "for example --set 'train.seeds=[1, 2]'") from None


def load_params(path: str | Path = "params.yaml", overrides: "list[str] | tuple[str, ...]" = ()) -> Params:
    """Read and validate ``params.yaml`` (plus ``section.key=value`` overrides); a missing or malformed file is a ConfigError."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such params file")
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read the params file ({type(err).__name__}: {err})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    if not raw:  # an empty file would run the whole study on built-in defaults without a word
        raise ConfigError(f"{path}: empty; give at least one section (the repository's params.yaml lists them all)")
    try:
        set_keys = [item.partition("=")[0].strip() for item in overrides]
        params = parse_params(without_overridden(apply_overrides(raw, overrides), set_keys))
        from meiscope.containment import check_paths  # needs the project root, which only the file gives

        check_paths(params, path.resolve().parent)
        return params
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def as_dict(section: Any) -> dict:
    """A section as a plain dict (for logging and for writing back to YAML)."""
    return dataclasses.asdict(section)


def flat_dict(mapping: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten a section (or nested mapping) into ``{'a.b': value}`` pairs (MLflow params)."""
    if dataclasses.is_dataclass(mapping):
        mapping = as_dict(mapping)
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, dict):
            out.update(flat_dict(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def replace_model(model: ModelConfig, overrides: dict) -> ModelConfig:
    """Return ``model`` with keys from ``overrides`` (e.g. the tuned architecture) applied."""
    merged = {**as_dict(model), **overrides}
    return build_section(ModelConfig, merged, "model")
