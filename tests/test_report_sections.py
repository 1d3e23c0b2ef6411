"""What the report says: its sections follow the stage table, and a section shows only where its data exist."""

import json

import pytest

from meiscope import pipeline
from meiscope import replicate as rep
from meiscope.config import parse_params
from meiscope.paths import Layout
from meiscope.recordings import RECORDINGS, label_of
from meiscope.report_numbers import display_entry, format_entry
from meiscope.report_sections import STAGE_SECTIONS, study_sections
from meiscope.science.catalogue import by_name
from meiscope.science.catalogue import label_of as label_of_metric
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
                      "Two recordings of one study: two-photon dF/F against two-photon dF/F, every stimulus of the "
                      "experiment container"]
    m["replicates_of"]["neuropixels"] = _summary("neuropixels")
    compared = [s for s in study_sections(params, layout, m) if s.title.startswith("Two recordings")]
    assert [s.grid[0][1:] for s in compared] == [[label_of("two_photon"), label_of("container")],
                                                 [label_of("neuropixels"), label_of("container")]]
    m["replicates"] = {}  # no replicates of this study: nothing to compare with
    assert len(study_sections(params, layout, m)) == len(STAGE_SECTIONS)


def test_the_comparison_table_names_each_recording_once_in_its_header(study):
    params, layout, m = study
    m["replicates"], m["replicates_of"] = _summary("container", 0.5), {"two_photon": _summary("two_photon", 0.7)}
    table = next(s for s in study_sections(params, layout, m) if s.title.startswith("Two recordings")).grid
    header, rows = table[0], table[1:]
    assert header[1:] == [label_of("two_photon"), label_of("container")]
    assert [row[0] for row in rows] == [label_of_metric("ranking", "gt_precision"),
                                        label_of_metric("train", "gt_fresh_corr_mean")]
    for row in rows:  # a row's label once, then one interval per recording, no recording's name in a cell
        assert not any(name in cell for cell in row[1:] for name in header[1:])
    # the columns follow the header: two-photon's precision (0.7 + seed / 10) left of the container's (0.5 + ...)
    assert rows[0][1].startswith("0.85") and rows[0][2].startswith("0.65")


def test_the_same_seeds_on_another_cortex_sit_beside_the_study_with_their_verdicts(study, tmp_path):
    params, layout, m = study
    verdict = {"MEI vs optimal Gabor in truth, interval and tie band":
               {"per_replicate": ["ties", "ties"], "holds_in_every_replicate": True, "conclusion": "ties"}}
    m["replicates"] = {**_summary("container", 0.5), "profile": "out_of_family", "conclusions": {"simple": verdict}}
    m["replicates_on"] = {"gabor_family": {**_summary("container", 0.7), "profile": "gabor_family",
                                           "conclusions": {"simple": verdict}}}
    section = next(s for s in study_sections(params, layout, m) if s.title.startswith("Two cortices"))
    assert section.title == "Two cortices, one study: out_of_family against gabor_family"
    assert section.grid[0][1:] == ["out_of_family", "gabor_family"] and "the same seeds" in section.intro
    precision = next(row for row in section.grid if row[0] == label_of_metric("ranking", "gt_precision"))
    assert precision[1].startswith("0.65") and precision[2].startswith("0.85")  # columns follow the header
    assert [label for label, _ in section.key_rows] == [
        f"{name}, simple cells: MEI vs optimal Gabor in truth, interval and tie band"
        for name in ("out_of_family", "gabor_family")]
    m["replicates_on"] = {"gabor_family": {}}  # not run: no section
    assert not any(s.title.startswith("Two cortices") for s in study_sections(params, layout, m))
    # the report stage finds the summary `meiscope replicate --profile gabor_family` writes
    (tmp_path / "metrics").mkdir()
    oof = parse_params({"synthetic": {"profile": "out_of_family"}})
    rep.summary_file(tmp_path, oof.data.recording, "gabor_family").write_text(json.dumps({"k": 2}))
    loaded = report_stage._load_all_metrics(oof, Layout.from_params(oof, tmp_path), tmp_path)
    assert loaded["replicates_on"] == {"gabor_family": {"k": 2}}


def test_committed_sections_are_set_apart_from_this_run(study):
    params, layout, m = study
    m["replicates"] = _summary("two_photon")
    sections = study_sections(params, layout, m)
    assert [s.part for s in sections] == ["run"] * len(STAGE_SECTIONS) + ["committed"]
    assert "not rerun by `make run`" in sections[-1].source and not any(s.source for s in sections[:-1])


