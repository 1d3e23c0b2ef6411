"""The synthetic cortex outside the model's assumptions: each element is planted and then found again.

Temporal filters and adaptation (meiscope.synthetic.dynamics), per-cell spike amplitudes and a saturating
indicator (meiscope.synthetic.fluorescence), gaze shifts, fresh scenes from unseen photographs, and tuning
drift and wrong cell matches between the sessions of an experiment container. Every default is the
in-family cortex, and every bad setting is a one-line ConfigError naming its key.
"""

import dataclasses

import numpy as np
import pytest
import torch

from meiscope.config import (OUT_OF_FAMILY_SETTINGS, SYNTHETIC_PROFILES, CellKindFractions, ConfigError, SyntheticConfig,
                             parse_params, recorded_config)
from meiscope.recordings.container import layout
from meiscope.recordings.container import synthetic as cs
from meiscope.recordings.container.settings import SyntheticContainerConfig
from meiscope.recordings.screen import GRAY, PIXELS_PER_DEGREE, SCENE_HEIGHT_PX, SCENE_WIDTH_PX
from meiscope.synthetic import cortex
from meiscope.synthetic import dynamics as dyn
from meiscope.synthetic import fluorescence as fl
from meiscope.synthetic import scenes as sc
from meiscope.synthetic.population import load_true_population, sample_cells

FRAME_S = 1.0 / 30.0  # one 2-photon / movie frame
OUT_OF_FAMILY_KEYS = ("temporal_peak_ms", "temporal_biphasic", "adaptation_strength", "adaptation_tau_s",
                      "spike_amplitude_sd", "indicator_hill_n", "indicator_kd_spikes", "saccade_fraction",
                      "saccade_amplitude_deg", "fresh_scene_sources", "drift_rf_deg", "drift_orientation_deg",
                      "mismatch_fraction")  # the settings of dynamics, calcium, gaze, drift and fresh scenes
PLANTED = dict(temporal_peak_ms=[40.0, 80.0], temporal_biphasic=0.3, adaptation_strength=1.0, adaptation_tau_s=1.0,
               spike_amplitude_sd=0.4, indicator_hill_n=2.3, indicator_kd_spikes=10.0, saccade_fraction=0.25,
               drift_rf_deg=2.0, drift_orientation_deg=10.0, mismatch_fraction=0.1, fresh_scene_sources="unseen")
SYNTHETIC = SyntheticConfig(n_cells=30, n_images=10, repeats=4, spontaneous_s=5.0,
                            kinds=CellKindFractions(simple=0.4, complex=0.3, conjunction=0.1, unresponsive=0.2),
                            **PLANTED)
CONTAINER = SyntheticContainerConfig(static_grating_repeats=2, drifting_grating_repeats=2, sparse_noise_frames=60,
                                     movie_repeats=3, movie_one_frames=40, movie_two_frames=30, movie_three_frames=50)


@pytest.fixture(scope="module")
def container(tmp_path_factory):
    """A tiny container with every element outside the model's family switched on (~15 s)."""
    folder = tmp_path_factory.mktemp("out_of_family")
    ids = cs.synthesize_containers(SYNTHETIC, CONTAINER, ["A", "B", "C"], folder, progress=False)
    sessions = {session: cs.session_id(SYNTHETIC, CONTAINER, 0, session) for session in ("A", "B", "C")}
    assert sorted(sessions.values()) == ids
    return folder, sessions


