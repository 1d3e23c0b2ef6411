"""The Neuropixels download stage, fully offline: allensdk's EcephysProjectCache is laid out in
tmp_path and only the two methods of allensdk's HTTP engine that touch the network are replaced
(``RmaEngine.get_rma``: every API query; ``HttpEngine.stream``: every file download)."""

from __future__ import annotations

import ast
import io
import json
import re
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import requests
import SimpleITK as sitk

from allensdk.brain_observatory.ecephys.ecephys_project_api.http_engine import HttpEngine
from allensdk.brain_observatory.ecephys.ecephys_project_api.rma_engine import RmaEngine
from meiscope.recordings.downloads import DownloadError, SelectionError, is_readable_hdf5
from meiscope.recordings.neuropixels.settings import NeuropixelsConfig
from meiscope.recordings.neuropixels.cache import (NWB_GROUPS, TABLES, open_cache, scene_template_file, session_nwb,
                                                   table_csv)
from meiscope.recordings.neuropixels.download import (N_SCENES, download_sessions, load_unit_metrics, select_sessions,
                                           session_table, unit_metrics_file)


# --------------------------------------------------------------------------------------
# no network, ever
# --------------------------------------------------------------------------------------
pytestmark = pytest.mark.usefixtures("no_network")  # conftest.py: every connection fails


# --------------------------------------------------------------------------------------
# a tiny project: 4 sessions, one probe each, a few channels and units
# --------------------------------------------------------------------------------------
# session id -> (session_type, areas of its channels); None = a channel outside the brain
SESSIONS = {
    101: ("brain_observatory_1.1", ["VISp", "CA1", None]),
    102: ("brain_observatory_1.1", ["VISl", "CA1"]),
    103: ("brain_observatory_1.1", ["VISp", "VISl"]),
    201: ("functional_connectivity", ["VISp", "LP"]),
}
STRUCTURE_IDS = {"VISp": 385, "VISl": 409, "CA1": 382, "LP": 218}


def _tables() -> dict[str, pd.DataFrame]:
    """The four project tables, with consistent ids, as allensdk caches them (index ``id``)."""
    sessions, probes, channels, units = [], [], [], []
    for sid, (session_type, areas) in SESSIONS.items():
        sessions.append({"id": sid, "session_type": session_type, "specimen_id": sid + 5000, "age_in_days": 110,
                         "sex": "F", "genotype": "wt", "published_at": "2019-10-03T00:00:00Z", "has_nwb": True,
                         "structure_acronyms": str([a for a in areas if a])})
        pid = sid * 10
        probes.append({"id": pid, "ecephys_session_id": sid, "name": "probeC", "sampling_rate": 30000.0,
                       "lfp_sampling_rate": 2500.0, "has_lfp_data": True})
        for k, area in enumerate(areas):
            cid = pid * 10 + k
            channels.append({"id": cid, "ecephys_probe_id": pid, "local_index": k, "probe_horizontal_position": 43,
                             "probe_vertical_position": 20 * k, "anterior_posterior_ccf_coordinate": 8000.0,
                             "dorsal_ventral_ccf_coordinate": 1000.0, "left_right_ccf_coordinate": 7000.0,
                             "ecephys_structure_id": STRUCTURE_IDS.get(area, np.nan), "ecephys_structure_acronym": area})
            # per channel: a good unit, a noise unit with poor metrics, and a unit without amplitude cutoff
            for j, (quality, cutoff, presence) in enumerate([("good", 0.01, 0.99), ("noise", 0.4, 0.5),
                                                             ("good", np.nan, 0.99)]):
                units.append({"id": cid * 10 + j, "ecephys_channel_id": cid, "quality": quality,
                              "amplitude_cutoff": cutoff, "presence_ratio": presence, "isi_violations": 0.1,
                              "snr": 2.5, "firing_rate": 4.0, "isolation_distance": 30.0})
    return {name: pd.DataFrame(rows).set_index("id")
            for name, rows in zip(TABLES, (sessions, probes, channels, units))}


