"""``meiscope synthesize`` for ``data.recording: neuropixels``: one Brain Observatory 1.1 session as spikes.

The session is meant to be as rough as a real one (session 798911424's figures,
``shared/docs/allen-neuropixels.md`` section 9; each value's basis is in params.yaml and
docs/data-sources.md). Its VISp units are the synthetic cortex's own cells (``synthetic``
section, session 0: the same seed, scenes, calibration and truth module as the two-photon session):

- **Probes and areas**: six probes (A-F, each through its own visual area, the hippocampus and the
  thalamus or midbrain: :data:`PROBE_AREAS`); ``visp_units`` of the cortex's cells are VISp units on
  probe C, and ``other_area_units`` units in each other area segment fire at their spontaneous rate
  whatever the screen shows (those in visual areas add the onset transient).
- **Responsive units**: ``visp_responsive_fraction`` of the VISp units respond to the screen (the
  cortex's kinds, its unresponsive share replaced; two-photon counts a cell responsive by its calcium
  response to natural scenes, a criterion spikes pass far more often: :func:`spiking_cortex`).
- **Quality metrics**: in every probe segment, ``round(n visp_pass_fraction)`` of its ``n`` units pass
  allensdk's default filters and ``round(n share)`` fail each of amplitude cutoff, presence ratio and ISI
  violations (every failing unit at least one; 798911424's VISp: 94 of 200 pass, 67, 33 and 44 fail
  each). Every unit misses the share of its spikes its amplitude cutoff says (its true rates, the
  ground truth included, are scaled by ``1 - amplitude_cutoff``), and a unit below the
  presence-ratio threshold is silent in one window of the session.
- **Rates**: spontaneous rates log-normal, plus a share of fast-spiking units at tens of Hz.
- **Over-dispersion**: every segment's rates are multiplied by the population's shared gain
  (:func:`meiscope.synthetic.cortex.shared_gain`, per 250-ms bin) and by each unit's own log-normal
  gain per segment, both with mean 1.
- **Running**: a running-speed trace (:func:`meiscope.synthetic.cortex.running_speed_trace`, at
  30 Hz) in allensdk's ``running`` module; each unit's rate is multiplied by
  ``(1 + m s(t)) / (1 + m mean(s))`` with ``s = min(speed / 5 cm/s, 1)`` and its own ``m`` from
  ``running_modulation`` (so its mean over the session stays its true rate).
- **Onset transients**: visual-area units fire ``transient_gain`` times their rate extra for
  ``transient_s`` after each stimulus onset (each 250-ms presentation, flash, drifting-grating sweep
  and movie repeat).
- **invalid_times**: ``invalid_intervals`` intervals with Allen's tags; the ``stimulus`` ones fall
  inside a drifting-grating block (allensdk masks the presentations they overlap; no natural scene).

Schedule (the BO1.1 stimuli, each split in two blocks with gray spontaneous epochs between blocks;
the order is ours, after Allen's description, not checked against 798911424's table)::

    gabors | spont | flashes | DG | NM3 | NM1 | SG | NS | NS | SG | NM1 | NM3 | DG | spont

Spikes: each segment (a 250-ms static stimulus or bin of a gray epoch; one 1/30-s movie frame;
one 1/60-s screen frame of a drifting Gabor patch or grating) has one rate per unit, delayed by a
:data:`LATENCY_S` response latency; spike counts are Poisson, times uniform in the segment, then a
refractory period removes any spike closer than ``refractory_ms`` to the one before it. A drifting
stimulus drives a unit frame by frame with the true rate of the image on screen
(:func:`~meiscope.recordings.neuropixels.stimuli.drift_phase`; the truth has no temporal filter, so a
simple cell follows the drift, up to 15 Hz). Same config -> identical spike times on any machine.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from meiscope import visual_field as vf
from meiscope.config import SyntheticConfig
from meiscope.recordings import brain_observatory as bo
from meiscope.recordings.neuropixels import stimuli
from meiscope.recordings.neuropixels.cache import NeuropixelsError
from meiscope.recordings.neuropixels.nwb import (Channels, EcephysSessionArrays, Probes, RunningSpeed, Units,
                                                 write_session)
from meiscope.recordings.neuropixels.settings import SyntheticNeuropixelsConfig
from meiscope.recordings.screen import GRAY
from meiscope.synthetic import portable
from meiscope.synthetic.cortex import running_speed_trace, shared_gain
from meiscope.synthetic.population import WORK_SHAPE, CellParams, TruePopulation, save_ground_truth

PRESENTATION_S = 0.25  # static stimuli, flashes, and the bins of drifting gratings and gray epochs
MOVIE_FRAME_S = 1.0 / 30.0
LATENCY_S = 0.04  # onset latency of mouse V1 spiking responses (~40 ms)
SCREEN_FRAME_S = 1.0 / stimuli.SCREEN_HZ  # the segments of the drifting stimuli
DG_ON_S, DG_GRAY_S = 2.0, 1.0  # a drifting-grating sweep and the gray after it (Allen: 2 s + 1 s)
FLASH_PERIOD_S = 2.0  # a 250-ms flash every 2 s
FLASH_COLORS = (-1.0, 1.0)  # full-field black and white
GAP_S = 30.0  # gray spontaneous epoch between two blocks (our choice)
RUNNING_HZ = 30.0  # samples of the running-speed trace (running_speed_trace's clock)
RUN_FULL_CM_S = 5.0  # speed from which a unit's running modulation is complete (Allen counts > 1 cm/s as running)
RENDER_SHAPE = (2 * WORK_SHAPE[0], 2 * WORK_SHAPE[1])  # gratings are drawn above the truth's resolution
RENDER_FIELD = vf.VisualField.from_crop([0.0, 1.0, 0.0, 1.0], RENDER_SHAPE)
VISP = "VISp"
# Probe -> areas from the tip up (Allen: probeA = VISam, B = VISpm, C = VISp, D = VISl, E = VISal, F = VISrl;
# each passes the hippocampus and the thalamus or midbrain below its cortical area)
PROBE_AREAS = {
    "probeA": ("APN", "DG", "CA1", "VISam"), "probeB": ("LP", "DG", "CA1", "VISpm"),
    "probeC": ("LGd", "CA3", "CA1", VISP), "probeD": ("LP", "CA3", "CA1", "VISl"),
    "probeE": ("LGd", "DG", "CA1", "VISal"), "probeF": ("LP", "SUB", "CA1", "VISrl"),
}
OUT_OF_BRAIN_SHARE = 40 / 384  # the top of each probe is above the brain (our choice: 40 of Neuropixels 1.0's 384)
VISUAL_AREAS = ("VISp", "VISl", "VISal", "VISam", "VISpm", "VISrl", "LGd", "LP")  # onset transients
METRICS = ("amplitude_cutoff", "presence_ratio", "isi_violations")
STIMULUS_INDEX = {"spontaneous": -1.0, "gabors": 0.0, "flashes": 1.0, "drifting_gratings": 2.0,
                  "natural_movie_three": 3.0, "natural_movie_one": 4.0, "static_gratings": 5.0,
                  "natural_scenes": 6.0}
MOVIE_NUMBERS = {"natural_movie_one": 1, "natural_movie_three": 3}
# string-valued parameters, as Allen's tables hold them
GABOR_PHASE_TEXT = "[3644.93, 3644.93]"
DG_PHASE_TEXT = "[42471.86666667, 42471.86666667]"
FULL_FIELD_SIZE_TEXT = "[250.0, 250.0]"
NULL = "null"  # Allen's value where a parameter does not apply


# --------------------------------------------------------------------------------------
# units
# --------------------------------------------------------------------------------------
def spiking_cortex(synth: SyntheticConfig, cfg: SyntheticNeuropixelsConfig) -> SyntheticConfig:
    """The cortex the session records: ``synth`` with ``visp_responsive_fraction`` of its cells responsive,
    the responsive kinds keeping their proportions (everything else, seed included, unchanged)."""
    kinds = asdict(synth.kinds)
    responsive = 1.0 - kinds["unresponsive"]
    if responsive <= 0:
        raise NeuropixelsError("params: 'synthetic.kinds' has no responsive kind, so "
                               "'synthetic_neuropixels.visp_responsive_fraction' has none to scale")
    scale = cfg.visp_responsive_fraction / responsive
    shares = {k: (v * scale if k != "unresponsive" else 1.0 - cfg.visp_responsive_fraction) for k, v in kinds.items()}
    return replace(synth, kinds=type(synth.kinds)(**shares))


def unit_ids_for(session_id: int, n_units: int) -> np.ndarray:
    """Allen-like unit ids, distinct between sessions (assumes n_units <= 10,000)."""
    return 950_000_000 + (int(session_id) % 10_000) * 10_000 + np.arange(n_units, dtype=np.int64)


def _concat(parts: list[CellParams]) -> CellParams:
    return CellParams(**{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(CellParams)})


def other_area_segments() -> list[tuple[str, str]]:
    """``(probe, area)`` of every probe segment outside VISp, in probe order, tip first."""
    return [(probe, area) for probe, areas in PROBE_AREAS.items() for area in areas if area != VISP]


def spontaneous_rates(n: int, cfg: SyntheticNeuropixelsConfig, rng: np.random.Generator) -> np.ndarray:
    """``(n,)`` Hz: log-normal (``rate_median_hz``, ``rate_log_sd``), a ``fast_spiking_fraction`` log-uniform
    in ``fast_spiking_rate_hz``."""
    rates = cfg.rate_median_hz * portable.exp(cfg.rate_log_sd * rng.standard_normal(n))
    fast = rng.random(n) < cfg.fast_spiking_fraction
    rates[fast] = portable.log_uniform(rng, *cfg.fast_spiking_rate_hz, int(fast.sum()))
    return rates


PASSING = {"amplitude_cutoff": (0.0, 0.09), "presence_ratio": (0.96, 1.0), "isi_violations": (0.0, 0.45)}
FAILING = {"amplitude_cutoff": (0.11, 0.5), "presence_ratio": (0.5, 0.94), "isi_violations": (0.6, 3.0)}


def failure_counts(n: int, cfg: SyntheticNeuropixelsConfig) -> tuple[int, np.ndarray]:
    """How many of ``n`` units fail allensdk's default filters, and how many fail each of :data:`METRICS`.

    ``round(n (1 - visp_pass_fraction))`` fail; metric ``k`` fails in ``round(n share_k)`` of them, at most
    all of them, and at least so many that every failing unit can fail one (rounding in small groups).

    Returns:
        ``(n_fail, counts)``, ``counts`` ``(3,)`` int in :data:`METRICS` order.
    """
    n_fail = n - int(round(n * cfg.visp_pass_fraction))
    shares = np.array([cfg.amplitude_cutoff_fail, cfg.presence_ratio_fail, cfg.isi_violations_fail])
    counts = np.minimum(np.rint(n * shares).astype(np.int64), n_fail)
    while counts.sum() < n_fail:
        counts[np.argmax(n * shares - counts)] += 1
    return n_fail, counts


def failure_pattern(n_fail: int, counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``(n_fail, 3)`` bool: which metrics each failing unit fails; column ``k`` sums to ``counts[k]`` exactly
    and every row fails at least one (needs ``counts <= n_fail <= counts.sum()``)."""
    pattern = np.zeros((n_fail, len(counts)), dtype=bool)
    if n_fail == 0:
        return pattern
    # one "first" metric per unit, shared in proportion to the counts and never above them...
    exact = n_fail * counts / counts.sum()
    first = np.floor(exact).astype(np.int64)
    first[np.argsort(first - exact)[:n_fail - int(first.sum())]] += 1  # the largest remainders
    pattern[np.arange(n_fail), rng.permutation(np.repeat(np.arange(len(counts)), first))] = True
    for k, extra in enumerate((counts - first).tolist()):  # ...then the rest of each metric's failures
        pattern[rng.choice(np.flatnonzero(~pattern[:, k]), extra, replace=False), k] = True
    return pattern


