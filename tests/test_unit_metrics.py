"""Allen's unit analysis metrics (meiscope.recordings.neuropixels.unit_metrics): pref_image_ns mapped through the
session's own condition table, the synthetic session's metrics recovering planted preferences, and the rank
stage's table showing them beside meiscope's figures. Sessions are tiny NWB files written by meiscope's writer
and read back by allensdk."""

from __future__ import annotations

import functools
import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from meiscope.recordings.downloads import DownloadError
from meiscope.recordings.neuropixels import Neuropixels, nwb
from meiscope.recordings.neuropixels.cache import NeuropixelsError, session_nwb
from meiscope.recordings.neuropixels.unit_metrics import (ANALYSIS_COLUMNS, PREF_CONDITION, analysis_metrics_file,
                                                          read_analysis_metrics, read_session,
                                                          scene_frames, session_analysis_metrics, with_pref_frames,
                                                          write_synthetic_analysis_metrics)

SID = 940000001
GRID = tuple(float(v) for v in range(-40, 41, 10))  # Allen's 9 x 9 Gabor positions
ORIENTATIONS = (0.0, 45.0, 90.0)
FRAMES, SCENE_REPEATS = 5, 12
GRATING_ORI, GRATING_SF, GRATING_PHASE = (0.0, 30.0, 60.0, 90.0, 120.0, 150.0), (0.04, 0.08), (0.0, 0.5)
# planted preferences: unit -> (RF centre x, y in screen degrees, preferred frame, preferred grating orientation)
# unit 3 is flat to every stimulus (background only); unit 4 fires 4 spikes in all (too few for an RF test)
PLANTED = {1: (10.0, -20.0, 3, 60.0), 2: (-30.0, 30.0, 1, None)}
UNIT_IDS = np.array([1, 2, 3, 4], dtype=np.int64)
DT = 0.25


def _onsets(n: int, start: float) -> np.ndarray:
    return start + DT * np.arange(n)


def _table(onsets: np.ndarray, name: str, block: float, **params) -> pd.DataFrame:
    n = len(onsets)
    return pd.DataFrame({"start_time": onsets, "stop_time": onsets + DT, "stimulus_name": [name] * n,
                         "stimulus_block": np.full(n, block), "stimulus_index": np.full(n, block), **params})


def planted_presentations(rng: np.random.Generator) -> dict[str, pd.DataFrame]:
    """Gabors first (9 x 9 x 3, 2 repeats), then scenes (5 + blank, 12 repeats), then static gratings (+ blank)."""
    gabor = np.array(list(itertools.product(GRID, GRID, ORIENTATIONS)) * 2)[rng.permutation(2 * 243)]
    frames = np.repeat(np.arange(-1, FRAMES), SCENE_REPEATS)[rng.permutation((FRAMES + 1) * SCENE_REPEATS)]
    gratings = np.array(list(itertools.product(GRATING_ORI, GRATING_SF, GRATING_PHASE)) * 4 + [(np.nan,) * 3] * 8)
    gratings = gratings[rng.permutation(len(gratings))]
    t_scenes = DT * len(gabor) + 1.0
    t_gratings = t_scenes + DT * len(frames) + 1.0
    n = len(gabor)
    return {
        "gabors": _table(_onsets(n, 0.0), "gabors", 0.0, x_position=gabor[:, 0], y_position=gabor[:, 1],
                         orientation=gabor[:, 2], spatial_frequency=np.full(n, 0.08),
                         temporal_frequency=np.full(n, 4.0), contrast=np.full(n, 0.8), size=["[20.0, 20.0]"] * n),
        "natural_scenes": _table(_onsets(len(frames), t_scenes), "natural_scenes", 1.0, frame=frames.astype(float)),
        "static_gratings": _table(_onsets(len(gratings), t_gratings), "static_gratings", 2.0,
                                  orientation=gratings[:, 0], spatial_frequency=gratings[:, 1],
                                  phase=gratings[:, 2], contrast=np.full(len(gratings), 0.8)),
    }


def _evoked(unit: int, name: str, row: pd.Series) -> int:
    """Spikes a presentation drives in ``unit`` (on top of the background)."""
    if unit not in PLANTED:
        return 0
    x0, y0, frame, orientation = PLANTED[unit]
    if name == "gabors":
        return 6 if (row.x_position, row.y_position) == (x0, y0) else 0
    if name == "natural_scenes":
        return 5 if row.frame == frame else 0
    if np.isnan(row.orientation):
        return 0
    return 4 if orientation is None or row.orientation == orientation else 0