def _units_of(sid: int) -> list[int]:
    units = _tables()["units"]
    return sorted(i for i in units.index if i // 1000 == sid)


def _nwb_bytes(sid: int) -> bytes:
    """A small real session NWB (pynwb and allensdk read it): the downloader reads every session file first."""
    from test_unit_metrics import planted_nwb_bytes

    return planted_nwb_bytes(sid)


def _scene(number: int) -> np.ndarray:
    """A small stand-in for template ``number`` (the real ones are 918 x 1174 uint8)."""
    return np.full((6, 8), number, dtype=np.uint8)


def _tiff_bytes(number: int, tmp_dir: Path) -> bytes:
    path = tmp_dir / f"scene_{number}.tiff"
    sitk.WriteImage(sitk.GetImageFromArray(_scene(number)), str(path))
    return path.read_bytes()


def _write_scenes(cache: Path) -> None:
    for number in range(N_SCENES):
        path = scene_template_file(cache, number)
        path.parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(sitk.GetImageFromArray(_scene(number)), str(path))


def _write_nwb(cache: Path, sid: int, data: bytes | None = None) -> Path:
    path = session_nwb(cache, sid)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_nwb_bytes(sid) if data is None else data)
    return path


@pytest.fixture
def tables_only(tmp_path) -> Path:
    """The cache with manifest and the four tables, but no NWB and no scene template."""
    open_cache(tmp_path, offline=True)  # writes manifest.json
    for name, table in _tables().items():
        table.to_csv(table_csv(tmp_path, name))
    return tmp_path


@pytest.fixture
def cache(tables_only) -> Path:
    """The cache with tables and scene templates, but no NWB."""
    _write_scenes(tables_only)
    return tables_only


# --------------------------------------------------------------------------------------
# the fake Allen API
# --------------------------------------------------------------------------------------
class FakeAllen:
    """Stands in for the two network methods of allensdk's engine; records every call.

    ``stream(kind, key)`` yields the bytes of a file (``kind`` is "session" or "scene"); pass another
    generator to simulate a failing or interrupted download.
    """

    def __init__(self, monkeypatch, tmp_dir: Path, stream=None):
        self.queries: list[str] = []
        self.streams: list[str] = []
        self.timeouts: list[float] = []  # the engine's total-time limit of each download
        self.tmp_dir = tmp_dir
        self.stream = stream or self.whole_file
        fake = self

        def get_rma(engine, query):
            fake.queries.append(query)
            yield fake.answer(query)

        def stream_route(engine, route):
            fake.streams.append(route)
            fake.timeouts.append(engine.timeout)
            kind, key = route.rsplit("/", 2)[-2:]
            return fake.stream(kind, int(key))

        monkeypatch.setattr(RmaEngine, "get_rma", get_rma)
        monkeypatch.setattr(HttpEngine, "stream", stream_route)

    @property
    def calls(self) -> int:
        return len(self.queries) + len(self.streams)

    def answer(self, query: str) -> list[dict]:
        """The records of one RMA query (one page)."""
        if "EcephysNwb" in query:
            sid = int(re.search(r"attachable_id\$eq(\d+)", query).group(1))
            return [{"id": 1, "download_link": f"/api/v2/well_known_file_download/session/{sid}"}]
        if "EcephysUnitMetricBundle" in query:
            sid = int(re.search(r"ecephys_session\[id\$in(\d+)", query).group(1))
            return [{"id": k, "ecephys_unit_id": uid,
                     "data": json.dumps({"p_value_rf": 0.001 * k, "azimuth_rf": 60.0, "elevation_rf": 20.0,
                                         "pref_image_ns": 243 + k % 3, "image_selectivity_ns": 0.2,
                                         "g_osi_sg": 0.3})} for k, uid in enumerate(_units_of(sid))]
        if "well_known_file_type[name$eq'Stimulus']" in query:
            return [{"id": 2 + n, "path": f"/external/ecephys/templates/{n}.tiff",
                     "download_link": f"/api/v2/well_known_file_download/scene/{n}"} for n in range(N_SCENES)]
        tables = _tables()
        if "model::EcephysSession" in query:
            return [_session_record(sid, row) for sid, row in tables["sessions"].iterrows()]
        for name, model in (("probes", "EcephysProbe"), ("channels", "EcephysChannel"), ("units", "EcephysUnit")):
            if f"model::{model}" in query:
                table = tables[name].rename(columns={"has_lfp_data": "use_lfp_data"})
                return table.reset_index().to_dict("records")
        raise AssertionError(f"unexpected query {query}")

    def whole_file(self, kind: str, key: int):
        yield _nwb_bytes(key) if kind == "session" else _tiff_bytes(key, self.tmp_dir)