def quality_metrics(n: int, cfg: SyntheticNeuropixelsConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Allen's quality metrics of ``n`` units of one area: :func:`failure_counts` of them fail allensdk's
    default filters (:func:`failure_pattern` says on which metrics), the others pass all three.

    Returns:
        ``quality`` (all "good", as in 798911424), ``amplitude_cutoff``, ``presence_ratio``,
        ``isi_violations``, ``snr``: ``(n,)`` each.
    """
    metrics = {"quality": np.full(n, "good"), **{m: rng.uniform(*PASSING[m], n) for m in METRICS},
               "snr": rng.uniform(1.0, 6.0, n)}
    n_fail, counts = failure_counts(n, cfg)
    failing = np.sort(rng.permutation(n)[:n_fail])
    pattern = failure_pattern(n_fail, counts, rng)
    for k, name in enumerate(METRICS):
        rows = failing[pattern[:, k]]
        metrics[name][rows] = rng.uniform(*FAILING[name], rows.size)
    return metrics


def area_metrics(probes: np.ndarray, areas: np.ndarray, cfg: SyntheticNeuropixelsConfig, rng: np.random.Generator
                 ) -> dict[str, np.ndarray]:
    """:func:`quality_metrics` drawn for each probe segment (probe, area) on its own, so that each holds its
    share of passing units exactly (VISp: 94 of 200 at the defaults, as 798911424)."""
    n = len(areas)
    out = {"quality": np.full(n, "good", dtype=object), **{m: np.zeros(n) for m in (*METRICS, "snr")}}
    segment = np.array([f"{p}/{a}" for p, a in zip(probes.tolist(), areas.tolist())])
    for name in dict.fromkeys(segment.tolist()):  # segments in unit order
        rows = np.flatnonzero(segment == name)
        for key, values in quality_metrics(rows.size, cfg, rng).items():
            out[key][rows] = values
    out["quality"] = out["quality"].astype(str)
    return out


@dataclass
class UnitPlan:
    """What each unit is besides its true tuning.

    Attributes:
        areas: ``(n,)`` str area acronym.  probes: ``(n,)`` str probe name.
        metrics: :func:`quality_metrics` arrays.
        running_modulation: ``(n,)`` rate change at full running speed (fraction).
        transient_gain: ``(n,)`` extra rate / rate during the onset transient (0 outside visual areas).
    """

    areas: np.ndarray
    probes: np.ndarray
    metrics: dict[str, np.ndarray]
    running_modulation: np.ndarray
    transient_gain: np.ndarray


def unit_population(cells: CellParams, cfg: SyntheticNeuropixelsConfig, rng: np.random.Generator
                    ) -> tuple[CellParams, UnitPlan, np.ndarray]:
    """The true parameters of every unit: ``cells`` as VISp units, then ``other_area_units`` per other segment.

    Rates are those the recording sees: each unit keeps ``1 - amplitude_cutoff`` of its spikes, so its
    baseline, ceiling and peak rate are scaled by that share.

    Returns:
        ``(params, plan, keep)``; ``keep`` ``(n,)`` is the share of spikes each unit keeps (its rates in
        ``params`` already include it).
    """
    n_visp = cells.n_cells
    segments = other_area_segments()
    n_other = cfg.other_area_units * len(segments)
    baseline = spontaneous_rates(n_visp + n_other, cfg, rng)
    # the cortex's cells keep their tuning; their peak rate over the scenes moves with their new baseline
    visp = replace(cells, baseline=baseline[:n_visp],
                   peak_rate=np.where(cells.responsive, cells.peak_rate - cells.baseline + baseline[:n_visp],
                                      baseline[:n_visp]))
    parts = [visp]
    if n_other:  # copies of random cells made unresponsive, with their own spontaneous rates
        other = visp.rows(rng.integers(0, n_visp, n_other))
        other = replace(other, kinds=np.full(n_other, "unresponsive", dtype=cells.kinds.dtype),
                        rate_max=np.zeros(n_other), baseline=baseline[n_visp:], peak_rate=baseline[n_visp:])
        parts.append(other)
    params = _concat(parts)
    n_units = params.n_cells
    areas = np.array([VISP] * n_visp + [a for _, a in segments for _ in range(cfg.other_area_units)])
    probes = np.array(["probeC"] * n_visp + [p for p, _ in segments for _ in range(cfg.other_area_units)])
    metrics = area_metrics(probes, areas, cfg, rng)
    keep = 1.0 - metrics["amplitude_cutoff"]
    params = replace(params, cell_ids=unit_ids_for(cfg.session_id, n_units), baseline=params.baseline * keep,
                     rate_max=params.rate_max * keep, peak_rate=params.peak_rate * keep)
    modulation = rng.uniform(*cfg.running_modulation, n_units)
    transient = rng.uniform(*cfg.transient_gain, n_units) * np.isin(areas, VISUAL_AREAS)
    return params, UnitPlan(areas, probes, metrics, modulation, transient), keep


def probe_layout(session_id: int, channels_per_probe: int, plan: UnitPlan, rng: np.random.Generator
                 ) -> tuple[Probes, Channels, np.ndarray]:
    """Six probes of :data:`PROBE_AREAS`; returns ``(probes, channels, peak channel id of each unit)``."""
    names = list(PROBE_AREAS)
    probe_ids = 800_000_000 + (int(session_id) % 100_000) * 10 + np.arange(len(names), dtype=np.int64)
    n_out = max(1, int(round(channels_per_probe * OUT_OF_BRAIN_SHARE)))
    n_in = channels_per_probe - n_out
    per_probe = []
    for areas in PROBE_AREAS.values():  # equal segments from the tip, the rest above the brain
        edges = np.linspace(0, n_in, len(areas) + 1).astype(int)
        per_probe.append(np.concatenate([np.repeat(areas, np.diff(edges)), ["None"] * n_out]))
    local = np.tile(np.arange(channels_per_probe, dtype=np.int64), len(names))
    n_channels = len(local)
    channels = Channels(
        channel_ids=850_000_000 + (int(session_id) % 100_000) * 10_000 + np.arange(n_channels, dtype=np.int64),
        probe_ids=np.repeat(probe_ids, channels_per_probe), local_index=local,
        vertical_position=20.0 * (local // 2) + 20.0, horizontal_position=np.where(local % 2 == 0, 11.0, 43.0),
        structure_acronyms=np.concatenate(per_probe))
    probe_of_channel = np.repeat(np.array(names), channels_per_probe)
    peak = np.empty(len(plan.areas), dtype=np.int64)
    for probe, area in sorted(set(zip(plan.probes.tolist(), plan.areas.tolist()))):
        units = np.flatnonzero((plan.probes == probe) & (plan.areas == area))
        candidates = np.flatnonzero((probe_of_channel == probe) & (channels.structure_acronyms == area))
        peak[units] = channels.channel_ids[rng.choice(candidates, units.size)]
    return Probes(probe_ids=probe_ids, names=np.array(names)), channels, peak


# --------------------------------------------------------------------------------------
# the schedule
# --------------------------------------------------------------------------------------
@dataclass
class Schedule:
    """The session as segments of constant rate, and its presentations.

    Attributes:
        start, duration: ``(n_seg,)`` s.  stimulus: ``(n_seg,)`` object stimulus name (gray: "spontaneous").
        condition: ``(n_seg,)`` int row of that stimulus's rate table (-1 = gray screen).
        onset: ``(n_seg,)`` bool, a stimulus onset (an onset transient follows).
        presentations: one row per presentation: ``name``, ``start``, ``stop``, ``block``, ``condition``.
    """

    start: np.ndarray
    duration: np.ndarray
    stimulus: np.ndarray
    condition: np.ndarray
    onset: np.ndarray
    presentations: pd.DataFrame

    @property
    def stop_s(self) -> float:
        return float(self.start[-1] + self.duration[-1]) if len(self.start) else 0.0


class _Builder:
    """Lays segments and presentations end to end."""

    def __init__(self) -> None:
        self.t, self.block = 0.0, -1
        self.segments: list[tuple[float, float, str, int, bool]] = []
        self.rows: list[tuple[str, float, float, int, int]] = []

    def _segment(self, duration: float, name: str, condition: int, onset: bool) -> None:
        self.segments.append((self.t, duration, name, condition, onset))
        self.t += duration

    def gray(self, seconds: float) -> None:
        for _ in range(int(round(seconds / PRESENTATION_S))):
            self._segment(PRESENTATION_S, "spontaneous", -1, False)

    def spontaneous(self, seconds: float) -> None:
        """A block of gray screen with its one ``spontaneous`` presentation row."""
        if seconds <= 0:
            return
        self.block += 1
        start = self.t
        self.gray(seconds)
        self.rows.append(("spontaneous", start, self.t, self.block, -1))

    def stimulus(self, name: str, codes: np.ndarray, on_s: float, segment_s: float, gray_s: float = 0.0,
                 frame_resolved: bool = False) -> None:
        """One block: each code shown for ``on_s`` (``segment_s`` segments, an onset at the first), then gray.

        A ``frame_resolved`` stimulus's segment ``k`` of code ``c >= 0`` has condition ``c n + k`` (``n``
        segments per presentation: its rate table has a row per frame); otherwise every segment is ``c``.
        """
        self.block += 1
        n_segments = int(round(on_s / segment_s))
        for code in codes.tolist():
            start = self.t
            for k in range(n_segments):
                condition = code * n_segments + k if frame_resolved and code >= 0 else code
                self._segment(segment_s, name, int(condition), k == 0)
            self.rows.append((name, start, self.t, self.block, int(code)))
            if gray_s:
                self.gray(gray_s)

    def movie(self, name: str, n_frames: int, repeats: int) -> None:
        """One block of ``repeats`` movie repeats: each frame a presentation, an onset at each repeat's start."""
        self.block += 1
        for _ in range(repeats):
            for frame in range(n_frames):
                start = self.t
                self._segment(MOVIE_FRAME_S, name, frame, frame == 0)
                self.rows.append((name, start, self.t, self.block, frame))

    def build(self) -> Schedule:
        start, duration, name, condition, onset = (np.array(c) for c in zip(*self.segments))
        rows = pd.DataFrame(self.rows, columns=["name", "start", "stop", "block", "condition"])
        return Schedule(start=start.astype(float), duration=duration.astype(float), stimulus=name.astype(object),
                        condition=condition.astype(np.int64), onset=onset.astype(bool), presentations=rows)


