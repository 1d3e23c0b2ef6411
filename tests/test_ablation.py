"""The stimulus ablation of the container and of the Neuropixels session: one project per arm on its
replicate's data, only the recording's training-stimuli setting changed, intervals per arm, table and figure."""

import json
from pathlib import Path

import pytest
import yaml

from meiscope import ablation as abl
from meiscope import replicate as rep
from meiscope.config import load_params, parse_params
from meiscope.errors import MeiscopeError
from meiscope.paths import Layout
from meiscope.replicate import settings_key

CONTAINER, NEUROPIXELS = abl.plan_of("container"), abl.plan_of("neuropixels")


def _metrics(fresh: float, mei_corr: float) -> dict:
    return {"ranking": {}, "tune": {}, "mei": {}, "gabor": {},
            "train": {"gt_fresh_corr_mean": fresh},
            "validate": {"gt_mei_corr_median_simple": mei_corr, "gt_mei_rate_ratio_median_simple": 0.9}}


def _params(tmp_path: Path, recording: str = "container", **sections) -> "object":
    raw = {"data": {"recording": recording}, "replicate": {"seeds": [1, 2], "protocol": "development"}, **sections}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    return load_params(tmp_path / "params.yaml")


@pytest.mark.parametrize("plan, section, key, scenes_only", [
    (CONTAINER, "container", "stimuli", ["natural_scenes"]),
    (NEUROPIXELS, "neuropixels", "training_stimuli", []),  # the scenes train every Neuropixels arm
])
def test_an_arm_reads_its_replicates_data_and_changes_only_the_stimuli(tmp_path, plan, section, key, scenes_only):
    params = _params(tmp_path, plan.recording)
    scenes = plan.arm("scenes")
    raw = abl.arm_params(params, tmp_path, 7, plan, scenes)
    replicate = rep.replicate_params(params, 7, tmp_path)
    folder = abl.arm_dir(params, tmp_path, 7, plan, scenes)
    assert folder == tmp_path / "replicates" / plan.recording / "seed_7" / "ablation" / "scenes"
    arm_layout = Layout.from_params(parse_params(raw), folder)
    replicate_layout = Layout.from_params(parse_params(replicate), rep.replicate_dir(params, tmp_path, 7))
    assert arm_layout.cache_dir.resolve() == replicate_layout.cache_dir.resolve()  # the same raw files
    assert raw[section][key] == scenes_only
    changed = {k for k in raw if raw[k] != replicate[k]}
    assert changed == {"data", section, "tracking"}  # same seeds, split, tuning, training, MEI starts
    # the arm training on the project's own stimuli is the replicate itself, and only that one
    assert [a.slug for a in plan.arms if abl.is_replicate(params, plan, a)] == ["all"]
    assert abl.arm_dir(params, tmp_path, 7, plan, plan.arm("all")) == rep.replicate_dir(params, tmp_path, 7)


def test_every_neuropixels_arm_is_a_valid_setting_and_the_last_trains_on_every_stimulus():
    from meiscope.recordings import RECORDINGS

    for arm in NEUROPIXELS.arms:  # each arm's value passes the setting's own validation
        params = parse_params({"data": {"recording": "neuropixels"}, "neuropixels": {"training_stimuli": list(arm.stimuli)}})
        assert params.neuropixels.training_stimuli == list(arm.stimuli)
    everything = RECORDINGS["neuropixels"]().training_stimuli(parse_params({}))
    assert set(("natural_scenes", *NEUROPIXELS.arms[-1].stimuli)) == set(everything)
    assert abl.ablation_recordings() == ("neuropixels", "container")


