"""The container ablation: one project per arm on its replicate's data, intervals per arm, table and figure."""

import json
from pathlib import Path

import pytest
import yaml

from meiscope.recordings.container import ablation as abl
from meiscope import replicate as rep
from meiscope.config import load_params, parse_params
from meiscope.errors import MeiscopeError
from meiscope.paths import Layout
from meiscope.replicate import settings_key


def _metrics(fresh: float, mei_corr: float) -> dict:
    return {"ranking": {}, "tune": {}, "mei": {}, "gabor": {},
            "train": {"gt_fresh_corr_mean": fresh},
            "validate": {"gt_mei_corr_median_simple": mei_corr, "gt_mei_rate_ratio_median_simple": 0.9}}


def _container_params(tmp_path: Path, **sections) -> "object":
    raw = {"data": {"recording": "container"}, "replicate": {"seeds": [1, 2]}, **sections}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    return load_params(tmp_path / "params.yaml")


def test_an_arm_reads_its_replicates_data_and_changes_only_the_stimuli(tmp_path):
    params = _container_params(tmp_path)
    scenes = abl.ARMS[0]
    raw = abl.arm_params(params, tmp_path, 7, scenes)
    replicate = rep.replicate_params(params, 7, tmp_path)
    folder = abl.arm_dir(params, tmp_path, 7, scenes)
    assert folder == tmp_path / "replicates" / "container" / "seed_7" / "ablation" / "scenes"
    arm_layout = Layout.from_params(parse_params(raw), folder)
    replicate_layout = Layout.from_params(parse_params(replicate), rep.replicate_dir(params, tmp_path, 7))
    assert arm_layout.cache_dir.resolve() == replicate_layout.cache_dir.resolve()  # the same NWB files
    assert raw["container"]["stimuli"] == ["natural_scenes"]
    changed = {k for k in raw if raw[k] != replicate[k]}
    assert changed == {"data", "container", "tracking"}  # same seeds, split, tuning, training, MEI starts
    # the arm training on the project's own stimuli is the replicate itself
    assert abl.arm_dir(params, tmp_path, 7, abl.ARMS[-1]) == rep.replicate_dir(params, tmp_path, 7)


@pytest.mark.slow
def test_arms_skip_the_data_stage_and_read_their_replicates_data(tmp_path, monkeypatch):
    """Each arm is a DVC project of its own whose extract reads its replicate's raw data."""
    from test_replicate import _fake_stage_commands

    (tmp_path / "fake").mkdir()
    stages_run = _fake_stage_commands(tmp_path / "fake", monkeypatch)
    project = tmp_path / "project"
    project.mkdir()
    params = _container_params(project)
    summary = abl.ablation(params, project, progress=False)
    ran = stages_run()
    assert ("seed_1", "data") in ran and ("movies", "extract") in ran
    assert not any(stage == "data" and not folder.startswith("seed_") for folder, stage in ran)
    per_project = [s for s in rep.replicate_stages() if not s.per_session]
    assert len(ran) == 2 * (len(per_project) + (len(abl.ARMS) - 1) * (len(per_project) - 1))
    arm_lock = yaml.safe_load((rep.replicate_dir(params, project, 1) / "ablation" / "movies" / "dvc.lock").read_text())
    assert {"path": "../../data"}.items() <= next(d for d in arm_lock["stages"]["extract"]["deps"]
                                                   if d["path"] == "../../data").items()
    assert json.loads(abl.summary_path(project).read_text())["seeds"] == [1, 2]
    assert len(summary["arms"]) == len(abl.ARMS)
    assert len(abl.ablation_table(summary).splitlines()) == 2 + len(abl.ARMS)


def test_the_ablation_needs_the_synthetic_container_and_two_seeds(tmp_path):
    with pytest.raises(MeiscopeError, match="data.recording: container"):
        abl.ablation(parse_params({}), tmp_path, progress=False)
    with pytest.raises(MeiscopeError, match="at least 2 distinct seeds"):
        abl.ablation(_container_params(tmp_path), tmp_path, seeds=[3], progress=False)


def test_the_report_shows_the_ablation_table():
    from meiscope.report import render_section
    from meiscope.report_sections import ablation_section

    metrics = {arm.slug: {1: _metrics(0.3, 0.5), 2: _metrics(0.5, 0.7)} for arm in abl.ARMS}
    params = parse_params({})
    summary = {**abl.summarise_ablation(metrics, 0.95), "seeds": [1, 2], "params_key": settings_key(params)}
    html = render_section(ablation_section(summary, params))
    assert html.count("<tr>") == 1 + len(abl.ARMS) and "+ natural movies" in html and "0.40 [" in html
    assert "other settings" not in html
    # measured before a training setting changed, or by a meiscope that did not record its settings
    changed = parse_params({"train": {"relocate_epochs": []}})
    for old_summary, now in ((summary, changed), ({k: v for k, v in summary.items() if k != "params_key"}, params)):
        assert "measured under other settings than params.yaml" in render_section(ablation_section(old_summary, now))