def _halves(n_conditions: int, repeats: int, blank: bool, rng: np.random.Generator) -> list[np.ndarray]:
    """Every condition ``repeats`` times (and the blank, -1, if ``blank``), shuffled, split in two blocks."""
    codes = np.repeat(np.arange(-1 if blank else 0, n_conditions), repeats)
    return np.array_split(codes[rng.permutation(len(codes))], 2)


def make_schedule(n_scenes: int, cfg: SyntheticNeuropixelsConfig, rng: np.random.Generator) -> Schedule:
    """Lay out the session (module docstring)."""
    scenes = _halves(n_scenes, cfg.scene_repeats, True, rng)
    gratings = _halves(len(bo.grating_conditions()), cfg.grating_repeats, True, rng)
    drifting = _halves(len(bo.drifting_grating_conditions()), cfg.drifting_grating_repeats, True, rng)
    gabors = _halves(len(stimuli.gabor_conditions()), cfg.gabor_repeats, False, rng)
    flashes = _halves(len(FLASH_COLORS), cfg.flash_repeats, False, rng)
    b = _Builder()
    b.stimulus("gabors", np.concatenate(gabors), PRESENTATION_S, SCREEN_FRAME_S, frame_resolved=True)
    b.spontaneous(cfg.spontaneous_s)
    b.stimulus("flashes", np.concatenate(flashes), PRESENTATION_S, PRESENTATION_S, FLASH_PERIOD_S - PRESENTATION_S)
    halves = [
        lambda h: b.stimulus("drifting_gratings", drifting[h], DG_ON_S, SCREEN_FRAME_S, DG_GRAY_S, frame_resolved=True),
        lambda h: b.movie("natural_movie_three", cfg.movie_three_frames, _split(cfg.movie_three_repeats)[h]),
        lambda h: b.movie("natural_movie_one", cfg.movie_one_frames, _split(cfg.movie_one_repeats)[h]),
        lambda h: b.stimulus("static_gratings", gratings[h], PRESENTATION_S, PRESENTATION_S),
        lambda h: b.stimulus("natural_scenes", scenes[h], PRESENTATION_S, PRESENTATION_S),
    ]
    for add in halves:  # first halves, then second halves in reverse order
        b.spontaneous(GAP_S)
        add(0)
    for add in reversed(halves):
        b.spontaneous(GAP_S)
        add(1)
    b.spontaneous(GAP_S)
    return b.build()