# --------------------------------------------------------------------------------------
# temporal filter and adaptation
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("biphasic", [0.0, 0.3])
def test_a_flash_response_peaks_at_each_cells_planted_time_to_peak(biphasic):
    peaks_ms = np.array([40.0, 63.0, 80.0, 120.0])
    dynamics = dyn.CellDynamics(peak_s=peaks_ms / 1000.0, biphasic=biphasic, adaptation_strength=0.0,
                                adaptation_tau_s=1.0)
    flash = np.zeros((400, len(peaks_ms)))
    flash[0] = 1.0  # one 8.3-ms step of contrast, then gray
    response = dyn.respond(flash, dynamics)
    found_s = response.argmax(axis=0) * dyn.SUBSTEP_S
    # within one frame of the planted time to peak (the negative lobe pulls a biphasic peak a little earlier)
    np.testing.assert_array_less(np.abs(found_s - peaks_ms / 1000.0), FRAME_S)
    assert np.all(response[0] < 1e-12)  # causal: an alpha lobe starts at 0
    # the negative lobe: within 10 times its time to peak the filtered flash turns negative and is
    # rectified away (the cell falls silent); a monophasic filter stays positive all along
    t = np.arange(len(flash))[:, None] * dyn.SUBSTEP_S
    window = (t > 0) & (t < 10 * peaks_ms / 1000.0)
    silent = np.any((response == 0.0) & window, axis=0)
    assert np.all(silent) if biphasic else not np.any(silent)


def test_a_sustained_step_is_passed_at_one_minus_the_biphasic_weight_after_a_transient():
    biphasic = 0.4
    dynamics = dyn.CellDynamics(peak_s=np.array([0.05, 0.1]), biphasic=biphasic, adaptation_strength=0.0,
                                adaptation_tau_s=1.0)
    step = np.full((1200, 2), 2.0)  # 10 s of a constant drive from rest
    response = dyn.respond(step, dynamics)
    np.testing.assert_allclose(response[-1], 2.0 * (1.0 - biphasic), rtol=1e-6)  # the sustained level
    assert np.all(response.max(axis=0) > 1.05 * response[-1])  # band-pass: a transient above it first


def test_adaptation_builds_up_with_the_planted_time_constant():
    tau_s, strength, drive = 0.7, 2.0, 1.5
    dynamics = dyn.CellDynamics(peak_s=np.zeros(1), biphasic=0.0, adaptation_strength=strength, adaptation_tau_s=tau_s)
    response = dyn.respond(np.full((600, 1), drive), dynamics)[:, 0]
    assert response[0] == pytest.approx(drive)  # unadapted at onset
    assert response[-1] == pytest.approx(drive / (1 + strength * drive), rel=1e-3)  # fully adapted
    # invert the divisive stage to the adaptation state, then fit its exponential approach in log space
    state = (drive / response - 1.0) / strength
    t = np.arange(len(response)) * dyn.SUBSTEP_S
    use = (t > 0.05) & (t < 3 * tau_s)
    slope = np.polyfit(t[use], np.log(1.0 - state[use] / drive), 1)[0]
    assert -1.0 / slope == pytest.approx(tau_s, rel=0.02)


def test_movie_rates_go_through_each_cells_filter_and_start_from_rest(container):
    folder, sessions = container
    cells = load_true_population(folder, sessions["B"]).params
    n = cells.n_cells
    timeline = layout.Timeline(onsets_s=np.arange(120) * FRAME_S, durations_s=np.full(120, FRAME_S),
                               stimulus=np.array(["natural_movie_one"] * 120, dtype=object),
                               condition=np.zeros(120, dtype=np.int64), trial=np.zeros(120, dtype=np.int64))
    drives = {"natural_movie_one": np.full((1, n), 1.0)}  # one frame held for 4 s: drive = semisaturation
    static = cells.baseline + cells.rate_max / 2.0
    off = dyn.CellDynamics(np.zeros(n), 0.0, 0.0, 1.0)
    rows, rates = cs.dynamic_rates(timeline, drives, cells, off)
    np.testing.assert_array_equal(rows, np.arange(120))
    np.testing.assert_allclose(rates, np.tile(static, (120, 1)), rtol=1e-12)  # no dynamics: the static rate
    filtered = dyn.CellDynamics(np.full(n, 0.1), 0.0, 0.0, 1.0)
    _, rates = cs.dynamic_rates(timeline, drives, cells, filtered)
    driven = cells.rate_max > 0
    assert driven.sum() > 10
    above = (rates - cells.baseline)[:, driven] / (static - cells.baseline)[driven]
    assert np.all(above[0] < 0.1)  # the first frame: the 100-ms filter has barely started
    np.testing.assert_allclose(above[-1], 1.0, rtol=1e-6)  # a monophasic filter passes a sustained drive


