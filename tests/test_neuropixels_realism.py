"""The synthetic Neuropixels session is as rough as a real one: each element planted at the defaults of
``synthetic_neuropixels`` and found again in the spikes (session 798911424's figures,
shared/docs/allen-neuropixels.md section 9). The written session's Allen layout (running speed,
invalid_times, stimulus table, allensdk's own analyses) is checked in test_neuropixels.py on the study's
session.

The fixture is the default cortex's VISp cells (200, as 798911424 records) and the default units of the
other areas, shown the natural scenes only (24 small scenes + the blank, 50 repeats) after a gray epoch:
the spikes come from the session's own functions (``unit_population``, ``session_modulation``,
``session_spikes``) without the stimuli whose rates are slow to compute.
"""

import numpy as np
import pytest

from meiscope.config import parse_params
from meiscope.checks import ConfigError
from meiscope.recordings.neuropixels import synthetic as npx
from meiscope.recordings.neuropixels.settings import SyntheticNeuropixelsConfig
from meiscope.recordings.screen import GRAY

N_SCENES, REPEATS, GRAY_S = 24, 50, 240.0


def _scenes_only(rng: np.random.Generator) -> npx.Schedule:
    """A gray epoch, then every scene and the blank ``REPEATS`` times in 250-ms presentations back to back."""
    builder = npx._Builder()
    builder.spontaneous(GRAY_S)
    codes = np.repeat(np.arange(-1, N_SCENES), REPEATS)
    builder.stimulus("natural_scenes", codes[rng.permutation(len(codes))], npx.PRESENTATION_S, npx.PRESENTATION_S)
    return builder.build()


def _simulate(cfg: SyntheticNeuropixelsConfig) -> dict:
    """Spikes of the default units (module docstring) under ``cfg``."""
    import torch

    from meiscope.synthetic.cortex import session_cells
    from meiscope.synthetic.population import TruePopulation
    from meiscope.synthetic.scenes import make_scenes

    synth = parse_params({"synthetic": {"n_cells": cfg.visp_units, "n_images": N_SCENES, "image_height": 92,
                                        "image_width": 118}}).synthetic
    scenes = make_scenes(synth.n_images, synth.image_height, synth.image_width, synth.seed, progress=False)
    unit_rng, schedule_rng, spike_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(7).spawn(3))
    cells = session_cells(npx.spiking_cortex(synth, cfg), 0, scenes)
    params, plan, keep = npx.unit_population(cells, cfg, unit_rng)
    visual = TruePopulation(params.rows(np.arange(cells.n_cells))).to(dtype=torch.float64)
    rates = {"natural_scenes": npx._rates(visual, scenes, "cpu")}
    gray = npx._rates(visual, np.full((1, *scenes.shape[1:]), GRAY, dtype=np.float32), "cpu")[0]
    schedule = _scenes_only(schedule_rng)
    running, mod = npx.session_modulation(schedule, plan, cfg, schedule_rng)
    spikes = npx.session_spikes(schedule, rates, gray, params.baseline, plan, mod, cfg, spike_rng)
    return {"params": params, "plan": plan, "keep": keep, "schedule": schedule, "running": running, "spikes": spikes}


@pytest.fixture(scope="module")
def default_session():
    return _simulate(SyntheticNeuropixelsConfig())