def _split(repeats: int) -> tuple[int, int]:
    return repeats - repeats // 2, repeats // 2


# --------------------------------------------------------------------------------------
# true rates of every condition
# --------------------------------------------------------------------------------------
def _rates(population: TruePopulation, images: np.ndarray, device: Any, batch: int = 16) -> np.ndarray:
    import torch

    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch):
            chunk = torch.from_numpy(np.ascontiguousarray(images[start:start + batch])).to(device=device)
            out.append(population(chunk).double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, population.n_cells))


def _movie_rates(population: TruePopulation, frames: np.ndarray, device: Any, batch: int = 64) -> np.ndarray:
    """``(n_frames, n_units)``: each frame drawn on the screen as Allen shows a movie, then the truth."""
    return np.concatenate([_rates(population, vf.movie_to_field(frames[s:s + batch], RENDER_FIELD), device)
                           for s in range(0, len(frames), batch)])


def _frame_times(on_s: float) -> np.ndarray:
    """Onsets of the 60-Hz screen frames of an ``on_s`` presentation (s after its onset)."""
    return stimuli.screen_times(0.0, on_s)


def drifting_images(on_s: float = DG_ON_S) -> tuple[np.ndarray, np.ndarray]:
    """Every screen frame of every drifting-grating condition: ``(images (n_images, H, W), row_image
    (n_conditions x n_frames,))``; the distinct images (orientation, phase on the 1/60-cycle grid: Allen's
    frequencies are whole Hz) are drawn once."""
    times = _frame_times(on_s)
    keys = [(r.orientation % 180.0, round(float(p) * stimuli.SCREEN_HZ) % int(stimuli.SCREEN_HZ))
            for r in bo.drifting_grating_conditions().itertuples()
            for p in stimuli.drift_phase(r.orientation, r.temporal_frequency, times)]
    distinct = sorted(set(keys))
    index = {key: i for i, key in enumerate(distinct)}
    images = np.stack([bo.grating_pixels(o, bo.DG_SPATIAL_FREQUENCY, q / stimuli.SCREEN_HZ, RENDER_SHAPE)
                       for o, q in distinct])
    return images, np.array([index[key] for key in keys], dtype=np.int64)