# --------------------------------------------------------------------------------------
# calcium: per-cell amplitudes and a saturating indicator
# --------------------------------------------------------------------------------------
def test_per_cell_spike_amplitudes_are_recovered_from_the_calcium_with_the_planted_spread():
    n_cells, planted_sd, mean = 300, 0.4, 0.15
    amplitude = fl.draw_amplitudes(n_cells, mean, planted_sd, np.random.default_rng(3))
    onsets = np.arange(240) * 0.25
    rates = np.full((240, n_cells), 8.0)
    traces = fl.simulate_traces(onsets, 0.25, rates, 1900, np.random.default_rng(4), tau_rise_s=0.05,
                                tau_decay_s=0.3, spike_amplitude_dff=mean, noise_std_dff=0.05, neuropil_r=0.7,
                                indicator=fl.Indicator(amplitude=amplitude, hill_n=0.0, kd_spikes=10.0))
    np.testing.assert_array_equal(traces.spike_amplitude, amplitude)
    # calcium area per spike is the cell's amplitude times one kernel's area: the same factor for every cell
    recovered = traces.calcium.sum(axis=1) / traces.n_spikes
    assert np.std(np.log(recovered)) == pytest.approx(planted_sd, rel=0.15)
    assert np.corrcoef(np.log(recovered), np.log(amplitude))[0, 1] > 0.99


def test_the_indicator_follows_the_planted_hill_curve_and_saturates():
    hill_n, kd = 2.3, 10.0
    spikes = np.array([1.0, 2.0, 5.0, 10.0, 20.0, 40.0])
    dff = fl.hill_dff(spikes, hill_n, kd)
    assert fl.hill_dff(np.array([1e-6]), hill_n, kd)[0] == pytest.approx(1e-6, rel=1e-3)  # one amplitude at rest
    doubled = fl.hill_dff(2 * spikes, hill_n, kd)
    np.testing.assert_array_less(doubled[spikes >= kd], 2 * dff[spikes >= kd])  # saturates beyond Kd...
    np.testing.assert_array_less(2 * dff[spikes <= 2], doubled[spikes <= 2])  # ...supralinear for a few spikes
    # normalised to its ceiling, dF/F is the indicator's occupancy H(c) = c^n / (c^n + Kd^n) of the total
    # calcium c (rest + spikes) above its occupancy at rest: the planted Hill curve
    rest = fl.CA_REST_OVER_KD * kd
    ceiling = fl.hill_dff(np.array([1e9]), hill_n, kd)[0]

    def occupancy(c: np.ndarray) -> np.ndarray:
        return c ** hill_n / (c ** hill_n + kd ** hill_n)

    planted = (occupancy(rest + spikes) - occupancy(rest)) / (1 - occupancy(rest))
    np.testing.assert_allclose(dff / ceiling, planted, rtol=1e-6)
    np.testing.assert_array_equal(fl.hill_dff(spikes, 0.0, kd), spikes)  # hill_n 0: linear