def _session_record(sid: int, row: pd.Series) -> dict:
    """One EcephysSession record as the API nests it."""
    return {"id": sid, "stimulus_name": row["session_type"], "specimen_id": row["specimen_id"],
            "published_at": row["published_at"], "structure_acronyms": ast.literal_eval(row["structure_acronyms"]),
            "fail_eye_tracking": False, "well_known_files": [{"well_known_file_type": {"name": "EcephysNwb"}}],
            "specimen": {"donor": {"age": {"days": 110}, "sex": "F", "full_genotype": None}}}


def _half_then(error):
    """A stream that delivers half an NWB file, then raises ``error`` (or just ends)."""
    def stream(kind, key):
        whole = _nwb_bytes(key)
        yield whole[: len(whole) // 2]
        if error is not None:
            raise error
    return stream


def _leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.rglob("*") if p.name.startswith(".") or ".part" in p.name)


def _select(cache: Path, **cfg) -> list[int]:
    return select_sessions(session_table(open_cache(cache, offline=True), cache), NeuropixelsConfig(**cfg))


# --------------------------------------------------------------------------------------
# selection
# --------------------------------------------------------------------------------------
def test_neuropixels_select_by_filters(tables_only):
    assert _select(tables_only) == [101]  # VISp, brain_observatory_1.1, max_sessions 1
    assert _select(tables_only, max_sessions=5) == [101, 103]
    assert _select(tables_only, areas=["VISp", "VISl"], max_sessions=5) == [103]
    assert _select(tables_only, areas=["CA1"], max_sessions=5) == [101, 102]
    assert _select(tables_only, session_type="functional_connectivity", max_sessions=5) == [201]


def test_neuropixels_nothing_selected_names_the_filters(tables_only):
    with pytest.raises(SelectionError) as info:
        _select(tables_only, areas=["VISp", "LP"])
    message = str(info.value)
    assert "\n" not in message
    assert "brain_observatory_1.1" in message and "neuropixels.areas=['VISp', 'LP']" in message


def test_neuropixels_explicit_ids_win_over_filters(tables_only):
    # 102 records no VISp and max_sessions is 1: the explicit list still wins
    assert _select(tables_only, session_ids=[103, 102, 103]) == [102, 103]


@pytest.mark.parametrize("ids, wrong", [([101, 999], "999"), ([201], "201")])
def test_neuropixels_unknown_or_other_type_id_is_refused(tables_only, ids, wrong):
    with pytest.raises(SelectionError, match=wrong) as info:
        _select(tables_only, session_ids=ids)
    assert "neuropixels.session_ids" in str(info.value) and "\n" not in str(info.value)


