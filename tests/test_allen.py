"""The Allen download stage, fully offline: allensdk's cache is laid out in tmp_path and only
its two low-level HTTP functions are replaced (JSON queries and the NWB file stream)."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from urllib.parse import unquote

import h5py
import numpy as np
import pandas as pd
import pytest
import requests

import allensdk.api.api as sdk_api
import allensdk.core.json_utilities as sdk_json
from meiscope.recordings.two_photon.download import (DownloadError, SelectionError, cell_metrics_file, download_containers,
                            download_experiments,
                            is_readable_hdf5, load_cell_metrics, nwb_file, open_cache, select_experiments)
from meiscope.recordings.two_photon.settings import AllenConfig
from meiscope.errors import MeiscopeError


# --------------------------------------------------------------------------------------
# no network, ever
# --------------------------------------------------------------------------------------
pytestmark = pytest.mark.usefixtures("no_network")  # conftest.py: every connection fails


# --------------------------------------------------------------------------------------
# fake Allen records and files
# --------------------------------------------------------------------------------------
def _experiment(eid, container, structure="VISp", cre="Cux2-CreERT2", depth=175,
                session="three_session_B", failed=False):
    """One raw ``ophys_experiments.json`` record, as the API returns it."""
    return {
        "id": eid, "imaging_depth": depth, "targeted_structure": {"acronym": structure},
        "experiment_container_id": container, "stimulus_name": session,
        "experiment_container": {"failed": failed}, "date_of_acquisition": "2016-04-01T10:00:00Z",
        "specimen": {"name": f"mouse-{eid}", "donor": {
            "external_donor_name": f"donor-{eid}", "date_of_birth": "2016-01-01T00:00:00Z",
            "transgenic_lines": [{"name": cre, "transgenic_line_type_name": "driver"},
                                 {"name": "Ai93(TITL-GCaMP6f)", "transgenic_line_type_name": "reporter"}]}},
    }


EXPERIMENTS = [
    _experiment(101, 1),
    _experiment(102, 1, session="three_session_A"),  # no natural scenes
    _experiment(103, 2, cre="Rbp4-Cre_KL100", depth=375),
    _experiment(104, 3, structure="VISl"),
    _experiment(105, 4, cre="Emx1-IRES-Cre", depth=275),
    _experiment(106, 5, failed=True),  # failed container
    _experiment(107, 1, session="three_session_C2"),  # no natural scenes
]
# Cells stored in each session's NWB, in trace order (999 has no metrics row).
NWB_CELLS = {101: [12, 11, 999], 102: [11, 13], 103: [21], 104: [31], 105: [41, 42], 107: [13, 12]}


def _cell(cid, container, p_ns):
    return {"cell_specimen_id": cid, "experiment_container_id": container, "area": "VISp",
            "imaging_depth": 175, "tld1_name": "Cux2-CreERT2", "p_ns": p_ns, "reliability_ns": 0.5,
            "peak_dff_ns": 3.0, "image_sel_ns": 0.2, "pref_image_ns": 7, "failed_experiment_container": False}


CELLS = [_cell(11, 1, 1e-5), _cell(12, 1, 0.2), _cell(13, 1, 0.01),  # 13: only in sessions A / C2
         _cell(21, 2, 1e-3), _cell(31, 3, 0.5), _cell(41, 4, 0.04), _cell(42, 4, None)]


def _nwb_bytes(eid: int) -> bytes:
    """A minimal session that BrainObservatoryNwbDataSet opens (fixed-length byte strings)."""
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        f["general/session_id"] = np.bytes_(str(eid))
        f["general/session_type"] = np.bytes_("three_session_B")
        f["general/generated_by"] = np.array([b"allensdk", b"3.0"])
        seg = "processing/brain_observatory_pipeline/ImageSegmentation"
        f[f"{seg}/cell_specimen_ids"] = np.array(NWB_CELLS[eid], dtype=np.int64)
        f[f"{seg}/roi_ids"] = np.array([str(i).encode() for i in range(len(NWB_CELLS[eid]))])
        f["padding"] = np.zeros(4096)  # so that half a file is really truncated
    return buffer.getvalue()


@pytest.fixture
def cache(tmp_path) -> Path:
    """allensdk's cache folder with manifest, experiment list and cell table, but no NWB."""
    open_cache(tmp_path)
    (tmp_path / "ophys_experiments.json").write_text(json.dumps(EXPERIMENTS))
    (tmp_path / "cell_specimens.json").write_text(json.dumps(CELLS))
    return tmp_path