def condition_rates(population: TruePopulation, scenes: np.ndarray, movies: dict[str, np.ndarray],
                    device: Any = "cpu") -> tuple[dict[str, np.ndarray], np.ndarray]:
    """True rates of each stimulus: name -> ``(n_conditions, n_units)``, and the gray screen's ``(n_units,)``.

    The drifting stimuli have a row per screen frame: ``gabors`` row ``c n + k`` is frame ``k`` of Gabor
    condition ``c`` (``n`` = 15 frames of 250 ms), ``drifting_gratings`` likewise (120 frames of 2 s).
    """
    gray = _rates(population, np.full((1, *RENDER_SHAPE), GRAY, dtype=np.float32), device)[0]
    gratings = np.stack([bo.grating_pixels(r.orientation, r.spatial_frequency, r.phase, RENDER_SHAPE)
                         for r in bo.grating_conditions().itertuples()])
    patches = np.stack([stimuli.gabor_frame(r.x_position, r.y_position, r.orientation, t, RENDER_SHAPE)
                        for r in stimuli.gabor_conditions().itertuples() for t in _frame_times(PRESENTATION_S)])
    drifting, row_image = drifting_images()
    flashes = np.stack([np.full(RENDER_SHAPE, GRAY * (1.0 + c), dtype=np.float32) for c in FLASH_COLORS])
    rates = {"natural_scenes": _rates(population, scenes, device), "static_gratings": _rates(population, gratings, device),
             "gabors": _rates(population, patches, device),
             "drifting_gratings": _rates(population, drifting, device)[row_image],
             "flashes": _rates(population, flashes, device)}
    for name, frames in movies.items():
        rates[name] = _movie_rates(population, frames, device)
    return rates, gray


# --------------------------------------------------------------------------------------
# spikes
# --------------------------------------------------------------------------------------
@dataclass
class Modulation:
    """What multiplies the true rates.

    Attributes:
        shared: ``(n_bins,)`` the population's gain per 250-ms bin.  unit_gain_sd: log s.d. of each
        unit's own gain per segment.  running: ``(n_segments,)`` ``s(t)`` in [0, 1].
        running_modulation: ``(n_units,)`` m.  transient_gain: ``(n_units,)``.  transient_s: s.
    """

    shared: np.ndarray
    unit_gain_sd: float
    running: np.ndarray
    running_modulation: np.ndarray
    transient_gain: np.ndarray
    transient_s: float