# --------------------------------------------------------------------------------------
# download
# --------------------------------------------------------------------------------------
def test_neuropixels_download_layout_templates_and_unit_metrics(tables_only, tmp_path_factory, monkeypatch):
    api = FakeAllen(monkeypatch, tmp_path_factory.mktemp("tiffs"))
    ids = download_sessions(NeuropixelsConfig(session_ids=[103, 101]), tables_only, progress=True)
    assert ids == [101, 103]
    cache = open_cache(tables_only, offline=True)
    for sid in ids:
        path = session_nwb(tables_only, sid)
        assert path == Path(cache.get_cache_path(None, cache.SESSION_NWB_KEY, sid, sid))
        assert path.read_bytes() == _nwb_bytes(sid)
    assert not session_nwb(tables_only, 102).exists()
    assert min(api.timeouts) >= 6 * 3600  # not allensdk's 20 minutes for a 3 GB file
    # one listing query for all templates; each template read back through allensdk
    assert sum("Stimulus" in q for q in api.queries) == 1
    assert len(api.streams) == 2 + N_SCENES
    for number in (0, 57, N_SCENES - 1):
        np.testing.assert_array_equal(cache.get_natural_scene_template(number), _scene(number))
    # unit metrics: every unit of the session (noise, NaN metrics and out of brain included)
    table = load_unit_metrics(tables_only, 101)
    assert table["unit_id"].tolist() == _units_of(101)
    assert list(table.columns) == ["unit_id", "ecephys_session_id", "ecephys_structure_acronym", "quality",
                                   "amplitude_cutoff", "presence_ratio", "isi_violations", "snr", "firing_rate"]
    assert (table["ecephys_session_id"] == 101).all()
    assert set(table["quality"]) == {"good", "noise"}
    assert table["amplitude_cutoff"].isna().sum() == 3
    assert table["ecephys_structure_acronym"].isna().sum() == 3  # the channel outside the brain
    assert load_unit_metrics(tables_only, 103)["unit_id"].tolist() == _units_of(103)
    assert load_unit_metrics(tables_only, 102) is None
    assert _leftovers(tables_only) == []
    # the rank stage sets Allen's quality metrics beside its own (a unit Allen does not list gets NaN)
    from meiscope.ranking import join_allen_metrics
    from meiscope.recordings.neuropixels import UNIT_METRIC_COLUMNS, Neuropixels

    picked = table["unit_id"].to_numpy()[::-1][:2]
    joined = join_allen_metrics(pd.DataFrame({"cell_id": np.append(picked, 12345)}),
                                Neuropixels().allen_metrics(tables_only, 101))
    assert list(joined.columns[1:1 + len(UNIT_METRIC_COLUMNS)]) == [f"allen_{c}" for c in UNIT_METRIC_COLUMNS]
    assert "allen_p_value_rf" in joined.columns and "allen_pref_image_ns_condition" in joined.columns
    # the downloaded condition ids (243-245: the first scene conditions) become the images they name
    assert set(joined["allen_pref_image_ns_condition"][:2]) <= {243.0, 244.0, 245.0}
    assert set(joined["allen_pref_image_ns"][:2]) <= set(range(5))
    np.testing.assert_allclose(joined["allen_snr"].to_numpy()[:2],
                               table.set_index("unit_id").loc[picked, "snr"].to_numpy(dtype=float))
    assert joined.iloc[2, 1:].isna().all() and Neuropixels().allen_metrics(tables_only, 102) is None


def test_neuropixels_everything_cached_makes_no_network_call(cache, tmp_path_factory, monkeypatch):
    api = FakeAllen(monkeypatch, tmp_path_factory.mktemp("tiffs"))
    _write_nwb(cache, 101)
    assert download_sessions(NeuropixelsConfig(), cache, progress=False) == [101]
    assert unit_metrics_file(cache, 101).is_file()
    first = api.calls  # the unit analysis metrics: one query
    assert download_sessions(NeuropixelsConfig(), cache, progress=False) == [101]
    assert api.calls == first == 1
    assert session_nwb(cache, 101).read_bytes() == _nwb_bytes(101)


def test_neuropixels_tables_are_fetched_once(tmp_path, tmp_path_factory, monkeypatch):
    api = FakeAllen(monkeypatch, tmp_path_factory.mktemp("tiffs"))
    table = session_table(open_cache(tmp_path, offline=False), tmp_path)
    assert sorted(table.index) == sorted(SESSIONS)
    assert all(table_csv(tmp_path, name).is_file() for name in TABLES)
    assert len(api.queries) == 4
    select = NeuropixelsConfig(areas=["VISp", "VISl"])
    assert select_sessions(session_table(open_cache(tmp_path, offline=False), tmp_path), select) == [103]
    assert len(api.queries) == 4  # the second reading is served by the cache