class FakeApi:
    """Stands in for the two HTTP functions allensdk uses; counts what it is asked."""

    def __init__(self, monkeypatch, stream=None):
        self.queries: list[str] = []
        self.streams: list[str] = []
        self.stream = stream or self.write_session
        monkeypatch.setattr(sdk_json, "read_url_get", self.read_url_get)
        monkeypatch.setattr(sdk_api, "stream_file_over_http", self.stream_file_over_http)

    def read_url_get(self, url):
        self.queries.append(url)
        if "WellKnownFile" in url and "attachable_id" in url:
            eid = int(re.search(r"attachable_id\$eq(\d+)", unquote(url)).group(1))
            return {"success": True, "msg": [{"download_link": f"/api/v2/well_known_file_download/{eid}"}]}
        if "OphysExperiment" in url:
            return {"success": True, "msg": EXPERIMENTS}
        raise AssertionError(f"unexpected query {url}")

    def stream_file_over_http(self, url, file_path, timeout=None):
        self.streams.append(url)
        self.stream(int(url.rsplit("/", 1)[1]), Path(file_path))

    @staticmethod
    def write_session(eid, path):
        path.write_bytes(_nwb_bytes(eid))


def _select(cache, **cfg) -> list[int]:
    return [e["id"] for e in select_experiments(open_cache(cache), AllenConfig(**cfg))]


# --------------------------------------------------------------------------------------
# selection
# --------------------------------------------------------------------------------------
def test_select_by_filters_keeps_natural_scenes_only(cache, monkeypatch):
    api = FakeApi(monkeypatch)
    # VISp three_session_B of passing containers: 101, 103, 105 (not 102 / 107: sessions A, C2; not 106: failed)
    assert _select(cache, max_experiments=10) == [101, 103, 105]
    assert _select(cache) == [101]  # max_experiments defaults to 1, smallest id first
    assert _select(cache, max_experiments=2) == [101, 103]
    assert _select(cache, cre_lines=["Rbp4-Cre_KL100"], max_experiments=10) == [103]
    assert _select(cache, imaging_depth_min=200, imaging_depth_max=300, max_experiments=10) == [105]
    assert _select(cache, targeted_structures=["VISl"], max_experiments=10) == [104]
    assert _select(cache, targeted_structures=[], max_experiments=10) == [101, 103, 104, 105]
    with pytest.raises(SelectionError, match="selects no natural-scenes"):
        _select(cache, cre_lines=["Rbp4-Cre_KL100"], imaging_depth_max=300)
    assert api.queries == []  # the cached list is enough: no API call at all


def test_explicit_ids_win_over_filters(cache, monkeypatch):
    FakeApi(monkeypatch)
    # 104 is VISl and 105 is deeper than allowed, max is 1: the explicit list still wins
    assert _select(cache, experiment_ids=[105, 104, 105], imaging_depth_max=200) == [104, 105]
    with pytest.raises(SelectionError, match=r"\[102, 106\]"):
        _select(cache, experiment_ids=[101, 102, 106])


def test_truncated_experiment_list_is_fetched_again(cache, monkeypatch):
    api = FakeApi(monkeypatch)
    listing = cache / "ophys_experiments.json"
    listing.write_text(json.dumps(EXPERIMENTS)[:50])
    assert _select(cache, max_experiments=10) == [101, 103, 105]
    assert len(api.queries) == 1
    assert json.loads(listing.read_text()) == EXPERIMENTS