def _lognormal_gain(sd: float, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Log-normal gains with mean 1, through a table of exp on a 1/512 grid (CPU-independent, fast)."""
    if sd == 0:
        return np.ones(shape)
    steps = np.clip(np.rint(sd * rng.standard_normal(shape) * 512), -8 * 512, 8 * 512).astype(np.int64)
    table = portable.exp(np.arange(-8 * 512, 8 * 512 + 1) / 512.0 - sd * sd / 2)
    return table[steps + 8 * 512]


def segment_rates(schedule: Schedule, rows: slice, rates: dict[str, np.ndarray], gray: np.ndarray,
                  baseline: np.ndarray) -> np.ndarray:
    """``(n_rows, n_units)`` true rates of segments ``rows``: visual units from the tables, the rest at baseline."""
    n_visual = len(gray)
    stim, cond = schedule.stimulus[rows], schedule.condition[rows]
    out = np.tile(baseline, (len(stim), 1))
    out[:, :n_visual] = gray
    for name, table in rates.items():
        shown = np.flatnonzero((stim == name) & (cond >= 0))
        out[shown, :n_visual] = table[cond[shown]]
    return out


def _poisson_times(starts: np.ndarray, duration: np.ndarray, rates: np.ndarray, rng: np.random.Generator
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Poisson spikes in ``[start, start + duration)`` of each row: ``(times, unit)``."""
    counts = rng.poisson(rates * duration[:, None])
    seg, unit = np.nonzero(counts)
    n = counts[seg, unit]
    times = np.repeat(starts[seg], n) + rng.random(int(n.sum())) * np.repeat(duration[seg], n)
    return times, np.repeat(unit, n).astype(np.int32)


def refractory(times: np.ndarray, unit: np.ndarray, n_units: int, refractory_s: float) -> list[np.ndarray]:
    """Sort spikes per unit, drop any closer than ``refractory_s`` to the one kept before it; one array per unit."""
    order = np.lexsort((times, unit))
    times, unit = times[order], unit[order]
    keep = np.ones(len(times), dtype=bool)
    while refractory_s > 0:  # drop the first too-close spike of each run until none is left
        idx = np.flatnonzero(keep)
        close = (np.diff(times[idx]) < refractory_s) & (unit[idx[1:]] == unit[idx[:-1]])
        first = close & ~np.concatenate([[False], close[:-1]])
        if not first.any():
            break
        keep[idx[1:][first]] = False
    times, unit = times[keep], unit[keep]
    bounds = np.searchsorted(unit, np.arange(n_units + 1))
    return [times[bounds[i]:bounds[i + 1]] for i in range(n_units)]


def draw_spikes(schedule: Schedule, rates: dict[str, np.ndarray], gray: np.ndarray, baseline: np.ndarray,
                mod: Modulation, refractory_s: float, rng: np.random.Generator, chunk: int = 4096
                ) -> list[np.ndarray]:
    """Spike times of every unit (module docstring), one sorted float64 array each."""
    n_units = len(baseline)
    norm = 1.0 + mod.running_modulation * mod.running.mean() if len(mod.running) else np.ones(n_units)
    times, units = [], []
    for begin in range(0, len(schedule.start), chunk):
        rows = slice(begin, min(begin + chunk, len(schedule.start)))
        start, duration = schedule.start[rows] + LATENCY_S, schedule.duration[rows]
        r = segment_rates(schedule, rows, rates, gray, baseline)
        r *= (1.0 + mod.running[rows, None] * mod.running_modulation) / norm
        bins = np.minimum((schedule.start[rows] / PRESENTATION_S).astype(np.int64), len(mod.shared) - 1)
        r *= mod.shared[bins, None] * _lognormal_gain(mod.unit_gain_sd, r.shape, rng)
        t, u = _poisson_times(start, duration, np.clip(r, 0, None), rng)
        times.append(t)
        units.append(u)
        onset = np.flatnonzero(schedule.onset[rows])
        if mod.transient_s > 0 and onset.size:  # the onset transient: extra spikes just after the latency
            t, u = _poisson_times(start[onset], np.full(onset.size, mod.transient_s),
                                  np.clip(r[onset], 0, None) * mod.transient_gain, rng)
            times.append(t)
            units.append(u)
    return refractory(np.concatenate(times), np.concatenate(units), n_units, refractory_s)


def drift_out(spikes: list[np.ndarray], presence_ratio: np.ndarray, span_s: float, rng: np.random.Generator
              ) -> list[np.ndarray]:
    """A unit with presence ratio < 0.95 loses every spike in one window of ``(1 - presence_ratio)`` of the
    session (it drifted out of the probe's reach); the others keep their trains."""
    out = []
    for train, presence in zip(spikes, presence_ratio.tolist()):
        if presence < 0.95:
            gap = (1.0 - presence) * span_s
            begin = rng.uniform(0.0, span_s - gap)
            train = train[(train < begin) | (train >= begin + gap)]
        out.append(train)
    return out


def session_modulation(schedule: Schedule, plan: UnitPlan, cfg: SyntheticNeuropixelsConfig,
                       rng: np.random.Generator) -> tuple[RunningSpeed, Modulation]:
    """The running-speed trace over the session and everything that multiplies the true rates."""
    running = running_trace(schedule.stop_s + 1.0, rng)
    mod = Modulation(shared=shared_gain(int(schedule.stop_s / PRESENTATION_S) + 1, cfg.shared_gain_sd,
                                        cfg.shared_gain_tau_s, rng),
                     unit_gain_sd=cfg.unit_gain_sd, running=running_state(schedule, running),
                     running_modulation=plan.running_modulation, transient_gain=plan.transient_gain,
                     transient_s=cfg.transient_s)
    return running, mod


def session_spikes(schedule: Schedule, rates: dict[str, np.ndarray], gray: np.ndarray, baseline: np.ndarray,
                   plan: UnitPlan, mod: Modulation, cfg: SyntheticNeuropixelsConfig, rng: np.random.Generator
                   ) -> list[np.ndarray]:
    """Every unit's spike times (:func:`draw_spikes`), then the presence-ratio dropouts (:func:`drift_out`)."""
    spikes = draw_spikes(schedule, rates, gray, baseline, mod, cfg.refractory_ms / 1000.0, rng)
    return drift_out(spikes, plan.metrics["presence_ratio"], schedule.stop_s, rng)


def running_trace(span_s: float, rng: np.random.Generator) -> RunningSpeed:
    """Running speed (cm/s) at :data:`RUNNING_HZ` over the session, as allensdk's table holds it."""
    n = int(math.ceil(span_s * RUNNING_HZ)) + 1
    start = np.arange(n) / RUNNING_HZ
    return RunningSpeed(start_time=start, end_time=start + 1.0 / RUNNING_HZ, velocity=running_speed_trace(n, rng))


def running_state(schedule: Schedule, running: RunningSpeed) -> np.ndarray:
    """``(n_segments,)`` ``min(speed / RUN_FULL_CM_S, 1)`` at each segment's start."""
    idx = np.minimum((schedule.start * RUNNING_HZ).astype(np.int64), len(running.velocity) - 1)
    return np.minimum(running.velocity[idx] / RUN_FULL_CM_S, 1.0)


# --------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------
def invalid_times(schedule: Schedule, cfg: SyntheticNeuropixelsConfig, probes: Probes, rng: np.random.Generator
                  ) -> pd.DataFrame:
    """``invalid_intervals`` intervals of ``invalid_interval_s`` with Allen's tags (``[type, id, label]``).

    Tags cycle ``stimulus`` (the session's; placed inside a random drifting-grating block, so allensdk
    masks some of its presentations and no natural scene), probe A's and probe F's (anywhere: allensdk
    only warns that their spikes may be invalid).

    Returns:
        ``start_time``, ``stop_time`` (s), ``tags`` (list of 3 str) per interval.
    """
    rows = schedule.presentations
    dg = rows[rows.name == "drifting_gratings"]
    tags = [("EcephysSession", str(cfg.session_id), "stimulus"),
            ("EcephysProbe", str(int(probes.probe_ids[0])), str(probes.names[0])),
            ("EcephysProbe", str(int(probes.probe_ids[-1])), str(probes.names[-1]))]
    out = []
    for k in range(cfg.invalid_intervals):
        tag = tags[k % len(tags)]
        if tag[2] == "stimulus" and len(dg):
            block = dg[dg.block == rng.choice(np.unique(dg.block))]
            lo, hi = float(block.start.min()), float(block.stop.max())
        else:
            lo, hi = 0.0, schedule.stop_s
        begin = rng.uniform(lo, max(lo, hi - cfg.invalid_interval_s))
        out.append({"start_time": begin, "stop_time": min(begin + cfg.invalid_interval_s, hi), "tags": list(tag)})
    return pd.DataFrame(out, columns=["start_time", "stop_time", "tags"])


def _number_text(values: np.ndarray) -> list[str]:
    """Numbers as Allen's text columns hold them ("0.08"); NaN -> "null"."""
    return [NULL if np.isnan(v) else repr(float(v)) for v in values]


def _parameters(name: str, cond: np.ndarray) -> dict[str, Any]:
    """Allen's parameter columns of ``name`` for condition rows ``cond`` (-1 = blank: NaN / "null")."""
    blank = cond < 0
    if name in ("natural_scenes", "natural_movie_one", "natural_movie_three"):
        return {"frame": cond.astype(float)}
    if name == "flashes":
        # text, as Allen's files hold it: allensdk matches the column against an RGB-triplet pattern, then
        # evaluates it ("-1.0" -> -1.0)
        return {"color": [repr(FLASH_COLORS[c]) for c in cond.tolist()]}
    tables = {"static_gratings": bo.grating_conditions(), "gabors": stimuli.gabor_conditions(),
              "drifting_gratings": bo.drifting_grating_conditions()}
    p = tables[name].reindex(cond).reset_index(drop=True)  # blank (-1) -> NaN row
    full = np.where(blank, np.nan, 1.0)
    text = np.where(blank, NULL, "")
    if name == "static_gratings":
        return {"orientation": p.orientation.to_numpy(float), "spatial_frequency": _number_text(p.spatial_frequency),
                "phase": _number_text(p.phase), "contrast": bo.CONTRAST * full,
                "size": [t or FULL_FIELD_SIZE_TEXT for t in text]}
    if name == "drifting_gratings":
        return {"orientation": p.orientation.to_numpy(float), "temporal_frequency": p.temporal_frequency.to_numpy(float),
                "spatial_frequency": _number_text(bo.DG_SPATIAL_FREQUENCY * full), "contrast": bo.CONTRAST * full,
                "phase": [t or DG_PHASE_TEXT for t in text], "size": [t or FULL_FIELD_SIZE_TEXT for t in text]}
    return {"x_position": p.x_position.to_numpy(float), "y_position": p.y_position.to_numpy(float),
            "orientation": p.orientation.to_numpy(float), "spatial_frequency": _number_text(stimuli.GABOR_SF * full),
            "temporal_frequency": stimuli.GABOR_TF * full, "contrast": bo.CONTRAST * full,
            "size": [t or f"[{stimuli.GABOR_SIZE_DEG}, {stimuli.GABOR_SIZE_DEG}]" for t in text],
            "phase": [t or GABOR_PHASE_TEXT for t in text]}


def presentation_tables(schedule: Schedule) -> dict[str, pd.DataFrame]:
    """Allen's ``<stimulus>_presentations`` tables: floats where Allen's are numeric, text ("0.08",
    "[20.0, 20.0]", "null" where a parameter does not apply) where Allen's hold strings."""
    tables: dict[str, pd.DataFrame] = {}
    for name, rows in schedule.presentations.groupby("name", sort=True):
        table = pd.DataFrame({"start_time": rows.start.to_numpy(float), "stop_time": rows.stop.to_numpy(float),
                              "stimulus_name": name, "stimulus_block": rows.block.to_numpy(float),
                              "stimulus_index": STIMULUS_INDEX[name]})
        if name != "spontaneous":
            for column, values in _parameters(name, rows.condition.to_numpy(np.int64)).items():
                table[column] = values
        tables[str(name)] = table
    return tables


# --------------------------------------------------------------------------------------
# the session
# --------------------------------------------------------------------------------------
@dataclass
class Planted:
    """What the session was made with, beyond the truth module: for checks against the written files.

    Attributes:
        plan: each unit's area, probe, metrics, running modulation and transient gain.
        keep: ``(n_units,)`` share of spikes kept.  schedule: the segments.
    """

    plan: UnitPlan
    keep: np.ndarray
    schedule: Schedule


def session_movies(synth: SyntheticConfig, cfg: SyntheticNeuropixelsConfig) -> dict[str, np.ndarray]:
    """Movie one and three (dead-leaves shots, :func:`meiscope.synthetic.stimuli.natural_movie`), from the seed."""
    from meiscope.synthetic.stimuli import natural_movie

    rng = np.random.default_rng(np.random.SeedSequence(entropy=cfg.seed, spawn_key=(cfg.session_id, 1)))
    return {"natural_movie_one": natural_movie(cfg.movie_one_frames, rng),
            "natural_movie_three": natural_movie(cfg.movie_three_frames, rng)}


def simulate_neuropixels_session(synth: SyntheticConfig, cfg: SyntheticNeuropixelsConfig, scenes: np.ndarray,
                                 device: Any = "cpu") -> tuple[EcephysSessionArrays, TruePopulation, Planted]:
    """Simulate the session (nothing is written).

    Args:
        scenes: ``(n_images, H, W)`` the synthetic cortex's scenes (0-255 integers).

    Returns:
        ``(arrays, population, planted)``: what the NWB and cache tables hold, the true units, and
        what else was planted.
    """
    import torch

    from meiscope.synthetic.cortex import session_cells

    if cfg.visp_units > synth.n_cells:
        raise NeuropixelsError(f"params: 'synthetic_neuropixels.visp_units' ({cfg.visp_units}) must be at most "
                               f"synthetic.n_cells ({synth.n_cells}): the VISp units are the cortex's cells")
    unit_rng, schedule_rng, spike_rng = (np.random.default_rng(s) for s in
                                         np.random.SeedSequence(entropy=cfg.seed, spawn_key=(cfg.session_id,)).spawn(3))
    cells = session_cells(spiking_cortex(synth, cfg), 0, scenes, device=device)
    cells = cells.rows(np.arange(cfg.visp_units))
    params, plan, keep = unit_population(cells, cfg, unit_rng)
    visual = TruePopulation(params.rows(np.arange(cells.n_cells))).to(device=device, dtype=torch.float64)
    movies = session_movies(synth, cfg)
    schedule = make_schedule(len(scenes), cfg, schedule_rng)
    running, mod = session_modulation(schedule, plan, cfg, schedule_rng)
    # rates are already those of the recording (scaled by the spikes each unit keeps): thinning a Poisson
    # train is drawing it at the scaled rate
    visual_rates, gray = condition_rates(visual, scenes, movies, device)
    spikes = session_spikes(schedule, visual_rates, gray, params.baseline, plan, mod, cfg, spike_rng)
    probes, channels, peak = probe_layout(cfg.session_id, cfg.channels_per_probe, plan, unit_rng)
    units = Units(unit_ids=params.cell_ids, spike_times=spikes, peak_channel_ids=peak, **plan.metrics)
    arrays = EcephysSessionArrays(
        session_id=cfg.session_id, session_type="brain_observatory_1.1", specimen_id=700_000_000 + cfg.session_id % 100_000,
        age_in_days=110.0, sex="F", genotype="wt/wt", probes=probes, channels=channels, units=units,
        presentations=presentation_tables(schedule),
        scene_templates=np.clip(np.rint(scenes), 0, 255).astype(np.uint8), running_speed=running,
        invalid_times=invalid_times(schedule, cfg, probes, schedule_rng),
        movie_templates={MOVIE_NUMBERS[name]: frames for name, frames in movies.items()})
    return arrays, TruePopulation(params), Planted(plan=plan, keep=keep, schedule=schedule)


def synthesize_neuropixels_session(synth: SyntheticConfig, cfg: SyntheticNeuropixelsConfig, cache_dir: Path,
                                   progress: bool = True, device: Any = "cpu") -> int:
    """Write the synthetic Neuropixels session and its ground truth into ``cache_dir``; return its id."""
    from meiscope.synthetic.scenes import make_scenes

    scenes = make_scenes(synth.n_images, synth.image_height, synth.image_width, synth.seed, progress=progress)
    arrays, population, _ = simulate_neuropixels_session(synth, cfg, scenes, device=device)
    write_session(Path(cache_dir), arrays)
    # the config keys the truth module reads (seed, image size) stay those of the cortex
    save_ground_truth(Path(cache_dir), cfg.session_id, population,
                      {**asdict(spiking_cortex(synth, cfg)), "neuropixels": asdict(cfg)})
    # Allen's unit analysis metrics of the session, computed from its spikes: a file beside the NWB
    from meiscope.recordings.neuropixels.unit_metrics import write_synthetic_analysis_metrics

    write_synthetic_analysis_metrics(Path(cache_dir), cfg.session_id, cfg.seed)
    return cfg.session_id
