"""What the report says: its sections follow the stage table, and a section shows only where its data exist."""

import json

import pytest

from meiscope import pipeline
from meiscope import replicate as rep
from meiscope.config import parse_params
from meiscope.paths import Layout
from meiscope.recordings import RECORDINGS
from meiscope.report_sections import STAGE_SECTIONS, study_sections
from meiscope.stages import report as report_stage

STEMS = tuple(stem for stage in pipeline.STAGES if stage.name != "report" for stem in stage.metric_names)


def _summary(recording: str, value: float = 0.6) -> dict:
    """A small replicate summary of ``recording`` (two seeds, a few figures)."""
    by_seed = {seed: {"ranking": {"gt_precision": value + seed / 10}, "train": {"gt_fresh_corr_mean": value / 2}}
               for seed in (1, 2)}
    return {**rep.summarise_replicates(by_seed, confidence=0.95), "recording": recording}


@pytest.fixture
def study(tmp_path):
    """Params of the default study, its layout, and empty metrics of every stage."""
    params = parse_params({})
    return params, Layout.from_params(params, tmp_path), {stem: {} for stem in STEMS}


def _stage_of(title: str) -> str:
    """``"Response model (train)"`` -> ``"train"``."""
    return title.rsplit("(", 1)[-1].rstrip(")")


def test_every_section_is_a_stage_of_the_table():
    assert set(STAGE_SECTIONS) <= {s.name for s in pipeline.STAGES}
    assert report_stage.stage_metric_stems() == STEMS  # the metrics files the report reads, from the table


def test_the_sections_come_in_the_order_of_the_stage_table(study, monkeypatch):
    params, layout, m = study
    titles = [s.title for s in study_sections(params, layout, m)]
    assert [_stage_of(t) for t in titles] == [s.name for s in pipeline.STAGES if s.name in STAGE_SECTIONS]
    monkeypatch.setattr(pipeline, "STAGES", tuple(reversed(pipeline.STAGES)))  # the table, not a list, decides
    assert [s.title for s in study_sections(params, layout, m)] == titles[::-1]


def test_the_presented_gabor_patches_show_only_when_the_gabor_stage_checked_them(study):
    params, layout, m = study
    gabor = next(s for s in study_sections(params, layout, m) if _stage_of(s.title) == "gabor")
    assert "presented Gabor patch" not in gabor.intro
    assert [p.name for p in gabor.figures] == ["gallery.png"]
    m["gabor"] = {"gabor_patch_n_units": 8}
    gabor = next(s for s in study_sections(params, layout, m) if _stage_of(s.title) == "gabor")
    assert "each unit's best presented Gabor patch" in gabor.intro
    assert [p.name for p in gabor.figures] == ["gallery.png", "receptive_fields.png"]


def test_a_recording_is_compared_only_where_its_replicates_exist(study):
    params, layout, m = study
    m["replicates"] = _summary("container")
    m["replicates_of"] = {"two_photon": _summary("two_photon"), "neuropixels": {}}
    titles = [s.title for s in study_sections(params, layout, m)][len(STAGE_SECTIONS):]
    assert titles == ["Replicates (two-photon dF/F, every stimulus of the experiment container): what holds "
                      "across new cortices",
                      "Two-photon dF/F vs two-photon dF/F, every stimulus of the experiment container: the same "
                      "study, two recordings"]
    m["replicates_of"]["neuropixels"] = _summary("neuropixels")
    compared = [s.title for s in study_sections(params, layout, m) if "two recordings" in s.title]
    assert [t.split(" vs ")[0] for t in compared] == ["Two-photon dF/F", "Neuropixels spike counts"]
    m["replicates"] = {}  # no replicates of this study: nothing to compare with
    assert len(study_sections(params, layout, m)) == len(STAGE_SECTIONS)


def test_the_report_stage_loads_every_other_recordings_replicates(tmp_path):
    (tmp_path / "metrics").mkdir()
    neuropixels = _summary("neuropixels")
    rep.summary_file(tmp_path, "neuropixels").write_text(json.dumps(neuropixels))
    for recording in RECORDINGS:
        params = parse_params({"data": {"recording": recording}})
        m = report_stage._load_all_metrics(params, Layout.from_params(params, tmp_path), tmp_path)
        assert list(m["replicates_of"]) == [name for name in RECORDINGS if name != recording]
        assert m["replicates"] == (neuropixels if recording == "neuropixels" else {})
    assert m["replicates_of"]["neuropixels"] == neuropixels