# --------------------------------------------------------------------------------------
# download
# --------------------------------------------------------------------------------------
def test_download_containers_fetches_the_other_sessions_of_the_studied_cells(cache, monkeypatch):
    api = FakeApi(monkeypatch)
    # 101 is container 1's session B; 102 (A) and 107 (C2) hold the same cells under the same ids
    assert download_containers(AllenConfig(experiment_ids=[101, 103]), ["A", "B", "C"], cache,
                               progress=False) == [101, 102, 103, 107]
    for eid in (101, 102, 103, 107):
        assert is_readable_hdf5(nwb_file(cache, eid))
    assert h5py.File(nwb_file(cache, 107))["processing/brain_observatory_pipeline/ImageSegmentation/"
                                           "cell_specimen_ids"][()].tolist() == [13, 12]
    streamed = len(api.streams)
    # only the sessions asked for; files already cached are not fetched again
    assert download_containers(AllenConfig(experiment_ids=[101]), ["B", "C"], cache, progress=False) == [101, 107]
    assert len(api.streams) == streamed


def test_download_layout_and_cell_metrics(cache, monkeypatch):
    api = FakeApi(monkeypatch)
    ids = download_experiments(AllenConfig(experiment_ids=[103, 101]), cache, progress=False)
    assert ids == [101, 103]
    assert len(api.streams) == 2
    for eid in ids:
        assert is_readable_hdf5(nwb_file(cache, eid))
        assert nwb_file(cache, eid) == cache / "ophys_experiment_data" / f"{eid}.nwb"
        assert cell_metrics_file(cache, eid) == cache / "cell_metrics" / f"{eid}.csv"
    table = load_cell_metrics(cache, 101)
    # exactly the session's cells, in NWB order; cell 13 of the same container is not in session B
    assert table["cell_specimen_id"].tolist() == [12, 11, 999]
    assert table["nwb_index"].tolist() == [0, 1, 2]
    assert (table["ophys_experiment_id"] == 101).all()
    assert table["p_ns"].iloc[:2].tolist() == [0.2, 1e-5]
    assert table.loc[2, ["p_ns", "reliability_ns", "peak_dff_ns", "image_sel_ns"]].isna().all()
    for column in ("area", "imaging_depth", "pref_image_ns", "experiment_container_id"):
        assert column in table.columns
    assert load_cell_metrics(cache, 103)["cell_specimen_id"].tolist() == [21]
    assert load_cell_metrics(cache, 105) is None
    leftovers = [p.name for p in cache.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]
    assert leftovers == []


def test_existing_complete_nwb_is_not_fetched(cache, monkeypatch):
    api = FakeApi(monkeypatch)
    path = nwb_file(cache, 101)
    path.parent.mkdir(parents=True)
    path.write_bytes(_nwb_bytes(101))
    assert download_experiments(AllenConfig(), cache, progress=False) == [101]
    assert api.streams == [] and api.queries == []
    assert load_cell_metrics(cache, 101)["cell_specimen_id"].tolist() == [12, 11, 999]
    # a second run finds everything: still no network
    assert download_experiments(AllenConfig(), cache, progress=False) == [101]
    assert api.streams == [] and api.queries == []