def test_intervals_are_shown_inside_their_range_and_ratios_on_the_log_scale():
    old = {"values": [0.0, 0.0, 1.0], "mean": 1 / 3, "ci_low": -1.10, "ci_high": 1.77, "scale": "linear"}
    shown = display_entry(by_name("validate.gt_n_zero_rate_mei_conjunction"), old, 0.95)  # cells: >= 0
    assert shown["ci_low"] == 0.0 and shown["ci_high"] == pytest.approx(1.77, abs=0.01)
    fraction = display_entry(by_name("validate.gt_mei_rate_ratio_median_simple"), {**old, "values": [0.0, 0.2, 0.43]},
                             0.95)
    assert 0.0 <= fraction["ci_low"] <= fraction["ci_high"] <= 1.0
    ratio = display_entry(by_name("validate.gt_mei_over_gabor_rate_median_simple"),
                          {**old, "values": [0.5, 2.0, 1.0]}, 0.95)
    assert ratio["mean"] == pytest.approx(1.0) and ratio["ci_low"] > 0  # the geometric mean of 1/2, 2 and 1
    drive = display_entry(by_name("validate.gt_mei_over_gabor_drive_median_simple"),  # a ratio off the ratio panel
                          {**old, "values": [0.5, 2.0, 1.0]}, 0.95)
    assert drive["mean"] == pytest.approx(1.0) and drive["scale"] == "log"
    no_values = display_entry(by_name("ranking.gt_recall"), {"mean": 0.9, "ci_low": 0.7, "ci_high": 1.2}, 0.95)
    assert no_values["ci_high"] == 1.0
    assert format_entry(by_name("validate.gt_frac_mei_beats_gabor_simple"), {"mean": 0.07, "ci_low": 0.01,
                                                                             "ci_high": 0.14}) == "7% [1%, 14%]"


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


def test_the_closed_loop_findings_say_which_cells_their_intervals_and_keep_the_correctness_check_apart():
    from meiscope.report_summary import correctness_checks, findings

    v = {"kinds": ["simple", "complex"], "n_responsive": 9, "n_simple": 5, "n_complex": 4, "n_truth_responsive": 20,
         "n_true_optimum_beaten": 0, "ci_confidence": 0.95, "tie_tolerance": 0.05, "gt_mei_corr_median": 0.9,
         "gt_mei_rate_ratio_median": 0.9, "gt_mei_rate_ratio_median_ci_low": 0.85,
         "gt_mei_rate_ratio_median_ci_high": 0.93, "gt_mei_drive_ratio_median": 0.75,
         "gt_all_best_scene_native_rate_ratio_median": 0.4, "gt_sel_best_scene_native_rate_ratio_median": 0.5,
         "gt_ci_verdict_mei_vs_gabor_simple": -1, "model_val_ci_verdict_mei_vs_gabor_simple": 0,
         "ci_verdicts_agree_mei_vs_gabor_simple": 0, "gt_ci_verdict_mei_vs_gabor_complex": 0,
         "model_val_ci_verdict_mei_vs_gabor_complex": 0, "ci_verdicts_agree_mei_vs_gabor_complex": 1}
    found, _ = findings({"validate": v}, {})
    truth = next(x for x in found if x.title == "Closed loop on the true neurons")
    # each figure with the cells it covers and its interval over them; the drive beside the compressed rate
    assert "9 selected cells; 95% interval over cells [0.85, 0.93]" in truth.numbers
    assert "20 all truly responsive cells" in truth.numbers and "75% of its drive" in truth.meaning
    verdicts = next(x for x in found if "held-out model" in x.title)
    assert "simple cells: MEI loses in truth, ties on the held-out model" in verdicts.numbers
    assert verdicts.meaning.startswith("The held-out model's verdict differs from the truth's for simple cells:")
    # the optimum check is a check of the instrument, not a finding
    label = label_of_metric("validate", "n_true_optimum_beaten")
    assert correctness_checks({"validate": v}) == [(label, "0: passed")]
    assert not any(label in x.numbers or label in x.meaning for x in found)
    assert correctness_checks({"validate": {**v, "n_true_optimum_beaten": 2}}) == [(label, "2: FAILED")]