def test_saturated_traces_stay_below_the_indicators_ceiling():
    amplitude = np.array([0.1, 0.3])
    onsets = np.arange(40) * 0.25
    rates = np.full((40, 2), 300.0)  # firing far beyond Kd
    indicator = fl.Indicator(amplitude=amplitude, hill_n=2.3, kd_spikes=3.0)
    saturated = fl.simulate_traces(onsets, 0.25, rates, 300, np.random.default_rng(1), tau_rise_s=0.05,
                                   tau_decay_s=0.3, spike_amplitude_dff=0.15, noise_std_dff=0.05, neuropil_r=0.7,
                                   indicator=indicator)
    linear = fl.simulate_traces(onsets, 0.25, rates, 300, np.random.default_rng(1), tau_rise_s=0.05,
                                tau_decay_s=0.3, spike_amplitude_dff=0.15, noise_std_dff=0.05, neuropil_r=0.7,
                                indicator=dataclasses.replace(indicator, hill_n=0.0))
    ceiling = amplitude * fl.hill_dff(np.array([1e7]), 2.3, 3.0)[0]
    np.testing.assert_array_less(saturated.calcium.max(axis=1), ceiling * (1 + 1e-6))
    assert np.all(linear.calcium.max(axis=1) > 2 * ceiling)