def planted_spikes(presentations: dict[str, pd.DataFrame], rng: np.random.Generator) -> list[np.ndarray]:
    """Evoked spikes 50-200 ms after onset, Poisson background at 2 Hz (units 1-3), 4 spikes for unit 4."""
    end = max(t["stop_time"].max() for t in presentations.values())
    trains = []
    for unit in UNIT_IDS:
        times = [rng.uniform(0.0, end, rng.poisson(2.0 * end))] if unit != 4 else [np.array([1.1, 40.1, 90.1, 130.1])]
        for name, table in presentations.items():
            for row in table.itertuples():
                k = _evoked(int(unit), name, row)
                times.append(row.start_time + 0.05 + 0.15 * (np.arange(k) + 0.5) / max(k, 1))
        trains.append(np.sort(np.concatenate(times)).astype(np.float64))
    return trains


def planted_session(session_id: int = SID) -> nwb.EcephysSessionArrays:
    """One probe in VISp, 4 units with the preferences of :data:`PLANTED`."""
    rng = np.random.default_rng(7)
    presentations = planted_presentations(rng)
    n = len(UNIT_IDS)
    units = nwb.Units(unit_ids=UNIT_IDS, spike_times=planted_spikes(presentations, rng),
                      peak_channel_ids=np.array([11, 11, 12, 12]), quality=np.array(["good"] * n),
                      amplitude_cutoff=np.full(n, 0.01), presence_ratio=np.full(n, 0.99),
                      isi_violations=np.full(n, 0.1), snr=np.full(n, 3.0))
    return nwb.EcephysSessionArrays(
        session_id=session_id, session_type="brain_observatory_1.1", specimen_id=1, age_in_days=110.0, sex="F",
        genotype="wt/wt", probes=nwb.Probes(probe_ids=np.array([5]), names=np.array(["probeC"])),
        channels=nwb.Channels(channel_ids=np.array([11, 12]), probe_ids=np.array([5, 5]),
                              local_index=np.array([0, 1]), vertical_position=np.array([20.0, 40.0]),
                              horizontal_position=np.array([43.0, 11.0]), structure_acronyms=np.array(["VISp"] * 2)),
        units=units, presentations=presentations, scene_templates=np.zeros((FRAMES, 6, 8), dtype=np.uint8))