def _damaged(kind: str, sid: int) -> bytes:
    whole = _nwb_bytes(sid)
    if kind == "truncated":
        return whole[: len(whole) // 2]
    if kind == "garbage":
        return bytes(range(256)) * 64
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:  # HDF5 with a session's top-level groups, but not NWB
        for group in ("general", "intervals", "units"):
            f.create_group(group)
        f["padding"] = np.zeros(64)
    return buffer.getvalue()


@pytest.mark.parametrize("kind", ["truncated", "garbage", "hdf5_not_nwb"])
def test_neuropixels_damaged_cached_nwb_is_reported_and_kept(cache, tmp_path_factory, monkeypatch, kind):
    from meiscope.recordings.neuropixels.cache import NeuropixelsError, check_session_file

    api = FakeAllen(monkeypatch, tmp_path_factory.mktemp("tiffs"))
    data = _damaged(kind, 101)
    path = _write_nwb(cache, 101, data)
    with pytest.raises(DownloadError) as info:
        download_sessions(NeuropixelsConfig(), cache, progress=False)
    message = str(info.value)
    assert message.startswith(f"{path}: not a readable Neuropixels session NWB") and "\n" not in message
    assert api.streams == []  # nothing fetched over it
    with pytest.raises(NeuropixelsError, match="not a readable Neuropixels session NWB"):
        check_session_file(path)  # what the extract stage calls before allensdk opens the session
    assert path.read_bytes() == data


def test_neuropixels_offline_missing_nwb_is_one_line_download_error(cache):
    # nothing mocked: allensdk's real query of the file's address hits the socket guard
    with pytest.raises(DownloadError) as info:
        download_sessions(NeuropixelsConfig(), cache, progress=False)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("could not fetch the NWB file of session 101 from the Allen Brain Observatory API")
    assert "data.source: synthetic" in message
    assert not session_nwb(cache, 101).exists()
    assert not unit_metrics_file(cache, 101).exists()
    assert _leftovers(cache) == []


def test_neuropixels_offline_without_tables_leaves_no_csv(tmp_path):
    with pytest.raises(DownloadError, match="Neuropixels project tables") as info:
        download_sessions(NeuropixelsConfig(), tmp_path, progress=False)
    assert "\n" not in str(info.value) and "data.source: synthetic" in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]


def test_neuropixels_offline_missing_template_leaves_no_tiff(cache):
    _write_nwb(cache, 101)
    scene_template_file(cache, 7).unlink()
    with pytest.raises(DownloadError, match="natural-scene template 7"):
        download_sessions(NeuropixelsConfig(), cache, progress=False)
    assert not scene_template_file(cache, 7).exists()
    assert _leftovers(cache) == []


@pytest.mark.parametrize("error", [requests.exceptions.ConnectionError("connection reset by peer"),
                                   None])  # None: the stream ends early without an error
def test_neuropixels_failed_download_leaves_no_partial_nwb(cache, tmp_path_factory, monkeypatch, error):
    api = FakeAllen(monkeypatch, tmp_path_factory.mktemp("tiffs"), stream=_half_then(error))
    with pytest.raises(DownloadError, match="session 101") as info:
        download_sessions(NeuropixelsConfig(), cache, progress=False)
    assert "\n" not in str(info.value)
    assert len(api.streams) == 2  # allensdk's fetch_tries
    assert not session_nwb(cache, 101).exists()
    assert _leftovers(cache) == []


def test_neuropixels_interrupted_download_leaves_no_file(cache, tmp_path_factory, monkeypatch):
    # allensdk only cleans up after Exception; Ctrl-C must not leave half a file either
    FakeAllen(monkeypatch, tmp_path_factory.mktemp("tiffs"), stream=_half_then(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        download_sessions(NeuropixelsConfig(), cache, progress=False)
    assert not session_nwb(cache, 101).exists()
    assert _leftovers(cache) == []


def test_neuropixels_unreadable_unit_metrics_file(tmp_path):
    path = unit_metrics_file(tmp_path, 5)
    path.parent.mkdir(parents=True)
    path.write_text("")
    with pytest.raises(DownloadError, match="5.csv"):
        load_unit_metrics(tmp_path, 5)



@pytest.mark.parametrize("text", ['{"manifest": "x"}', "[1"])
def test_neuropixels_foreign_manifest_is_one_line_and_kept(tmp_path, text):
    manifest = tmp_path / "manifest.json"
    manifest.write_text(text)
    with pytest.raises(DownloadError, match=re.escape(f"{manifest}: not an allensdk manifest")) as info:
        open_cache(tmp_path, offline=False)
    assert "\n" not in str(info.value)
    assert manifest.read_text() == text