def test_truncated_existing_nwb_is_fetched_again(cache, monkeypatch):
    api = FakeApi(monkeypatch)
    path = nwb_file(cache, 101)
    path.parent.mkdir(parents=True)
    whole = _nwb_bytes(101)
    path.write_bytes(whole[: len(whole) // 2])  # what a killed download leaves
    assert not is_readable_hdf5(path)
    download_experiments(AllenConfig(), cache, progress=True)  # also runs the byte-count bar
    assert len(api.streams) == 1
    assert path.read_bytes() == whole


def _half_then(error):
    def stream(eid, path):
        whole = _nwb_bytes(eid)
        path.write_bytes(whole[: len(whole) // 2])
        if error is not None:
            raise error
    return stream


@pytest.mark.parametrize("error", [requests.exceptions.ConnectionError("connection reset by peer"),
                                   requests.exceptions.ReadTimeout("read timed out"),
                                   None])  # None: the stream ends early without an error
def test_failed_download_leaves_no_partial_nwb(cache, monkeypatch, error):
    FakeApi(monkeypatch, stream=_half_then(error))
    with pytest.raises(DownloadError) as info:
        download_experiments(AllenConfig(), cache, progress=False)
    message = str(info.value)
    assert "\n" not in message
    assert "101" in message
    assert not nwb_file(cache, 101).exists()
    assert not cell_metrics_file(cache, 101).exists()


def test_interrupted_download_leaves_no_partial_nwb(cache, monkeypatch):
    # allensdk only cleans up after Exception; Ctrl-C must not leave half a file either
    FakeApi(monkeypatch, stream=_half_then(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        download_experiments(AllenConfig(), cache, progress=False)
    assert not nwb_file(cache, 101).exists()


def test_offline_listing_is_one_line_download_error(tmp_path):
    # nothing cached and nothing mocked: allensdk's real query hits the socket guard
    with pytest.raises(DownloadError) as info:
        download_experiments(AllenConfig(), tmp_path, progress=False)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("could not reach the Allen Brain Observatory API (api.brain-map.org) "
                              "to list experiments")
    assert "data.source: synthetic" in message and "meiscope synthesize" in message
    assert not (tmp_path / "ophys_experiments.json").exists()
    assert isinstance(info.value, MeiscopeError)


def test_offline_cell_table_is_download_error(cache):
    path = nwb_file(cache, 101)
    path.parent.mkdir(parents=True)
    path.write_bytes(_nwb_bytes(101))
    (cache / "cell_specimens.json").unlink()  # its query is not mocked: the socket guard refuses it
    with pytest.raises(DownloadError, match="to fetch the cell metrics table") as info:
        download_experiments(AllenConfig(), cache, progress=False)
    assert "\n" not in str(info.value)
    assert not (cache / "cell_specimens.json").exists()
    assert not cell_metrics_file(cache, 101).exists()
    assert is_readable_hdf5(path)  # the complete NWB is kept


def test_unreadable_cell_metrics_file(tmp_path):
    path = cell_metrics_file(tmp_path, 5)
    path.parent.mkdir(parents=True)
    path.write_text("")
    with pytest.raises(DownloadError, match="5.csv"):
        load_cell_metrics(tmp_path, 5)
    path.write_text(pd.DataFrame({"cell_specimen_id": [1, 2], "p_ns": [0.1, 0.2]}).to_csv(index=False))
    assert load_cell_metrics(tmp_path, 5)["p_ns"].tolist() == [0.1, 0.2]


def test_an_nwb_without_the_session_groups_is_fetched_again(cache, monkeypatch):
    api = FakeApi(monkeypatch)
    path = nwb_file(cache, 101)
    path.parent.mkdir(parents=True)
    with h5py.File(path, "w") as f:  # whole HDF5, but not a session: never taken as a match
        f["padding"] = np.zeros(16)
    download_experiments(AllenConfig(), cache, progress=False)
    assert len(api.streams) == 1
    assert path.read_bytes() == _nwb_bytes(101)


@pytest.mark.parametrize("text", ['{"foo": 1}', "not json"])
def test_a_foreign_manifest_is_one_line_and_kept(tmp_path, text):
    manifest = tmp_path / "manifest.json"
    manifest.write_text(text)
    with pytest.raises(DownloadError, match=re.escape(f"{manifest}: not an allensdk manifest")) as info:
        download_experiments(AllenConfig(), tmp_path, progress=False)
    assert "\n" not in str(info.value)
    assert manifest.read_text() == text