# --------------------------------------------------------------------------------------
# gaze shifts and fresh scenes
# --------------------------------------------------------------------------------------
def _translate(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """The test's own translation: pad with gray, then cut the shifted window."""
    pad = max(abs(dy), abs(dx))
    padded = np.pad(image, pad, constant_values=GRAY)
    h, w = image.shape
    return padded[pad - dy: pad - dy + h, pad - dx: pad - dx + w]


def test_gaze_shifts_have_the_planted_share_and_sizes():
    shifts = dyn.draw_gaze_shifts(4000, 0.2, (2.0, 6.0), np.random.default_rng(0))
    size = np.hypot(shifts[:, 0], shifts[:, 1])
    moved = size > 0
    assert moved.mean() == pytest.approx(0.2, abs=0.02)
    assert size[moved].min() >= 2.0 and size[moved].max() <= 6.0
    image = np.random.default_rng(1).uniform(0, 255, (20, 30))
    np.testing.assert_array_equal(dyn.shift_image(image, np.array([0.3, -0.5]), 10.0), _translate(image, 3, -5))


def test_a_shifted_presentations_true_rate_is_the_cells_rate_on_the_shifted_image(container):
    folder, sessions = container
    population = load_true_population(folder, sessions["B"]).to(dtype=torch.float64)
    scenes = sc.make_scenes(3, 230, 294, 5).astype(np.uint8)  # a quarter-size template: 2.42 px / deg
    templates = cs.ContainerTemplates(scenes=scenes, movies={}, sparse_noise=np.zeros((1, 16, 28), np.uint8))
    timeline = layout.Timeline(onsets_s=np.arange(4) * 0.25, durations_s=np.full(4, 0.25),
                               stimulus=np.array(["natural_scenes"] * 4, dtype=object),
                               condition=np.array([2, -1, 0, 1]), trial=np.arange(4))
    shifts = np.array([[0.0, 0.0], [3.0, -4.0], [-6.0, 2.0]])  # the shown (non-blank) presentations, degrees
    columns = np.arange(0, population.n_cells, 2)
    rows, rates = cs.gaze_rates(timeline, shifts, population, templates, columns)
    np.testing.assert_array_equal(rows, [2, 3])  # the blank is skipped; the unshifted one keeps its static rate
    ppd = PIXELS_PER_DEGREE * 294 / SCENE_WIDTH_PX  # the template fills the scene's place on the screen
    for row, image, (down, right) in zip(rates, scenes[[0, 1]], shifts[1:]):
        moved = _translate(image.astype(np.float64), round(down * ppd), round(right * ppd))
        expected = population(torch.from_numpy(moved[None])).numpy()[0, columns]
        np.testing.assert_allclose(row, expected, rtol=1e-12)
        unmoved = population(torch.from_numpy(image[None].astype(np.float64))).numpy()[0, columns]
        assert np.abs(row - unmoved).max() > 1e-3  # the shift matters to some cell


def test_gaze_shifts_are_recorded_in_the_ground_truth(container):
    folder, sessions = container
    shifts = cs.load_planted(folder, sessions["B"])["gaze_shift_deg"]
    assert shifts.shape == (10 * 4, 2)  # one per shown scene (blank sweeps excluded)
    size = np.hypot(shifts[:, 0], shifts[:, 1])
    assert 0 < np.sum(size > 0) < len(size)
    low, high = SYNTHETIC.saccade_amplitude_deg
    assert np.all((size == 0) | ((size >= low) & (size <= high)))
    assert len(cs.load_planted(folder, sessions["A"])["gaze_shift_deg"]) == 0  # no scenes in A


def test_unseen_fresh_scenes_share_no_photograph_with_the_sessions(monkeypatch):
    assert not set(sc.UNSEEN_PHOTOGRAPHS) & set(sc.PHOTOGRAPHS)
    unseen, session = sc.load_photographs(sc.UNSEEN_PHOTOGRAPHS), sc.load_photographs(sc.PHOTOGRAPHS)
    assert len(unseen) == len(sc.UNSEEN_PHOTOGRAPHS)  # every one is bundled: "unseen" loses no source

    def small(image: np.ndarray) -> np.ndarray:
        from skimage.transform import resize
        return resize(image, (64, 64), anti_aliasing=True).ravel()

    # not the same scene under another name (motorcycle_right, the stereo twin of a session photograph,
    # correlates 0.73 with it and is left out)
    worst = max(abs(np.corrcoef(small(a), small(b))[0, 1]) for a in unseen for b in session)
    assert worst < 0.5
    requested = []
    real = sc.load_photographs
    monkeypatch.setattr(sc, "load_photographs", lambda names=sc.PHOTOGRAPHS: requested.append(tuple(names))
                        or real(names))
    fresh = sc.make_scenes(6, 40, 52, [3, 1], sources="unseen")
    assert requested == [sc.UNSEEN_PHOTOGRAPHS]
    assert not np.array_equal(fresh, sc.make_scenes(6, 40, 52, [3, 1]))
    with pytest.raises(ValueError, match="sources"):
        sc.make_scenes(2, 40, 52, 0, sources="other")


def test_the_truths_fresh_scenes_come_from_the_recorded_sources(container, monkeypatch):
    from meiscope import truth

    folder, sessions = container
    seen = []
    real = sc.make_scenes
    monkeypatch.setattr(sc, "make_scenes", lambda *a, **k: seen.append(k.get("sources")) or real(*a, **k))
    images = truth.fresh_model_images(folder, sessions["B"], 3, 0, [0.0, 1.0, 0.0, 1.0], (18, 32), 127.0, 50.0)
    assert images.shape == (3, 18, 32) and seen == ["unseen"]


# --------------------------------------------------------------------------------------
# across sessions: drift and wrong matches
# --------------------------------------------------------------------------------------
def test_tuning_drift_moves_rf_centres_and_orientations_by_the_planted_spread():
    n = 4000
    cells = sample_cells(n, {"simple": 1.0}, (4.0, 8.0), (1.0, 30.0), 0.5, np.arange(n), np.random.default_rng(0))
    drifted, planted = cs.drift_cells(cells, SYNTHETIC, np.random.default_rng(1))
    dx = (drifted.x - cells.x) * SCENE_WIDTH_PX / PIXELS_PER_DEGREE
    dy = (drifted.y - cells.y) * SCENE_HEIGHT_PX / PIXELS_PER_DEGREE
    turn = np.rad2deg((drifted.orientation - cells.orientation + np.pi / 2) % np.pi - np.pi / 2)
    np.testing.assert_allclose(dx, planted["drift_x_deg"], atol=1e-9)
    np.testing.assert_allclose(turn, planted["drift_orientation_deg"], atol=1e-9)
    assert np.std(np.r_[dx, dy]) == pytest.approx(SYNTHETIC.drift_rf_deg, rel=0.05)
    assert np.std(turn) == pytest.approx(SYNTHETIC.drift_orientation_deg, rel=0.05)
    np.testing.assert_array_equal(drifted.sigma, cells.sigma)  # only the centre and orientation move


def test_the_container_records_drift_and_wrong_matches_of_the_planted_sizes(container):
    folder, sessions = container
    b = load_true_population(folder, sessions["B"]).params
    assert not cs.load_planted(folder, sessions["B"])["mismatched"].any()  # B is the reference
    for session in ("A", "C"):
        planted = cs.load_planted(folder, session_id := sessions[session])
        truth = load_true_population(folder, session_id).params
        n = len(planted["true_cell_ids"])
        # exactly round(fraction * n) cells (2 at least) are recorded under another cell's id
        assert planted["mismatched"].sum() == max(round(SYNTHETIC.mismatch_fraction * n), 2)
        np.testing.assert_array_equal(truth.cell_ids, planted["recorded_cell_ids"])
        assert set(truth.cell_ids) == set(planted["true_cell_ids"])
        # each recorded row is the B cell it truly is, moved by the planted drift
        assert np.all(np.diff(b.cell_ids) > 0)
        in_b = np.searchsorted(b.cell_ids, planted["true_cell_ids"])
        np.testing.assert_allclose((truth.x - b.x[in_b]) * SCENE_WIDTH_PX / PIXELS_PER_DEGREE,
                                   planted["drift_x_deg"], atol=1e-4)
        np.testing.assert_allclose((truth.y - b.y[in_b]) * SCENE_HEIGHT_PX / PIXELS_PER_DEGREE,
                                   planted["drift_y_deg"], atol=1e-4)
        spread = np.std(np.r_[planted["drift_x_deg"], planted["drift_y_deg"]])
        assert spread == pytest.approx(SYNTHETIC.drift_rf_deg, rel=0.35)  # ~50 draws
        assert np.std(planted["drift_orientation_deg"]) == pytest.approx(SYNTHETIC.drift_orientation_deg, rel=0.35)
        low, high = SYNTHETIC.temporal_peak_ms
        assert np.all((planted["temporal_peak_ms"] >= low) & (planted["temporal_peak_ms"] <= high))
        assert np.std(np.log(planted["spike_amplitude_dff"])) > 0.2  # per-cell amplitudes, not one


def test_mismatches_swap_ids_within_the_recorded_cells():
    ids = np.arange(100, 140)
    out = cs.mismatch_ids(ids, 0.1, np.random.default_rng(0))
    assert np.sum(out != ids) == 4 and sorted(out) == sorted(ids)
    np.testing.assert_array_equal(cs.mismatch_ids(ids, 0.0, np.random.default_rng(0)), ids)


# --------------------------------------------------------------------------------------
# defaults: the in-family cortex
# --------------------------------------------------------------------------------------
def test_every_default_reproduces_the_in_family_cortex():
    default = SyntheticConfig()
    assert not cs.out_of_family_active(default)
    for key in ("temporal_peak_ms", "adaptation_strength", "spike_amplitude_sd", "indicator_hill_n",
                "saccade_fraction", "drift_rf_deg", "drift_orientation_deg", "mismatch_fraction"):
        assert cs.out_of_family_active(dataclasses.replace(default, **{key: PLANTED[key]})), key
    # the recorded config of an in-family cortex is the one written before these settings existed
    assert set(OUT_OF_FAMILY_KEYS) <= set(OUT_OF_FAMILY_SETTINGS)
    assert not set(OUT_OF_FAMILY_KEYS) & set(recorded_config(default))
    changed = {key for key in OUT_OF_FAMILY_KEYS if getattr(SYNTHETIC, key) != getattr(default, key)}
    assert len(changed) >= 10 and changed <= set(recorded_config(SYNTHETIC))  # what was planted is recorded
    # the dynamics at their defaults: identity filter, no adaptation, nothing drawn
    rng = np.random.default_rng(0)
    dynamics = dyn.draw_dynamics(5, tuple(default.temporal_peak_ms), default.temporal_biphasic,
                                 default.adaptation_strength, default.adaptation_tau_s, rng)
    assert not dynamics.active and rng.random() == np.random.default_rng(0).random()
    drive = np.random.default_rng(1).uniform(0, 3, (50, 5))
    np.testing.assert_array_equal(dyn.respond(drive, dynamics), drive)
    assert not np.any(dyn.draw_gaze_shifts(50, default.saccade_fraction, (5.0, 10.0), np.random.default_rng(0)))
    # scenes: "session" is the generator as it was
    np.testing.assert_array_equal(sc.make_scenes(4, 40, 52, 3), sc.make_scenes(4, 40, 52, 3, sources="session"))
    # calcium: linear with one amplitude is what an indicator with hill_n 0 and equal amplitudes gives
    args = (np.arange(20) * 0.25, 0.25, np.full((20, 3), 10.0), 160)
    kwargs = dict(tau_rise_s=0.05, tau_decay_s=0.3, spike_amplitude_dff=0.15, noise_std_dff=0.05, neuropil_r=0.7)
    plain = fl.simulate_traces(*args, np.random.default_rng(2), **kwargs)
    off = fl.simulate_traces(*args, np.random.default_rng(2), **kwargs,
                             indicator=fl.Indicator(np.full(3, 0.15), hill_n=0.0, kd_spikes=10.0))
    np.testing.assert_allclose(off.dff, plain.dff, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(plain.spike_amplitude, np.full(3, 0.15))


def test_the_out_of_family_profile_switches_every_element_on_and_set_keys_win():
    chosen = parse_params({"synthetic": {"profile": "out_of_family"}}).synthetic
    default = SyntheticConfig()
    for key in OUT_OF_FAMILY_KEYS:
        assert key in SYNTHETIC_PROFILES["out_of_family"], key
        assert getattr(chosen, key) == SYNTHETIC_PROFILES["out_of_family"][key]
    assert cs.out_of_family_active(chosen) and chosen.fresh_scene_sources == "unseen"
    kept = parse_params({"synthetic": {"profile": "out_of_family", "saccade_fraction": 0.0}}).synthetic
    assert kept.saccade_fraction == 0.0
    plain = parse_params({"synthetic": {"profile": "gabor_family"}}).synthetic
    assert all(getattr(plain, key) == getattr(default, key) for key in OUT_OF_FAMILY_KEYS)


@pytest.mark.parametrize("recording", ["two_photon", "container", "neuropixels"])
def test_the_data_stamp_names_the_new_settings_only_when_they_are_used(recording):
    from meiscope.recordings import recording_of

    def stamp(synthetic: dict) -> dict:
        params = parse_params({"data": {"recording": recording}, "synthetic": synthetic})
        written = recording_of(params).synthetic_stamp(params)
        return written.get("synthetic", written)

    default = stamp({})  # the committed default data's stamp: unchanged by keys it does not use
    assert not set(default) & set(OUT_OF_FAMILY_KEYS)
    assert set(default["kinds"]) == {"simple", "complex", "conjunction", "unresponsive"}
    changed = stamp({"profile": "out_of_family"})  # data made under another cortex do not "match"
    moved = {key for key in OUT_OF_FAMILY_KEYS  # the profile's keys that differ from the in-family defaults
             if SYNTHETIC_PROFILES["out_of_family"][key] != getattr(SyntheticConfig(), key)}
    assert len(moved) >= 10 and moved <= set(changed) and changed["kinds"]["suppressed"] > 0


@pytest.mark.parametrize("key,value", [
    ("temporal_peak_ms", [1.0, 2.0]), ("temporal_peak_ms", [80.0, 40.0]), ("temporal_peak_ms", [0.0, 50.0]),
    ("temporal_peak_ms", [40.0, float("nan")]), ("temporal_biphasic", 1.0), ("temporal_biphasic", -0.1),
    ("adaptation_strength", -1.0), ("adaptation_strength", float("inf")), ("adaptation_tau_s", 0.0),
    ("spike_amplitude_sd", 3.0), ("spike_amplitude_sd", float("nan")), ("indicator_hill_n", 0.5),
    ("indicator_hill_n", 5.0), ("indicator_hill_n", float("nan")), ("indicator_kd_spikes", 0.0),
    ("saccade_fraction", 1.5), ("saccade_amplitude_deg", [10.0, 5.0]), ("saccade_amplitude_deg", [-1.0, 2.0]),
    ("saccade_amplitude_deg", [1.0]), ("fresh_scene_sources", "photos"), ("drift_rf_deg", -1.0),
    ("drift_orientation_deg", 100.0), ("mismatch_fraction", 0.6),
])
def test_out_of_range_settings_are_one_line_errors_naming_the_key(key, value):
    with pytest.raises(ConfigError) as err:
        parse_params({"synthetic": {key: value}})
    message = str(err.value)
    assert f"synthetic.{key}" in message and "\n" not in message


def test_params_yaml_lists_each_key_with_its_default_and_profile_value_without_setting_it():
    import re
    from pathlib import Path

    import yaml

    text = (Path(__file__).resolve().parents[1] / "params.yaml").read_text()
    assert not set(OUT_OF_FAMILY_KEYS) & set(yaml.safe_load(text)["synthetic"])  # else the profile is pinned
    for key in OUT_OF_FAMILY_KEYS:
        found = re.search(rf"^  # {key}: (.+?)\s+# out_of_family (.+?):", text, flags=re.M)
        assert found, key
        default, profile = (yaml.safe_load(v) for v in found.groups())
        assert default == getattr(SyntheticConfig(), key), key
        assert profile == SYNTHETIC_PROFILES["out_of_family"][key], key


def test_rates_and_drives_of_several_populations_equal_each_populations_own():
    import torch

    from meiscope.synthetic.population import TruePopulation

    small = dataclasses.replace(SYNTHETIC, image_height=46, image_width=58, n_images=3)
    templates = cs.make_templates(small, CONTAINER, progress=False)
    cells = sample_cells(6, {"simple": 0.5, "complex": 0.5}, (4.0, 8.0), (1.0, 30.0), 0.5, np.arange(6),
                         np.random.default_rng(0))
    drifted, _ = cs.drift_cells(cells, SYNTHETIC, np.random.default_rng(1))
    populations = [TruePopulation(c).to(dtype=torch.float64) for c in (cells, drifted)]
    for together in (cs.stimulus_rates(populations, templates), cs.stimulus_drives(populations, templates)):
        alone = [cs.stimulus_rates([p], templates)[0] for p in populations] \
            if "natural_scenes" in together[0] else [cs.stimulus_drives([p], templates)[0] for p in populations]
        for both, own in zip(together, alone):
            assert list(both) == list(own)
            for name in own:
                np.testing.assert_array_equal(both[name], own[name])
        assert not np.array_equal(together[0]["natural_movie_one"], together[1]["natural_movie_one"])


def test_an_in_family_synthesis_leaves_no_planted_truth_of_an_earlier_cortex(tmp_path):
    import shutil

    small = dataclasses.replace(SYNTHETIC, n_cells=12, image_height=46, image_width=58, n_images=3, repeats=2)
    tiny = CONTAINER
    ids = cs.synthesize_containers(small, tiny, ["B"], tmp_path, progress=False)
    assert cs.load_planted(tmp_path, ids[0])  # the out-of-family session's planted truth
    foreign = tmp_path / "ground_truth" / "notes.out_of_family.json"  # not meiscope's: left alone
    shutil.copy(next((tmp_path / "ground_truth").glob("*.out_of_family.json")), foreign)
    in_family = dataclasses.replace(small, **{key: getattr(SyntheticConfig(), key) for key in OUT_OF_FAMILY_KEYS})
    assert cs.synthesize_containers(in_family, tiny, ["B"], tmp_path, progress=False) == ids
    assert cs.load_planted(tmp_path, ids[0]) == {}
    assert sorted(p.name for p in (tmp_path / "ground_truth").glob("*.out_of_family.*")) == [foreign.name]
