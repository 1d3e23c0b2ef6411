"""The Neuropixels source: stimuli geometry, spike simulation, extraction and the whole study on a tiny session."""

import json

import numpy as np
import pandas as pd
import pytest

from meiscope import pipeline
from meiscope.recordings.neuropixels.settings import SyntheticNeuropixelsConfig
from meiscope.recordings import brain_observatory as bo
from meiscope.recordings import screen
from meiscope.recordings.neuropixels import gabor_check, stimuli
from meiscope.recordings.neuropixels.synthetic import (Modulation, Schedule, draw_spikes, drifting_images,
                                                       make_schedule, other_area_segments, unit_population)
from meiscope.recordings.screen import SCENE_HEIGHT_PX, SCENE_WIDTH_PX
from meiscope.synthetic.population import sample_cells
from test_pipeline import TINY as TWO_PHOTON_TINY

# the two-photon pipeline test's tiny study, recorded as spikes (stronger cells: 10 scene repeats, not 8)
TINY = {**TWO_PHOTON_TINY, "data": {"recording": "neuropixels"},
        "synthetic": {**TWO_PHOTON_TINY["synthetic"], "peak_rate_hz": [10.0, 40.0]},
        "synthetic_neuropixels": {"scene_repeats": 10, "grating_repeats": 2, "gabor_repeats": 3,
                                  "drifting_grating_repeats": 2, "movie_one_repeats": 2, "movie_three_repeats": 2,
                                  "movie_one_frames": 30, "movie_three_frames": 30, "flash_repeats": 2,
                                  "visp_units": 30, "other_area_units": 1, "channels_per_probe": 32,
                                  "spontaneous_s": 5.0}}