def _counts(spikes: list[np.ndarray], starts: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``(n_presentations, n_units)`` spike counts in ``[start + lo, start + hi)``."""
    return np.stack([np.searchsorted(t, starts + hi) - np.searchsorted(t, starts + lo) for t in spikes], axis=1)


def _gray_epoch_rates(session: dict) -> np.ndarray:
    """``(n_units,)`` Hz over the gray epoch (no stimulus onset: no transient)."""
    return np.array([np.searchsorted(t, GRAY_S) for t in session["spikes"]]) / GRAY_S


def _fano_factors(spikes: list[np.ndarray], schedule: npx.Schedule) -> np.ndarray:
    """``(n_units,)`` each unit's within-condition variance / mean of its natural-scene counts (0-250 ms),
    averaged over the conditions it fires in (NaN if none)."""
    shown = schedule.presentations[schedule.presentations.name == "natural_scenes"]
    counts = _counts(spikes, shown.start.to_numpy(), 0.0, npx.PRESENTATION_S).astype(float)
    condition = shown.condition.to_numpy()
    out = np.full(counts.shape[1], np.nan)
    for unit in range(counts.shape[1]):
        ratios = [c.var(ddof=1) / c.mean() for c in (counts[condition == k, unit] for k in np.unique(condition))
                  if c.mean() > 0]
        out[unit] = np.mean(ratios) if ratios else np.nan
    return out


# --------------------------------------------------------------------------------------
# units per area and Allen's quality metrics
# --------------------------------------------------------------------------------------
def test_unit_counts_per_area_and_the_default_filters_pass_94_of_200_visp_units(default_session):
    plan = default_session["plan"]
    areas, counts = np.unique(plan.areas, return_counts=True)
    expected = {"VISp": 200}
    for _, area in npx.other_area_segments():  # 8 units in every other probe segment (CA1 is on all six probes)
        expected[area] = expected.get(area, 0) + 8
    assert dict(zip(areas.tolist(), counts.tolist())) == expected
    assert set(plan.probes[plan.areas == "VISp"]) == {"probeC"}
    m = plan.metrics
    fails = np.stack([m["amplitude_cutoff"] > 0.1, m["presence_ratio"] < 0.95, m["isi_violations"] > 0.5], axis=1)
    visp = plan.areas == "VISp"
    # allensdk's default filters (UNIT_FILTER_DEFAULTS) as meiscope applies them: 798911424's VISp exactly
    assert (~fails[visp].any(axis=1)).sum() == 94
    assert fails[visp].sum(axis=0).tolist() == [67, 33, 44]  # failing each metric (passing: 133, 167, 156)
    assert (m["quality"] == "good").all()
    for probe, area in npx.other_area_segments():  # every segment holds its share: round(0.47 x 8) = 4 pass
        assert (~fails[(plan.probes == probe) & (plan.areas == area)].any(axis=1)).sum() == 4


def test_failure_pattern_meets_each_metrics_count_and_every_failing_unit_fails_one():
    rng = np.random.default_rng(3)
    for n_fail, counts in [(106, [67, 33, 44]), (4, [3, 1, 2]), (5, [5, 0, 0]), (3, [1, 1, 1]), (0, [0, 0, 0])]:
        pattern = npx.failure_pattern(n_fail, np.array(counts), rng)
        assert pattern.shape == (n_fail, 3) and pattern.sum(axis=0).tolist() == counts
        assert pattern.any(axis=1).all()


def test_units_that_fail_presence_ratio_are_silent_for_their_missing_share_of_the_session(default_session):
    plan, spikes, schedule = default_session["plan"], default_session["spikes"], default_session["schedule"]
    span = schedule.stop_s
    for unit in np.flatnonzero(plan.metrics["presence_ratio"] < 0.95):
        train = spikes[unit]
        if len(train) < 200:
            continue  # too few spikes to see the gap
        longest_gap = np.diff(np.concatenate([[0.0], train, [span]])).max()
        assert longest_gap >= 0.95 * (1.0 - plan.metrics["presence_ratio"][unit]) * span


# --------------------------------------------------------------------------------------
# rates, over-dispersion, running, onset transients
# --------------------------------------------------------------------------------------
def test_spontaneous_rates_are_heavy_tailed_with_fast_spiking_units(default_session):
    rates = _gray_epoch_rates(default_session)
    planted = default_session["params"].baseline  # the truth's spontaneous rate (kept share included)
    steady = default_session["plan"].metrics["presence_ratio"] >= 0.95  # no dropout window
    # the spikes carry each unit's planted rate...
    assert np.corrcoef(np.log(rates[steady] + 0.05), np.log(planted[steady] + 0.05))[0, 1] > 0.9
    assert 0.85 < np.median(rates[steady] / planted[steady]) < 1.15
    # ...and the rates are heavy-tailed: a few Hz typical, fast-spiking units at tens of Hz (798911424)
    assert 1.0 < np.median(rates) < 4.0
    assert np.mean(rates) > 1.8 * np.median(rates)  # a log-normal of log s.d. 1 alone gives 1.65
    # (the log-uniform 0.5-8 Hz rates this replaced had none above 10 Hz)
    assert 0.08 < np.mean(rates > 10.0) < 0.35 and (rates > 25.0).sum() >= 5


def test_natural_scene_counts_are_over_dispersed_like_798911424(default_session):
    visp = default_session["plan"].areas == "VISp"
    fano = _fano_factors(default_session["spikes"], default_session["schedule"])[visp]
    # 798911424: median 1.27 over VISp units (1.34 over those passing the filters); the default session
    # gives 1.28, this fixture 1.22 (its 24 small scenes drive the cells less, and a unit's ratio grows
    # with its mean count). Tolerance [1.15, 1.45]: both real figures and both of ours inside, with a few
    # hundredths to spare for other seeds; a Poisson session (below) sits at 1.0, outside it
    assert 1.15 < np.nanmedian(fano) < 1.45
    poisson = _simulate(SyntheticNeuropixelsConfig(shared_gain_sd=0.0, unit_gain_sd=0.0, visp_units=60,
                                                   other_area_units=0, running_modulation=[0.0, 0.0]))
    assert 0.9 < np.nanmedian(_fano_factors(poisson["spikes"], poisson["schedule"])) < 1.08


def test_running_modulates_each_units_rate_by_its_planted_factor(default_session):
    running, spikes, plan = default_session["running"], default_session["spikes"], default_session["plan"]
    schedule = default_session["schedule"]
    gray = np.flatnonzero(schedule.stimulus == "spontaneous")  # 250-ms segments of the gray epoch
    speed = np.interp(schedule.start[gray], running.start_time, running.velocity)  # the recorded trace
    run, still = speed >= 5.0, speed <= 0.25  # fully running (speed / 5 cm/s >= 1) or nearly still
    assert run.sum() >= 100 and still.sum() >= 100  # the mouse both runs and sits
    counts = _counts(spikes, schedule.start[gray] + npx.LATENCY_S, 0.0, npx.PRESENTATION_S).astype(float)
    ratio = counts[run].mean(axis=0) / np.maximum(counts[still].mean(axis=0), 1e-9)
    busy = (counts.sum(axis=0) > 1000) & (plan.metrics["presence_ratio"] >= 0.95)
    assert busy.sum() >= 40
    planted = 1.0 + plan.running_modulation[busy]  # rate running / rate still (running_modulation: m)
    assert np.corrcoef(ratio[busy], planted)[0, 1] > 0.8
    # measured = c x planted for every unit: c, common to all units, is the slow shared gain's mean over
    # the running bins / over the still ones (0.87 here: bouts cluster within its 20-s time constant).
    # Were running ignored, measured / planted = c / (1 + m) would spread by about a third of its median
    scale = ratio[busy] / planted
    q25, median, q75 = np.quantile(scale, [0.25, 0.5, 0.75])
    assert 0.75 < median < 1.25 and (q75 - q25) / median < 0.2


def test_onset_transients_follow_each_visual_units_planted_gain(default_session):
    plan, spikes, schedule = default_session["plan"], default_session["spikes"], default_session["schedule"]
    shown = schedule.presentations[schedule.presentations.name == "natural_scenes"]
    starts = shown.start.to_numpy()
    lat, length = npx.LATENCY_S, SyntheticNeuropixelsConfig().transient_s
    early = _counts(spikes, starts, lat + 0.005, lat + length - 0.005).sum(axis=0) / (length - 0.01)
    late = _counts(spikes, starts, lat + length + 0.02, npx.PRESENTATION_S).sum(axis=0) / (
        npx.PRESENTATION_S - lat - length - 0.02)
    busy = late * len(starts) * 0.1 > 200  # enough spikes in both windows
    psth_ratio = early[busy] / late[busy]
    gain = plan.transient_gain[busy]
    visual = np.isin(plan.areas[busy], npx.VISUAL_AREAS)
    assert visual.sum() >= 40 and (~visual).sum() >= 20
    # visual areas: the rate just after the latency is (1 + gain) times the rest of the presentation's
    assert np.corrcoef(psth_ratio[visual], 1.0 + gain[visual])[0, 1] > 0.7
    assert abs(np.median(psth_ratio[visual] / (1.0 + gain[visual])) - 1.0) < 0.15
    assert 0.85 < np.median(psth_ratio[~visual]) < 1.15 and (gain[~visual] == 0).all()  # hippocampus, midbrain


def test_the_planted_share_of_visp_units_responds_and_the_responsive_kinds_keep_their_proportions(default_session):
    cfg = SyntheticNeuropixelsConfig()
    params, plan = default_session["params"], default_session["plan"]
    visp = plan.areas == "VISp"
    assert (params.kinds[visp] != "unresponsive").mean() == pytest.approx(cfg.visp_responsive_fraction, abs=0.005)
    cortex = parse_params({}).synthetic
    spiking = npx.spiking_cortex(cortex, cfg)
    assert spiking.kinds.unresponsive == pytest.approx(1.0 - cfg.visp_responsive_fraction)
    for kind in ("simple", "complex", "conjunction", "centre_surround", "suppressed"):  # scaled alike
        assert getattr(spiking.kinds, kind) == pytest.approx(
            getattr(cortex.kinds, kind) * cfg.visp_responsive_fraction / (1.0 - cortex.kinds.unresponsive))
    assert (spiking.seed, spiking.n_cells) == (cortex.seed, cortex.n_cells)


def test_a_cortex_without_responsive_kinds_is_refused_naming_the_key():
    from meiscope.recordings.neuropixels.cache import NeuropixelsError

    silent = parse_params({"synthetic": {"kinds": {"simple": 0.0, "complex": 0.0, "conjunction": 0.0,
                                                   "centre_surround": 0.0, "suppressed": 0.0, "unresponsive": 1.0}}})
    with pytest.raises(NeuropixelsError, match="'synthetic_neuropixels.visp_responsive_fraction'"):
        npx.spiking_cortex(silent.synthetic, SyntheticNeuropixelsConfig())


# --------------------------------------------------------------------------------------
# settings
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("values,key", [
    ({"visp_pass_fraction": 1.5}, "synthetic_neuropixels.visp_pass_fraction"),
    ({"visp_responsive_fraction": -0.1}, "synthetic_neuropixels.visp_responsive_fraction"),
    ({"presence_ratio_fail": 0.6}, "synthetic_neuropixels.presence_ratio_fail"),
    ({"amplitude_cutoff_fail": 0.1}, "synthetic_neuropixels.amplitude_cutoff_fail"),
    ({"rate_log_sd": float("nan")}, "synthetic_neuropixels.rate_log_sd"),
    ({"fast_spiking_rate_hz": [50.0, 10.0]}, "synthetic_neuropixels.fast_spiking_rate_hz"),
    ({"unit_gain_sd": -0.1}, "synthetic_neuropixels.unit_gain_sd"),
    ({"running_modulation": [-2.0, 1.0]}, "synthetic_neuropixels.running_modulation"),
    ({"transient_s": 0.5}, "synthetic_neuropixels.transient_s"),
    ({"channels_per_probe": 4}, "synthetic_neuropixels.channels_per_probe"),
    ({"invalid_intervals": -1}, "synthetic_neuropixels.invalid_intervals"),
])
def test_bad_realism_settings_are_refused_naming_the_key(values, key):
    with pytest.raises(ConfigError) as err:
        parse_params({"synthetic_neuropixels": values})
    message = str(err.value)
    assert f"'{key}'" in message and "\n" not in message


def test_more_visp_units_than_cortex_cells_is_one_line_error(tmp_path):
    from meiscope.recordings.neuropixels.cache import NeuropixelsError

    params = parse_params({"synthetic": {"n_cells": 20, "n_images": 3, "image_height": 46, "image_width": 59},
                           "synthetic_neuropixels": {"visp_units": 30}})
    with pytest.raises(NeuropixelsError, match="'synthetic_neuropixels.visp_units' \\(30\\) must be at most "
                                               "synthetic.n_cells \\(20\\)"):
        npx.simulate_neuropixels_session(params.synthetic, params.synthetic_neuropixels, np.zeros((3, 46, 59)))
