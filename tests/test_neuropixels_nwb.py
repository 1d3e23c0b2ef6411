"""A tiny synthetic Neuropixels session, written by meiscope.recordings.neuropixels.nwb and read back by allensdk."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from meiscope.recordings.neuropixels import nwb
from meiscope.recordings.neuropixels.cache import NeuropixelsError, open_cache, scene_template_file, session_nwb, table_csv

SESSION_ID = 900000001
NO_FILTERS = {"amplitude_cutoff_maximum": np.inf, "presence_ratio_minimum": -np.inf,
              "isi_violations_maximum": np.inf, "filter_by_validity": False, "filter_out_of_brain_units": False}
# default filters drop: 3004 (quality noise), 3005 (amplitude_cutoff 0.3), 3006 (peak channel out of brain)
KEPT_BY_DEFAULT = [3001, 3002, 3003]
N_SCENES = 4


def _presentations() -> dict[str, pd.DataFrame]:
    def rows(start: float, n: int, name: str, block: float, **params) -> dict:
        t = start + 0.25 * np.arange(n)
        return {"start_time": t, "stop_time": t + 0.25, "stimulus_name": [name] * n,
                "stimulus_block": np.full(n, block), "stimulus_index": np.full(n, block + 10.0), **params}

    frames = np.array([2, -1, 0, 3, 1, 1, 3, -1, 0, 2, -1, 2, 0, 3, 1], dtype=float)  # 0..3 + blank, 3 repeats
    nan = np.nan
    gabors = rows(1.0, 4, "gabors", 0.0, orientation=[0.0, 45.0, 90.0, 45.0],
                  x_position=[-40.0, 0.0, 10.0, 40.0], y_position=[30.0, 0.0, -10.0, -40.0],
                  spatial_frequency=np.full(4, 0.08), temporal_frequency=np.full(4, 4.0), contrast=np.full(4, 0.8),
                  size=["[20.0, 20.0]"] * 4, phase=["[3644.93333333, 3644.93333333]"] * 4)
    spontaneous = {"start_time": [2.5], "stop_time": [7.5], "stimulus_name": ["spontaneous"],
                   "stimulus_block": [nan], "stimulus_index": [0.0]}
    return {
        "gabors": pd.DataFrame(gabors),
        "spontaneous": pd.DataFrame(spontaneous),
        "natural_scenes": pd.DataFrame(rows(8.0, len(frames), "natural_scenes", 2.0, frame=frames)),
        "static_gratings": pd.DataFrame(rows(
            12.0, 5, "static_gratings", 3.0, orientation=[0.0, 30.0, nan, 150.0, 60.0],
            spatial_frequency=[0.02, 0.04, nan, 0.32, 0.16], phase=[0.0, 0.25, nan, 0.75, 0.5],
            contrast=[0.8, 0.8, nan, 0.8, 0.8])),
    }


def _spike_times(rng: np.random.Generator, presentations: dict[str, pd.DataFrame], n_units: int) -> list:
    onsets = presentations["natural_scenes"]["start_time"].to_numpy()
    trains = []
    for u in range(n_units):
        times = rng.uniform(0.0, 14.0, size=150 + 20 * u)
        # spikes exactly on both window edges of a few onsets: counting includes both ends
        times = np.concatenate([times, onsets[u::5] + 0.03, onsets[u::7] + 0.25])
        trains.append(np.sort(times))
    return trains


def make_session(session_id: int = SESSION_ID, id_offset: int = 0) -> nwb.EcephysSessionArrays:
    """2 probes, 8 channels (one out of brain), 6 units, 4 stimuli, 4 scene templates."""
    rng = np.random.default_rng(session_id)
    presentations = _presentations()
    probes = nwb.Probes(probe_ids=np.array([1001, 1002]) + id_offset, names=np.array(["probeC", "probeD"]))
    channels = nwb.Channels(
        channel_ids=np.arange(2001, 2009) + id_offset,
        probe_ids=np.array([1001] * 5 + [1002] * 3) + id_offset,
        local_index=np.array([0, 1, 2, 3, 4, 0, 1, 2]),
        vertical_position=np.array([20.0, 40.0, 60.0, 80.0, 100.0, 20.0, 40.0, 60.0]),
        horizontal_position=np.array([43.0, 11.0, 59.0, 27.0, 43.0, 43.0, 11.0, 59.0]),
        structure_acronyms=np.array(["CA1", "CA1", "VISp", "VISp", "None", "LP", "LP", "VISl"]))
    units = nwb.Units(
        unit_ids=np.arange(3001, 3007) + id_offset,
        spike_times=_spike_times(rng, presentations, 6),
        peak_channel_ids=np.array([2003, 2004, 2006, 2001, 2008, 2005]) + id_offset,
        quality=np.array(["good", "good", "good", "noise", "good", "good"]),
        amplitude_cutoff=np.array([0.01, 0.02, 0.05, 0.01, 0.3, 0.01]),
        presence_ratio=np.array([0.99, 0.98, 0.97, 0.99, 0.99, 0.99]),
        isi_violations=np.array([0.1, 0.0, 0.2, 0.1, 0.1, 0.1]),
        snr=np.array([3.0, 2.5, 4.0, 1.0, 2.0, 3.5]))
    templates = rng.integers(0, 256, size=(N_SCENES, *nwb.SCENE_SHAPE), dtype=np.uint8)
    return nwb.EcephysSessionArrays(
        session_id=session_id, session_type="brain_observatory_1.1", specimen_id=800000001, age_in_days=110.0,
        sex="F", genotype="wt/wt", probes=probes, channels=channels, units=units,
        presentations=presentations, scene_templates=templates)


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[Path, nwb.EcephysSessionArrays]:
    cache_dir = tmp_path_factory.mktemp("neuropixels_cache")
    arrays = make_session()
    nwb.write_session(cache_dir, arrays)
    return cache_dir, arrays


@pytest.fixture(scope="module")
def unfiltered(written):
    """The written session read straight from its NWB file, with every unit filter off."""
    from allensdk.brain_observatory.ecephys.ecephys_session import EcephysSession

    cache_dir, _ = written
    return EcephysSession.from_nwb_path(str(session_nwb(cache_dir, SESSION_ID)), api_kwargs=dict(NO_FILTERS))


def _area(units: pd.DataFrame) -> pd.Series:
    name = "ecephys_structure_acronym" if "ecephys_structure_acronym" in units.columns else "structure_acronym"
    return units[name]


def _expected_presentations(arrays: nwb.EcephysSessionArrays) -> pd.DataFrame:
    table = pd.concat(list(arrays.presentations.values()), ignore_index=True)
    return table.sort_values("start_time", kind="stable").reset_index(drop=True)


def test_neuropixels_nwb_units_from_nwb_path(written, unfiltered):
    _, arrays = written
    session = unfiltered
    assert session.ecephys_session_id == SESSION_ID
    assert sorted(session.units.index) == sorted(arrays.units.unit_ids.tolist())
    for uid, times in zip(arrays.units.unit_ids, arrays.units.spike_times):
        got = session.spike_times[uid]
        assert got.dtype == np.float64 and np.array_equal(got, times)
    units = session.units
    expected_area = {3001: "VISp", 3002: "VISp", 3003: "LP", 3004: "CA1", 3005: "VISl"}
    for uid, area in expected_area.items():
        assert _area(units).loc[uid] == area
    assert pd.isna(_area(units).loc[3006])
    assert units.loc[3004, "quality"] == "noise"
    assert units.loc[3005, "amplitude_cutoff"] == pytest.approx(0.3)
    assert units.loc[3001, "probe_description"] == "probeC" and units.loc[3003, "probe_description"] == "probeD"
    assert units.loc[3001, "peak_channel_id"] == 2003
    assert np.all(units["firing_rate"] > 0)
    assert set(session.probes["description"]) == {"probeC", "probeD"}
    # mean waveform: rows are the probe's channels, the trough on the peak channel
    wave = session.mean_waveforms[3001]
    assert wave["channel_id"].values[np.argmin(wave.values.min(axis=1))] == 2003


def test_neuropixels_nwb_default_filters_drop_bad_units(written):
    from allensdk.brain_observatory.ecephys.ecephys_session import EcephysSession

    cache_dir, _ = written
    filtered = EcephysSession.from_nwb_path(str(session_nwb(cache_dir, SESSION_ID)))
    assert sorted(filtered.units.index) == KEPT_BY_DEFAULT
    assert sorted(filtered.spike_times) == KEPT_BY_DEFAULT


def test_neuropixels_nwb_stimulus_presentations(written):
    from allensdk.brain_observatory.ecephys.ecephys_session import EcephysSession

    cache_dir, arrays = written
    session = EcephysSession.from_nwb_path(str(session_nwb(cache_dir, SESSION_ID)))
    table = session.stimulus_presentations
    expected = _expected_presentations(arrays)
    assert len(table) == len(expected)
    assert np.array_equal(table["start_time"].to_numpy(float), expected["start_time"].to_numpy())
    assert list(table["stimulus_name"]) == list(expected["stimulus_name"])
    scenes = table[table["stimulus_name"] == "natural_scenes"]
    assert np.array_equal(scenes["frame"].astype(float), arrays.presentations["natural_scenes"]["frame"])
    gratings = table[table["stimulus_name"] == "static_gratings"]
    written_sg = arrays.presentations["static_gratings"]
    for column in ("orientation", "spatial_frequency", "phase", "contrast"):
        got = gratings[column].replace("null", np.nan).astype(float).to_numpy()
        assert np.array_equal(got, written_sg[column].to_numpy(), equal_nan=True), column
    gabors = table[table["stimulus_name"] == "gabors"]
    assert list(gabors["size"]) == ["[20.0, 20.0]"] * 4  # strings stay strings (allensdk never parses them)
    assert np.array_equal(gabors["x_position"].astype(float), arrays.presentations["gabors"]["x_position"])
    assert (table["stimulus_name"] == "spontaneous").sum() == 1


def test_neuropixels_nwb_offline_cache(written):
    cache_dir, arrays = written
    cache = open_cache(cache_dir, offline=True)
    sessions = cache.get_session_table()
    assert SESSION_ID in sessions.index
    row = sessions.loc[SESSION_ID]
    assert row["session_type"] == "brain_observatory_1.1" and row["full_genotype"] == "wt/wt"
    assert {a for a in row["ecephys_structure_acronyms"] if isinstance(a, str)} == {"CA1", "VISp", "LP", "VISl"}
    # get_units filters out-of-brain units only when units.csv itself has ecephys_structure_id, which
    # Allen's does not: the cache keeps 3006 (area NaN), a session drops it
    assert row["unit_count"] == 4 and row["probe_count"] == 2 and row["channel_count"] == 8

    units = cache.get_units()
    assert sorted(units.index) == KEPT_BY_DEFAULT + [3006]
    assert pd.isna(units.loc[3006, "ecephys_structure_acronym"])
    assert units.loc[3002, "ecephys_structure_acronym"] == "VISp"
    assert units.loc[3003, "snr"] == pytest.approx(4.0)
    everything = cache.get_units(filter_by_validity=False, **{k: NO_FILTERS[k] for k in list(NO_FILTERS)[:3]})
    assert sorted(everything.index) == arrays.units.unit_ids.tolist()

    session = cache.get_session_data(SESSION_ID)
    assert sorted(session.units.index) == KEPT_BY_DEFAULT
    assert session.units.loc[3003, "ecephys_structure_acronym"] == "LP"
    assert session.structurewise_unit_counts.to_dict() == {"VISp": 2, "LP": 1}
    for n in range(N_SCENES):
        assert np.array_equal(cache.get_natural_scene_template(n), arrays.scene_templates[n])
    # the cache deletes files it fails to read: everything is still there
    assert session_nwb(cache_dir, SESSION_ID).is_file()
    assert all(scene_template_file(cache_dir, n).is_file() for n in range(N_SCENES))


def test_neuropixels_nwb_presentationwise_spike_counts(written, unfiltered):
    _, arrays = written
    session = unfiltered
    table = session.stimulus_presentations
    ids = table.index[table["stimulus_name"] == "natural_scenes"].to_numpy()
    unit_ids = arrays.units.unit_ids
    counts = session.presentationwise_spike_counts(bin_edges=[0.03, 0.25], stimulus_presentation_ids=ids,
                                                   unit_ids=unit_ids, dtype=np.uint32)
    assert counts.dims == ("stimulus_presentation_id", "time_relative_to_stimulus_onset", "unit_id")

    onsets = arrays.presentations["natural_scenes"]["start_time"].to_numpy()
    expected = np.zeros((len(onsets), len(unit_ids)), dtype=np.int64)
    for j, times in enumerate(arrays.units.spike_times):  # window [onset + 0.03, onset + 0.25], both ends in
        expected[:, j] = (np.searchsorted(times, onsets + 0.25, side="right")
                          - np.searchsorted(times, onsets + 0.03, side="left"))
    got = counts.sel(unit_id=unit_ids).values[:, 0, :]
    assert np.array_equal(got, expected)
    assert expected.sum() > 0


def test_neuropixels_nwb_rewrite_keeps_other_sessions(tmp_path):
    other = make_session(session_id=900000002, id_offset=10000)
    nwb.write_project_tables(tmp_path, other)
    first = make_session()
    nwb.write_project_tables(tmp_path, first)
    before = {name: table_csv(tmp_path, name).read_bytes() for name in ("sessions", "probes", "channels", "units")}

    nwb.write_project_tables(tmp_path, make_session())  # identical arrays: identical files
    assert {name: table_csv(tmp_path, name).read_bytes() for name in before} == before

    changed = make_session()  # this session loses a unit: only its rows change
    changed.units = nwb.Units(**{k: v[:-1] for k, v in vars(changed.units).items()})
    nwb.write_project_tables(tmp_path, changed)
    units = pd.read_csv(table_csv(tmp_path, "units"), index_col="id")
    assert sorted(units.index) == [3001, 3002, 3003, 3004, 3005] + list(range(13001, 13007))
    sessions = pd.read_csv(table_csv(tmp_path, "sessions"), index_col="id")
    assert sorted(sessions.index) == [SESSION_ID, 900000002]
    assert len(pd.read_csv(table_csv(tmp_path, "channels"))) == 16


def test_neuropixels_nwb_same_arrays_same_bytes_with_distinct_object_ids(tmp_path):
    import h5py

    first, second = nwb.write_session_nwb(tmp_path / "a.nwb", make_session()), tmp_path / "b.nwb"
    nwb.write_session_nwb(second, make_session())
    assert first.read_bytes() == second.read_bytes()  # hdmf's object ids are random unless derived
    ids = []
    with h5py.File(first, "r") as f:
        f.visititems(lambda name, obj: ids.append(obj.attrs["object_id"]) if "object_id" in obj.attrs else None)
    assert len(ids) > 10 and len(set(ids)) == len(ids)
    other = make_session(session_id=900000002, id_offset=10000)
    nwb.write_session_nwb(tmp_path / "c.nwb", other)
    with h5py.File(tmp_path / "c.nwb", "r") as f, h5py.File(first, "r") as g:
        assert f.attrs["object_id"] != g.attrs["object_id"]  # derived from the session id


def test_neuropixels_nwb_rejects_inconsistent_arrays(tmp_path):
    arrays = make_session()
    arrays.units.peak_channel_ids = arrays.units.peak_channel_ids.copy()
    arrays.units.peak_channel_ids[0] = 9999
    with pytest.raises(NeuropixelsError, match="peak channel"):
        nwb.write_session(tmp_path, arrays)
    arrays = make_session()
    arrays.scene_templates = arrays.scene_templates.astype(np.float32)
    with pytest.raises(NeuropixelsError, match="uint8"):
        nwb.write_scene_templates(tmp_path, arrays.scene_templates)
    clash = make_session(session_id=900000003)  # same unit ids as another session in the tables
    nwb.write_project_tables(tmp_path, make_session())
    with pytest.raises(NeuropixelsError, match="another session"):
        nwb.write_project_tables(tmp_path, clash)
    assert not session_nwb(tmp_path, SESSION_ID).exists()


def test_neuropixels_nwb_templates_skip_identical(tmp_path):
    templates = make_session().scene_templates
    nwb.write_scene_templates(tmp_path, templates)
    path = scene_template_file(tmp_path, 1)
    stamp = path.stat().st_mtime_ns
    assert path.stat().st_size < templates[1].nbytes * 1.1
    nwb.write_scene_templates(tmp_path, templates)
    assert path.stat().st_mtime_ns == stamp
    changed = templates.copy()
    changed[1, 0, 0] ^= 1
    nwb.write_scene_templates(tmp_path, changed)
    assert np.array_equal(open_cache(tmp_path, offline=True).get_natural_scene_template(1), changed[1])