# --------------------------------------------------------------------------------------
# stimuli and the visual field
# --------------------------------------------------------------------------------------
def test_neuropixels_gabor_patch_lands_where_its_degrees_say():
    shape = (SCENE_HEIGHT_PX // 2, SCENE_WIDTH_PX // 2)
    image = stimuli.gabor_patch_pixels(20.0, -10.0, 0.0, 0.0, shape)
    rows, cols = np.nonzero(np.abs(image - screen.GRAY) > 1e-3)
    x_frac, y_frac = screen.degrees_to_scene_fraction(20.0, -10.0)
    assert abs((cols.mean() + 0.5) / shape[1] - x_frac) < 0.01  # the aperture is centred there
    assert abs((rows.mean() + 0.5) / shape[0] - y_frac) < 0.01
    assert y_frac > 0.5  # y = -10 deg is below the screen centre (rows grow downwards)
    radius_px = 0.5 * (cols.max() - cols.min() + 1)
    assert abs(radius_px * 2 * SCENE_WIDTH_PX / shape[1] / 9.68 - stimuli.GABOR_SIZE_DEG) < 0.5


def test_neuropixels_grating_orientation_follows_the_truth_convention():
    # orientation 0: the carrier varies along x (vertical bars); 90: along y
    vertical = bo.grating_pixels(0.0, 0.04, 0.0, (64, 82))
    horizontal = bo.grating_pixels(90.0, 0.04, 0.0, (64, 82))
    assert np.ptp(vertical[:, 10]) < 1e-3 < np.ptp(vertical[10, :])
    assert np.ptp(horizontal[10, :]) < 1e-3 < np.ptp(horizontal[:, 10])
    assert len(bo.grating_conditions()) == 120 and len(stimuli.gabor_conditions()) == 243


def test_drifting_stimuli_advance_their_phase_each_screen_frame_in_their_direction():
    frames = np.arange(121) / stimuli.SCREEN_HZ
    np.testing.assert_allclose(stimuli.drift_phase(90.0, 1.0, frames[:3]), [0.0, 1 / 60, 2 / 60])
    np.testing.assert_allclose(stimuli.drift_phase(270.0, 1.0, frames[:3]), [0.0, 59 / 60, 58 / 60])  # opposite way
    # a 4-Hz Gabor patch sweeps one whole cycle in its 250-ms presentation: 15 screen frames
    assert stimuli.screen_times(0.0, 0.25).size == 15
    np.testing.assert_allclose(stimuli.drift_phase(45.0, stimuli.GABOR_TF, 15 / 60), 0.0, atol=1e-12)


def test_the_truth_sees_every_screen_frame_of_a_drifting_grating():
    images, row_image = drifting_images()
    conditions = bo.drifting_grating_conditions()
    assert row_image.shape == (40 * 120,) and len(images) == 4 * 60  # 4 bar orientations x 60 phases
    frames = row_image.reshape(40, 120)
    for c, r in enumerate(conditions.itertuples()):
        for k in (0, 7, 119):
            expected = bo.grating_pixels(r.orientation % 180, bo.DG_SPATIAL_FREQUENCY,
                                         float(stimuli.drift_phase(r.orientation, r.temporal_frequency, k / 60)),
                                         images.shape[1:])
            np.testing.assert_allclose(images[frames[c, k]], expected, atol=1e-3)
        period = int(60 / r.temporal_frequency) if 60 % r.temporal_frequency == 0 else 120
        np.testing.assert_array_equal(frames[c, period:], frames[c, :120 - period])  # one image per phase
        assert (np.diff(frames[c]) != 0).all()  # the image changes every frame


def test_neuropixels_model_pixels_and_screen_degrees_agree():
    crop, shape = [0.1, 0.9, 0.2, 0.8], (36, 46)
    x_frac, y_frac = screen.degrees_to_scene_fraction(np.array([-30.0, 0.0, 25.0]), np.array([15.0, 0.0, -5.0]))
    col = (x_frac - crop[2]) / (crop[3] - crop[2]) * shape[1] - 0.5
    row = (y_frac - crop[0]) / (crop[1] - crop[0]) * shape[0] - 0.5
    x, y = gabor_check.model_pixels_to_degrees(col, row, crop, shape)
    np.testing.assert_allclose(x, [-30.0, 0.0, 25.0], atol=1e-9)
    np.testing.assert_allclose(y, [15.0, 0.0, -5.0], atol=1e-9)
    np.testing.assert_allclose(screen.scene_fraction_to_degrees(x_frac, y_frac), ([-30, 0, 25], [15, 0, -5]),
                               atol=1e-9)


def test_neuropixels_gabor_check_finds_a_planted_preference():
    conditions = stimuli.gabor_conditions()
    rng = np.random.default_rng(0)
    repeats = np.full(len(conditions), 15)
    rates = np.ones((len(conditions), 3))  # unit 13 has no receptive field: a flat map
    pref = [(20.0, -10.0, 45.0), (-30.0, 30.0, 90.0)]
    for unit, (x, y, ori) in enumerate(pref):
        here = (conditions.x_position == x) & (conditions.y_position == y)
        rates[here.to_numpy(), unit] = 2.0
        rates[(here & (conditions.orientation == ori)).to_numpy(), unit] = 4.0
    counts = rng.poisson(rates[:, None, :] * np.ones((1, 15, 1))).mean(axis=1)  # 15 presentations each
    patches = {**{c: conditions[c].to_numpy() for c in conditions}, "mean_counts": counts, "repeats": repeats,
               "unit_ids": np.array([11, 12, 13])}
    crop, shape = [0.0, 1.0, 0.0, 1.0], (36, 46)
    # optimal Gabors: unit 11 exactly at its patch (45 deg); unit 12 12 deg away, oriented 130 deg
    params = np.zeros((3, 6), dtype=np.float32)
    for unit, (x, y, theta) in enumerate([(20.0, -10.0, 45.0), (-30.0 + 12.0, 30.0, 130.0), (0.0, 0.0, 0.0)]):
        xf, yf = screen.degrees_to_scene_fraction(x, y)
        params[unit, :3] = [xf * shape[1] - 0.5, yf * shape[0] - 0.5, np.deg2rad(theta)]
    table, metrics = gabor_check.gabor_patch_check(patches, np.array([11, 12, 13]), params, crop, shape)
    assert table.has_rf.tolist() == [True, True, False]
    assert table.rf_p_value[2] > 0.01 and table.rf_p_value[:2].max() < 1e-6
    np.testing.assert_allclose(table.position_error_deg[:2], [0.0, 12.0], atol=1e-4)
    assert table.best_patch_orientation[:2].tolist() == [45.0, 90.0]
    assert table.orientation_agrees[:2].tolist() == [True, True]  # 130 deg is nearest to 90 of {0, 45, 90}
    assert metrics["gabor_patch_n_units_with_rf"] == 2 and metrics["gabor_patch_frac_within_grid_step"] == 0.5
    params[1, 2] = np.deg2rad(10.0)
    table, _ = gabor_check.gabor_patch_check(patches, np.array([11, 12, 13]), params, crop, shape)
    assert table.orientation_agrees[:2].tolist() == [True, False]


def test_neuropixels_rf_map_test_rejects_at_its_nominal_rate_on_flat_maps():
    conditions = stimuli.gabor_conditions()
    rng = np.random.default_rng(1)
    counts = rng.poisson(1.5, size=(len(conditions), 15, 400)).mean(axis=1)  # 400 units, no receptive field
    patches = {**{c: conditions[c].to_numpy() for c in conditions}, "mean_counts": counts,
               "repeats": np.full(len(conditions), 15)}
    positions, maps, p_values = gabor_check.receptive_field_maps(patches, np.arange(400))
    assert positions.shape == (81, 2) and maps.shape == (81, 400)
    np.testing.assert_allclose(maps.mean(axis=0), counts.mean(axis=0), rtol=1e-9)
    assert (p_values < 0.01).mean() < 0.03  # ~1% expected


# --------------------------------------------------------------------------------------
# spikes
# --------------------------------------------------------------------------------------
def test_neuropixels_spikes_follow_the_rates_with_a_refractory_period():
    rng = np.random.default_rng(0)
    n = 4000
    condition = np.arange(n) % 2  # the second unit alternates between 5 and 40 Hz
    schedule = Schedule(start=np.arange(n) * 0.25, duration=np.full(n, 0.25),
                        stimulus=np.full(n, "natural_scenes", dtype=object), condition=condition,
                        onset=np.ones(n, dtype=bool), presentations=pd.DataFrame())
    plain = Modulation(shared=np.ones(n), unit_gain_sd=0.0, running=np.zeros(n), running_modulation=np.zeros(2),
                       transient_gain=np.zeros(2), transient_s=0.0)  # no gain, running or transient
    rates = {"natural_scenes": np.array([[2.0, 5.0], [2.0, 40.0]])}
    trains = draw_spikes(schedule, rates, np.zeros(2), np.zeros(2), plain, 0.002, rng)
    assert all(np.all(np.diff(t) >= 0.002) for t in trains)
    assert abs(len(trains[0]) / 1000.0 - 2.0) < 0.2  # 1000 s at 2 Hz
    odd = ((trains[1] - 0.04) // 0.25).astype(int) % 2 == 1
    # 40 Hz minus what a 2-ms dead time removes (~8%)
    assert 34.0 < odd.sum() / 500.0 < 40.5 and 4.0 < (~odd).sum() / 500.0 < 6.0


def test_neuropixels_units_keep_the_cortex_tuning_and_the_share_of_spikes_their_metrics_say():
    # the realism legitimately replaced the "poor copies" of VISp units: every unit now carries its own metrics
    rng = np.random.default_rng(1)
    cells = sample_cells(20, {"simple": 0.5, "complex": 0.5, "conjunction": 0.0, "unresponsive": 0.0}, (4.0, 8.0),
                         (5.0, 20.0), 0.5, np.arange(20), rng)
    cfg = SyntheticNeuropixelsConfig(other_area_units=2)
    params, plan, keep = unit_population(cells, cfg, rng)
    n_other = 2 * len(other_area_segments())
    assert params.n_cells == 20 + n_other and len(np.unique(params.cell_ids)) == 20 + n_other
    assert (plan.areas[:20] == "VISp").all() and (plan.probes[:20] == "probeC").all()
    assert (params.kinds[20:] == "unresponsive").all() and (params.rate_max[20:] == 0).all()
    np.testing.assert_allclose(params.x[:20], cells.x)  # the cortex's tuning is the VISp units'
    np.testing.assert_allclose(params.orientation[:20], cells.orientation)
    np.testing.assert_allclose(keep, 1.0 - plan.metrics["amplitude_cutoff"])
    np.testing.assert_allclose(params.rate_max[:20], cells.rate_max * keep[:20])


def test_neuropixels_schedule_shows_every_condition_its_repeats():
    cfg = SyntheticNeuropixelsConfig(scene_repeats=3, grating_repeats=2, gabor_repeats=2, drifting_grating_repeats=2,
                                     movie_one_repeats=3, movie_three_repeats=2, movie_one_frames=5,
                                     movie_three_frames=7, flash_repeats=4, spontaneous_s=10.0)
    schedule = make_schedule(5, cfg, np.random.default_rng(0))
    scenes = schedule.condition[schedule.stimulus == "natural_scenes"]
    assert np.bincount(scenes + 1).tolist() == [3] * 6  # 5 scenes + the blank
    # the drifting stimuli: one segment per 60-Hz screen frame, condition c's frame k is row c n + k of its rates
    gabors = schedule.condition[schedule.stimulus == "gabors"]
    assert np.bincount(gabors).tolist() == [2] * (243 * 15)
    np.testing.assert_allclose(schedule.duration[schedule.stimulus == "gabors"], 1 / 60)
    drifting = schedule.condition[(schedule.stimulus == "drifting_gratings") & (schedule.condition >= 0)]
    assert np.bincount(drifting).tolist() == [2] * (40 * 120)
    shown = schedule.presentations
    assert np.bincount(shown.condition[shown.name == "drifting_gratings"] + 1).tolist() == [2] * 41
    assert np.bincount(shown.condition[shown.name == "natural_movie_one"]).tolist() == [3] * 5
    assert np.bincount(shown.condition[shown.name == "natural_movie_three"]).tolist() == [2] * 7
    assert np.bincount(shown.condition[shown.name == "flashes"]).tolist() == [4, 4]
    # segments lie end to end; a drifting grating (2 s) has one onset, its frames follow in order
    np.testing.assert_allclose(schedule.start[1:], schedule.start[:-1] + schedule.duration[:-1], atol=1e-9)
    assert schedule.onset[schedule.stimulus == "drifting_gratings"].sum() == 82
    onsets = np.flatnonzero(schedule.onset & (schedule.stimulus == "drifting_gratings") & (schedule.condition >= 0))
    first = schedule.condition[onsets]
    assert (first % 120 == 0).all()
    np.testing.assert_array_equal(schedule.condition[onsets[:, None] + np.arange(120)], first[:, None] + np.arange(120))


# --------------------------------------------------------------------------------------
# the whole study on a tiny synthetic Neuropixels session
# --------------------------------------------------------------------------------------
# npx_study (tests/conftest.py): the TINY session synthesized and extracted once for every test module


@pytest.fixture(scope="module")
def npx_session(npx_study):
    """The study's session as allensdk reads it, every unit (filters off), opened once for the module."""
    from meiscope.recordings.neuropixels.cache import session_nwb
    from meiscope.recordings.neuropixels.unit_metrics import read_session

    root, params = npx_study
    with read_session(session_nwb(root / "data" / "synthetic_ecephys", params.synthetic_neuropixels.session_id),
                      unfiltered=True) as session:
        yield session


def test_neuropixels_session_is_read_by_allensdk_and_filtered(npx_study, npx_session):
    from meiscope.dataset import ResponseDataset
    from meiscope.recordings.neuropixels.cache import session_nwb
    from meiscope.synthetic.population import load_true_population

    root, params = npx_study
    cache_dir = root / "data" / "synthetic_ecephys"
    session_id = params.synthetic_neuropixels.session_id
    assert session_nwb(cache_dir, session_id).is_file()
    ds = ResponseDataset.load(root / "results" / "responses" / f"{session_id}.npz")
    truth = load_true_population(cache_dir, session_id)
    assert truth.n_cells == 30 + len(other_area_segments())  # 30 VISp units, one in each other probe segment
    units = npx_session.units
    expected = {"VISp": 30}  # and one unit in each other probe segment (other_area_units: 1)
    for _, area in other_area_segments():
        expected[area] = expected.get(area, 0) + 1
    assert units.structure_acronym.value_counts().to_dict() == expected
    good = ((units.amplitude_cutoff <= 0.1) & (units.presence_ratio >= 0.95) & (units.isi_violations <= 0.5)
            & (units.structure_acronym == "VISp"))
    # kept: exactly the VISp units inside allensdk's default filters (round(0.47 x 30) of them); other areas dropped
    assert good.sum() == 14
    np.testing.assert_array_equal(ds.cell_ids, np.sort(units.index[good].to_numpy()))
    assert set(ds.cell_ids) <= set(truth.cell_ids[:30])
    assert ds.response_kind == "counts" and ds.source == "synthetic_neuropixels"
    assert ds.n_images == 24 and len(ds.trial_image) == 24 * 10 and len(ds.blank_responses) == 10
    assert np.all(ds.responses == np.round(ds.responses)) and ds.responses.min() >= 0


def test_neuropixels_session_has_allens_running_speed_and_invalid_times(npx_study, npx_session):
    running = npx_session.running_speed  # allensdk's reader of the ``running`` module
    assert list(running.columns) == ["start_time", "end_time", "velocity"] and len(running) > 1000
    np.testing.assert_allclose(running.end_time - running.start_time, 1.0 / 30.0, rtol=1e-9)
    assert running.velocity.min() >= 0 and (running.velocity > 5).mean() > 0.1 and (running.velocity < 1).mean() > 0.1
    invalid = npx_session.invalid_times
    assert list(invalid.columns) == ["start_time", "stop_time", "tags"] and len(invalid) == 3
    assert (invalid.stop_time > invalid.start_time).all()
    tags = [list(t) for t in invalid.tags]
    assert all(len(t) == 3 and all(isinstance(x, str) for x in t) for t in tags)
    assert [t[2] for t in tags] == ["stimulus", "probeA", "probeF"]  # the session's, then two probes'
    # allensdk masks the presentations the stimulus interval overlaps: drifting gratings only
    table = npx_session.stimulus_presentations
    masked = table[table.stimulus_name == "invalid_presentation"]
    assert len(masked) >= 1
    start, stop = invalid.start_time.iloc[0], invalid.stop_time.iloc[0]
    assert ((masked.start_time < stop) & (masked.stop_time > start)).all()
    dg = table[table.stimulus_name == "drifting_gratings"]
    assert len(dg) + len(masked) == 41 * 2 and (table.stimulus_name == "natural_scenes").sum() == 25 * 10


def test_neuropixels_stimulus_table_holds_every_bo11_stimulus_with_allens_column_types(npx_session):
    table = npx_session.stimulus_presentations
    names = set(table.stimulus_name) - {"invalid_presentation"}
    assert names == {"spontaneous", "gabors", "flashes", "drifting_gratings", "natural_movie_three",
                     "natural_movie_one", "static_gratings", "natural_scenes"}
    gabors = table[table.stimulus_name == "gabors"]
    assert len(gabors) == 243 * 3 and np.allclose(gabors.duration, 0.25)
    # Allen's text-valued parameters (read back as text: allensdk's literal_eval never runs on them)
    assert set(gabors.spatial_frequency) == {"0.08"} and set(gabors["size"]) == {"[20.0, 20.0]"}
    assert set(gabors.phase) == {"[3644.93, 3644.93]"}
    assert sorted(set(gabors.x_position.astype(float))) == list(np.arange(-40.0, 41.0, 10.0))
    scenes = table[table.stimulus_name == "natural_scenes"]
    assert set(scenes.orientation) == {"null"} and set(scenes.frame.astype(float)) == set(np.arange(-1.0, 24.0))
    gratings = table[table.stimulus_name == "static_gratings"]
    blank = gratings.orientation == "null"
    assert blank.sum() == 2 and set(gratings.spatial_frequency[blank]) == {"null"}
    assert set(gratings.spatial_frequency[~blank]) == {"0.02", "0.04", "0.08", "0.16", "0.32"}
    dg = table[table.stimulus_name == "drifting_gratings"]
    shown = dg[dg.orientation != "null"]
    assert np.allclose(shown.duration, 2.0) and set(shown.temporal_frequency.astype(float)) == {1.0, 2.0, 4.0, 8.0, 15.0}
    assert set(table[table.stimulus_name == "flashes"].color) == {-1.0, 1.0}
    movie = table[table.stimulus_name == "natural_movie_one"]
    assert len(movie) == 30 * 2 and np.allclose(movie.duration, 1.0 / 30.0)
    assert (table.index == np.arange(len(table))).all() and table.start_time.is_monotonic_increasing


def _block_rates(session, name: str, unit_ids: np.ndarray) -> np.ndarray:
    """``(n_units,)`` spikes per second over the blocks of ``name`` (runs of presentations less than two
    250-ms trials apart), counted here from the session's spike times."""
    table = session.stimulus_presentations
    rows = table[table.stimulus_name == name]
    gap = np.diff(rows.start_time.to_numpy()) > 0.5
    starts = rows.start_time.to_numpy()[np.concatenate([[True], gap])]
    stops = rows.stop_time.to_numpy()[np.concatenate([gap, [True]])]
    counts = [np.sum(np.searchsorted(session.spike_times[u], stops) - np.searchsorted(session.spike_times[u], starts))
              for u in unit_ids]
    return np.array(counts) / np.sum(stops - starts)


def test_neuropixels_allensdk_stimulus_analyses_run_on_the_session(npx_session):
    from allensdk.brain_observatory.ecephys.stimulus_analysis.natural_scenes import NaturalScenes
    from allensdk.brain_observatory.ecephys.stimulus_analysis.receptive_field_mapping import ReceptiveFieldMapping
    from allensdk.brain_observatory.ecephys.stimulus_analysis.static_gratings import StaticGratings

    units = npx_session.units
    ids = units.index[units.structure_acronym == "VISp"].to_numpy()[:4]  # a few units keep it quick
    expected = {ReceptiveFieldMapping: ("gabors", ("azimuth_rf", "elevation_rf", "p_value_rf", "firing_rate_rf")),
                NaturalScenes: ("natural_scenes", ("pref_image_ns", "image_selectivity_ns", "run_mod_ns",
                                                   "firing_rate_ns")),
                StaticGratings: ("static_gratings", ("pref_ori_sg", "pref_sf_sg", "g_osi_sg", "firing_rate_sg"))}
    for analysis, (name, columns) in expected.items():
        metrics = analysis(npx_session, filter=list(ids)).metrics  # needs the running speed
        assert sorted(metrics.index) == sorted(ids) and set(columns) <= set(metrics.columns)
        # each unit's own figures: its firing rate over the stimulus's blocks is the session's
        np.testing.assert_allclose(metrics.loc[ids, columns[-1]].astype(float), _block_rates(npx_session, name, ids),
                                   rtol=1e-9)
        if name == "gabors":
            assert metrics.p_value_rf.dropna().between(0, 1).all()
        if name == "static_gratings":
            assert metrics.pref_ori_sg.dropna().isin([0.0, 30.0, 60.0, 90.0, 120.0, 150.0]).all()


def test_neuropixels_counts_equal_counts_from_the_spike_times(npx_study):
    import pynwb

    from meiscope.dataset import ResponseDataset
    from meiscope.recordings.neuropixels.cache import session_nwb

    root, params = npx_study
    session_id = params.synthetic_neuropixels.session_id
    ds = ResponseDataset.load(root / "results" / "responses" / f"{session_id}.npz")
    with pynwb.NWBHDF5IO(str(session_nwb(root / "data" / "synthetic_ecephys", session_id)), "r",
                         load_namespaces=True) as io:
        nwb = io.read()
        units = nwb.units.to_dataframe().set_index("id") if "id" in nwb.units.colnames else nwb.units.to_dataframe()
        table = nwb.intervals["natural_scenes_presentations"].to_dataframe().sort_values("start_time")
    start, frame = table.start_time.to_numpy(), table.frame.to_numpy().astype(int)
    lo, hi = params.neuropixels.count_window
    shown = frame >= 0
    for column, unit in enumerate(ds.cell_ids[:10]):
        spikes = np.asarray(units.loc[unit, "spike_times"])
        counts = np.searchsorted(spikes, start + hi, side="left") - np.searchsorted(spikes, start + lo, side="left")
        np.testing.assert_array_equal(ds.responses[:, column], counts[shown])
        np.testing.assert_array_equal(ds.blank_responses[:, column], counts[~shown])


def test_neuropixels_extract_keeps_the_gabor_presentations_counts(npx_study):
    import pynwb

    from meiscope.dataset import ResponseDataset
    from meiscope.recordings.neuropixels.cache import session_nwb
    from meiscope.recordings.neuropixels.responses import load_other_stimuli, other_stimuli_path

    root, params = npx_study
    session_id = params.synthetic_neuropixels.session_id
    dataset_path = root / "results" / "responses" / f"{session_id}.npz"
    other = load_other_stimuli(other_stimuli_path(dataset_path))
    gabors, ids = other["gabors"], ResponseDataset.load(dataset_path).cell_ids
    counts, condition = gabors["presentation_counts"], gabors["presentation_condition"]
    n_units = len(ids)  # the VISp units that pass the filters
    assert counts.shape == (243 * 3, n_units) and counts.dtype.kind == "i" and condition.shape == (243 * 3,)
    assert "presentation_counts" not in other["static_gratings"]  # only the shuffle test needs them
    means = np.stack([np.bincount(condition, weights=counts[:, u], minlength=243) for u in range(n_units)],
                     axis=1) / 3
    np.testing.assert_allclose(gabors["mean_counts"], means, rtol=1e-6)  # the existing keys are unchanged
    with pynwb.NWBHDF5IO(str(session_nwb(root / "data" / "synthetic_ecephys", session_id)), "r",
                         load_namespaces=True) as io:
        nwb = io.read()
        units = nwb.units.to_dataframe().set_index("id") if "id" in nwb.units.colnames else nwb.units.to_dataframe()
        table = nwb.intervals["gabors_presentations"].to_dataframe().sort_values("start_time")
    for key in ("x_position", "y_position", "orientation"):  # each presentation's condition is its own
        np.testing.assert_allclose(gabors[key][condition], table[key].astype(float), atol=1e-6)
    start = table.start_time.to_numpy()
    lo, hi = params.neuropixels.count_window
    for column, unit in enumerate(ids[:5]):
        spikes = np.asarray(units.loc[unit, "spike_times"])
        upto = np.searchsorted(spikes, start + hi, side="left")
        np.testing.assert_array_equal(counts[:, column], upto - np.searchsorted(spikes, start + lo, side="left"))


def test_neuropixels_whole_study_runs_and_checks_the_presented_gabors(npx_study):
    root, params = npx_study
    pipeline.stage("rank").run(params, root)
    pipeline.stage("tune").run(params, root, device="cpu")
    pipeline.stage("train").run(params, root, device="cpu")
    pipeline.stage("mei").run(params, root, device="cpu")
    gabor = pipeline.stage("gabor").run(params, root, device="cpu")
    pipeline.stage("validate").run(params, root, device="cpu")
    pipeline.stage("report").run(params, root)
    ranking = json.loads((root / "metrics" / "ranking.json").read_text())
    assert ranking["n_selected"] == 8 and "gt_precision" in json.dumps(ranking)
    train = json.loads((root / "metrics" / "train.json").read_text())
    assert -1 <= train["gt_fresh_corr_mean"] <= 1
    run = json.loads((root / "results" / "train" / "run.json").read_text())
    assert run["model"]["loss"] == "auto"
    assert gabor["gabor_patch_n_units"] == 8 and 0 <= gabor["gabor_patch_n_units_with_rf"] <= 8
    table = pd.read_csv(root / "results" / "gabor" / "presented_gabors.csv")
    assert len(table) == 8 and table.best_patch_true_error_deg.notna().all()
    assert table.rf_p_value.dropna().between(0, 1).all() and (table.rf_test == "shuffle").all()
    assert (table.rf_p_value.isna() | (table.has_rf == (table.rf_p_value < 0.01))).all()
    assert (root / "results" / "gabor" / "receptive_fields.png").stat().st_size > 10_000
    assert "Neuropixels spike counts" in (root / "report" / "index.html").read_text()