@functools.lru_cache(maxsize=None)
def planted_nwb_bytes(session_id: int) -> bytes:
    """The bytes of :func:`planted_session`'s NWB file (written once per id)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = nwb.write_session_nwb(Path(tmp) / "s.nwb", planted_session(session_id))
        return path.read_bytes()


def scene_condition_ids(presentations: dict[str, pd.DataFrame]) -> dict[int, int]:
    """frame -> allensdk's stimulus_condition_id, worked out by hand: allensdk numbers the conditions in order
    of first appearance over the whole session; gabors come first (243 conditions, ids 0..242)."""
    frames = presentations["natural_scenes"]["frame"].astype(int).tolist()
    first_seen = list(dict.fromkeys(frames))
    return {frame: 243 + k for k, frame in enumerate(first_seen)}


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    cache = tmp_path_factory.mktemp("metrics_cache")
    arrays = planted_session()
    nwb.write_session(cache, arrays)
    path = write_synthetic_analysis_metrics(cache, SID, seed=0)
    return cache, read_analysis_metrics(path)


# --------------------------------------------------------------------------------------
# pref_image_ns: condition id -> image
# --------------------------------------------------------------------------------------
def test_scene_frames_maps_condition_ids_not_frame_numbers():
    # a laid-out stimulus_conditions table as allensdk gives it: strings, 'null' where a parameter does not apply
    conditions = pd.DataFrame(
        {"stimulus_name": ["gabors", "natural_scenes", "natural_scenes", "natural_scenes", "static_gratings"],
         "frame": ["null", "2.0", "-1.0", "0.0", "null"], "orientation": ["45.0", "null", "null", "null", "30.0"]},
        index=pd.Index([4907, 4908, 4909, 5026, 5027], name="stimulus_condition_id"))
    frames = scene_frames(conditions)
    assert frames.to_dict() == {4908: 2, 4909: -1, 5026: 0}
    metrics = pd.DataFrame({"pref_image_ns": [5026, 4908, np.nan, 4907]}, index=[10, 11, 12, 13])
    mapped = with_pref_frames(metrics, frames, Path("x.csv"))
    # pref_image_ns now names the image; Allen's condition id is kept beside it
    np.testing.assert_array_equal(mapped["pref_image_ns"].to_numpy(), [0.0, 2.0, np.nan, np.nan])  # 4907: no scene
    np.testing.assert_array_equal(mapped[PREF_CONDITION].to_numpy(), [5026.0, 4908.0, np.nan, 4907.0])
    assert list(mapped.columns) == ["pref_image_ns", PREF_CONDITION]
    with pytest.raises(NeuropixelsError, match="stimulus_name / frame"):
        scene_frames(conditions.drop(columns="frame"))


# --------------------------------------------------------------------------------------
# the synthetic session's metrics: Allen's definitions recover what was planted
# --------------------------------------------------------------------------------------
def test_synthetic_metrics_recover_the_planted_preferences(written):
    cache, table = written
    assert list(table.columns) == list(ANALYSIS_COLUMNS)
    assert sorted(table.index) == UNIT_IDS.tolist()
    ids = scene_condition_ids(planted_presentations(np.random.default_rng(7)))
    for unit, (x, y, frame, _) in PLANTED.items():
        row = table.loc[unit]
        assert row["p_value_rf"] < 0.01
        # Allen's gaze-centred degrees: screen x + 50, y + 10 (a lone hot position: its centre of mass)
        assert (row["azimuth_rf"], row["elevation_rf"]) == pytest.approx((x + 50.0, y + 10.0), abs=1e-6)
        assert row["pref_image_ns"] == ids[frame] and row["pref_image_ns"] != frame  # a condition id
    assert table.loc[3, "p_value_rf"] > 0.01  # flat: background only
    assert np.isnan(table.loc[4, ["p_value_rf", "azimuth_rf", "elevation_rf"]].to_numpy(dtype=float)).all()
    # unit 1 answers one of 6 orientations (4 spikes over a 0.5 background: OSI ~ 4 / (4 + 6 x 0.5) = 0.57),
    # unit 2 all of them alike (OSI near 0)
    assert table.loc[1, "g_osi_sg"] > 0.4 > 0.2 > table.loc[2, "g_osi_sg"]
    assert table.loc[1, "image_selectivity_ns"] > table.loc[3, "image_selectivity_ns"]
    # the file is exactly what allensdk's cache would read for get_unit_analysis_metrics_for_session
    from allensdk.brain_observatory.ecephys.ecephys_project_cache import read_metrics_csv

    pd.testing.assert_frame_equal(read_metrics_csv(str(analysis_metrics_file(cache, SID))), table)


def test_synthetic_metrics_are_seeded_and_leave_the_nwb_untouched(written):
    cache, table = written
    assert session_nwb(cache, SID).read_bytes() == planted_nwb_bytes(SID)  # only read, never written
    with read_session(session_nwb(cache, SID), unfiltered=True) as session:
        same = session_analysis_metrics(session, seed=0)
        other = session_analysis_metrics(session, seed=1)
    pd.testing.assert_frame_equal(same.astype(float), table.astype(float), check_names=False)
    # the shuffle test's p-values follow the seed (unit 3, flat, has one strictly between 0 and 1)
    assert 0 < table.loc[3, "p_value_rf"] < 1 and other.loc[3, "p_value_rf"] != table.loc[3, "p_value_rf"]
    pd.testing.assert_frame_equal(other.drop(columns="p_value_rf").astype(float),
                                  table.drop(columns="p_value_rf").astype(float), check_names=False)


# --------------------------------------------------------------------------------------
# the rank stage's table: Allen's columns beside meiscope's
# --------------------------------------------------------------------------------------
def test_allen_metrics_join_the_ranking_table_with_the_image_each_unit_prefers(written):
    from meiscope.ranking import join_allen_metrics

    cache, table = written
    allen = Neuropixels().allen_metrics(cache, SID)
    assert allen.id_column == "unit_id"
    assert allen.columns == ("p_value_rf", "azimuth_rf", "elevation_rf", "pref_image_ns", PREF_CONDITION,
                             "image_selectivity_ns", "g_osi_sg")  # no quality metrics: nothing was downloaded
    assert allen.not_medians == ("p_value_rf", "azimuth_rf", "elevation_rf", "pref_image_ns", PREF_CONDITION)
    ranking = pd.DataFrame({"cell_id": [2, 1, 99], "reliability": [0.5, 0.7, 0.1]})
    joined = join_allen_metrics(ranking, allen)
    assert joined["allen_pref_image_ns"].tolist()[:2] == [PLANTED[2][2], PLANTED[1][2]]  # the image, not the id
    ids = scene_condition_ids(planted_presentations(np.random.default_rng(7)))
    assert joined[f"allen_{PREF_CONDITION}"].tolist()[:2] == [ids[PLANTED[2][2]], ids[PLANTED[1][2]]]
    np.testing.assert_allclose(joined["allen_p_value_rf"][:2], table.loc[[2, 1], "p_value_rf"])
    assert joined.iloc[2, 2:].isna().all()  # a unit Allen does not list
    assert joined["reliability"].tolist() == [0.5, 0.7, 0.1]  # meiscope's own figures untouched


def test_no_metrics_file_means_no_allen_columns(tmp_path):
    assert Neuropixels().allen_metrics(tmp_path, SID) is None


@pytest.mark.parametrize("text, why", [("", "unreadable unit analysis metrics"),
                                       ("ecephys_unit_id,foo\n1,2\n", "not Allen's unit analysis metrics"),
                                       ("unit,p_value_rf\n1,0.5\n", "unreadable unit analysis metrics")])
def test_broken_metrics_file_is_one_line_and_kept(tmp_path, text, why):
    path = analysis_metrics_file(tmp_path, SID)
    path.parent.mkdir(parents=True)
    path.write_text(text)
    with pytest.raises(DownloadError, match=why) as info:
        Neuropixels().allen_metrics(tmp_path, SID)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert path.read_text() == text