@pytest.mark.slow
@pytest.mark.parametrize("recording, arms", [("neuropixels", None)])
def test_arms_skip_the_data_stage_and_read_their_replicates_data(tmp_path, monkeypatch, recording, arms):
    """Each arm is a DVC project of its own whose extract reads its replicate's raw data. One recording's plan
    suffices: the container's arms differ only in the setting they change, which the arm-params test checks."""
    from test_replicate import _fake_stage_commands

    (tmp_path / "fake").mkdir()
    stages_run = _fake_stage_commands(tmp_path / "fake", monkeypatch)
    project = tmp_path / "project"
    project.mkdir()
    params = _params(project, recording)
    plan = abl.plan_of(recording)
    summary = abl.ablation(params, project, progress=False, arms=arms)
    ran = stages_run()
    run_arms = plan.arms if arms is None else tuple(plan.arm(a) for a in arms)
    assert ("seed_1", "data") in ran and ("scenes", "extract") in ran
    assert not any(stage == "data" and not folder.startswith("seed_") for folder, stage in ran)
    per_project = [s for s in rep.replicate_stages() if not s.per_session]
    assert len(ran) == 2 * (len(per_project) + (len(run_arms) - 1) * (len(per_project) - 1))
    arm_lock = yaml.safe_load((rep.replicate_dir(params, project, 1) / "ablation" / "scenes" / "dvc.lock").read_text())
    assert {"path": "../../data"}.items() <= next(d for d in arm_lock["stages"]["extract"]["deps"]
                                                   if d["path"] == "../../data").items()
    written = json.loads(abl.summary_path(project, recording).read_text())
    assert written["seeds"] == [1, 2] and written["recording"] == recording and written["setting"] == plan.setting
    assert [a["slug"] for a in summary["arms"]] == [a.slug for a in run_arms]
    assert len(abl.ablation_table(summary).splitlines()) == 2 + len(run_arms)
    assert (rep.replicates_dir(params, project) / "ablation.png").exists()


def test_the_ablation_refuses_what_it_cannot_run_in_one_line(tmp_path):
    with pytest.raises(MeiscopeError, match="'two_photon' has no stimulus ablation .*neuropixels, container"):
        abl.ablation(parse_params({"data": {"recording": "two_photon"}}), tmp_path, progress=False)
    with pytest.raises(MeiscopeError, match="needs data.source: synthetic"):
        abl.ablation(parse_params({"data": {"source": "allen"}}), tmp_path, progress=False)
    with pytest.raises(MeiscopeError, match="at least 2 distinct seeds"):
        abl.ablation(_params(tmp_path), tmp_path, seeds=[3], progress=False)
    with pytest.raises(MeiscopeError, match="'sparse_noise' is not an arm of the neuropixels ablation "
                                            r"\(arms: scenes, gratings, movies, all\)"):
        abl.ablation(_params(tmp_path, "neuropixels"), tmp_path, progress=False, arms=["sparse_noise"])
    assert not (tmp_path / "replicates").exists()  # nothing started


@pytest.mark.parametrize("plan", [CONTAINER, NEUROPIXELS])
def test_the_report_shows_the_ablation_table(plan):
    from meiscope.report import render_section
    from meiscope.report_sections import ablation_section

    metrics = {arm.slug: {1: _metrics(0.3, 0.5), 2: _metrics(0.5, 0.7)} for arm in plan.arms}
    params = parse_params({"data": {"recording": plan.recording}})
    summary = {**abl.summarise_ablation(plan.arms, metrics, 0.95), "recording": plan.recording,
               "setting": plan.setting, "seeds": [1, 2], "params_key": settings_key(params)}
    html = render_section(ablation_section(summary, params))
    assert html.count("<tr>") == 1 + len(plan.arms) and plan.arms[2].label in html and "0.40 [" in html
    assert f"({plan.recording} ablation)" in html and f"only {plan.setting} changed" in html
    assert "other settings" not in html
    # measured before a training setting changed, or by a meiscope that did not record its settings
    changed = parse_params({"data": {"recording": plan.recording}, "train": {"relocate_epochs": []}})
    for old_summary, now in ((summary, changed), ({k: v for k, v in summary.items() if k != "params_key"}, params)):
        assert "measured under other settings than params.yaml" in render_section(ablation_section(old_summary, now))
