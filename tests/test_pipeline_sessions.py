"""Many sessions, one core through the pipeline: per-session extract and rank, train on all, DVC stages per session."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from meiscope import cli, pipeline
from meiscope.config import load_params
from meiscope.errors import MeiscopeError
from meiscope.model.ensemble import load_ensemble
from meiscope.ranking import load_selected
from meiscope.synthetic.cortex import cell_ids_for

REPO = Path(__file__).resolve().parents[1]
STUDY, SECOND, THIRD = 900000001, 900000002, 900000003
TINY = {
    "synthetic": {"n_sessions": 3, "n_cells": 30, "n_images": 24, "repeats": 8, "image_height": 92,
                  "image_width": 118, "spontaneous_s": 5.0, "peak_rate_hz": [6.0, 30.0],
                  "kinds": {"simple": 0.3, "complex": 0.3, "conjunction": 0.2, "unresponsive": 0.2}},
    "extract": {"image_height": 18, "image_width": 23, "split": {"val_fraction": 0.2, "test_fraction": 0.2}},
    "sessions": {"shared": [SECOND, THIRD]},
    "rank": {"max_p_anova": 0.01, "top_k": 8},
    "model": {"layers": 1, "channels": [4], "first_kernel": 5, "hidden_kernel": 3},
    "train": {"seeds": [1, 2], "max_epochs": 3, "patience": 3, "fresh_scenes": 32},
    "tracking": {"enabled": False},
}


def write_params(root: Path, raw: dict):
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    return load_params(root / "params.yaml")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Three tiny synthetic sessions: the first studied, the other two sharing its core."""
    root = tmp_path_factory.mktemp("sessions")
    params = write_params(root, TINY)
    pipeline.stage("data").run(params, root)
    pipeline.stage("extract").run(params, root)
    pipeline.stage("rank").run(params, root)
    index = pipeline.stage("sessions").run(params, root)
    for experiment_id in params.sessions.shared:
        pipeline.stage("extract").run(params, root, session=experiment_id)
        pipeline.stage("rank").run(params, root, session=experiment_id)
    metrics = pipeline.stage("train").run(params, root, device="cpu")
    return root, params, index, metrics


def test_each_shared_session_is_extracted_and_ranked_on_its_own(study):
    root, _, index, _ = study
    assert index == {"study": STUDY, "shared": [SECOND, THIRD], "in_cache": [STUDY, SECOND, THIRD]}
    assert json.loads((root / "results/sessions/index.json").read_text()) == {"study": STUDY, "shared": [SECOND, THIRD]}
    assert json.loads((root / "results/responses/study.json").read_text()) == {"experiment_id": STUDY}
    assert sorted(p.name for p in (root / "results/responses").iterdir()) == [f"{STUDY}.npz", "study.json"]
    for experiment_id in (SECOND, THIRD):
        folder = root / "results/sessions" / str(experiment_id)
        assert (folder / "responses" / f"{experiment_id}.npz").is_file()
        ranked = json.loads((folder / "ranking" / "metrics.json").read_text())
        assert ranked["n_selected"] == 8 and "gt_precision" in ranked  # its own cells against its own truth
        selected = load_selected(folder / "ranking")
        assert len(selected) == 8 and np.isin(selected, cell_ids_for(experiment_id, 30)).all()  # its own cells


def test_train_shares_the_core_and_writes_only_the_studied_sessions_ensemble(study):
    root, _, _, metrics = study
    assert metrics["shared_core_sessions"] == [STUDY, SECOND, THIRD]
    assert metrics["shared_core_n_neurons"] == [8, 8, 8] and metrics["n_neurons"] == 8
    assert -1 <= metrics["gt_fresh_corr_mean"] <= 1
    ensemble = load_ensemble(root / "models/ensemble")
    assert np.array_equal(ensemble.cell_ids, load_selected(root / "results/ranking"))
    history = json.loads((root / "results/train/history.json").read_text())["1"][0]
    assert {f"session_{SECOND}_val_corr_to_avg", f"session_{THIRD}_train_loss"} <= set(history)
    assert json.loads((root / "results/train/run.json").read_text())["shared_core_sessions"] == [STUDY, SECOND, THIRD]


def test_session_commands_refuse_what_sessions_shared_does_not_list(study, tmp_path):
    root, params, _, _ = study
    with pytest.raises(MeiscopeError, match=f"session {STUDY + 7} is not in sessions.shared"):
        pipeline.stage("extract").run(params, root, session=STUDY + 7)
    # the studied session (extract.experiment_id null = the smallest id) cannot be listed as shared
    (tmp_path / "data").symlink_to(root / "data")
    studied = write_params(tmp_path, {**TINY, "sessions": {"shared": [STUDY]}})
    with pytest.raises(MeiscopeError, match=f"sessions.shared lists {STUDY}, the studied session"):
        pipeline.stage("sessions").run(studied, tmp_path)
    missing = write_params(tmp_path, {**TINY, "sessions": {"shared": [SECOND, STUDY + 50]}})
    with pytest.raises(MeiscopeError, match=f"lists {STUDY + 50}, which has no NWB file"):
        pipeline.stage("sessions").run(missing, tmp_path)
    # train before the shared sessions were extracted and ranked says what to run
    shutil.copytree(root / "results" / "responses", tmp_path / "results" / "responses")
    shutil.copytree(root / "results" / "ranking", tmp_path / "results" / "ranking")
    fresh = write_params(tmp_path, TINY)
    with pytest.raises(MeiscopeError, match=f"run `meiscope extract --session {SECOND}`"):
        pipeline.stage("train").run(fresh, tmp_path, device="cpu")


def test_the_cli_runs_a_session_and_errors_in_one_line(study):
    root, _, _, _ = study
    runner = CliRunner()
    done = runner.invoke(cli.main, ["rank", "--session", str(THIRD), "--params", str(root / "params.yaml")])
    assert done.exit_code == 0, done.output
    assert "cells selected" in done.output
    done = runner.invoke(cli.main, ["extract", "--session", "12", "--params", str(root / "params.yaml")])
    assert done.exit_code == 1
    errors = [line for line in done.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "session 12 is not in sessions.shared" in errors[0]
    done = runner.invoke(cli.main, ["sessions", "--params", str(root / "params.yaml")])
    assert done.exit_code == 0 and f"sharing its core       {SECOND}, {THIRD}\n" in done.output


# ------------------------------------------------------------------------------ DVC
def dvc_stages(tmp_path: Path, shared: list[int]) -> tuple[list[str], list[str]]:
    """The stage names of the shipped dvc.yaml under params.yaml with ``sessions.shared``, and train's upstream."""
    from dvc.repo import Repo

    Repo.init(str(tmp_path), no_scm=True)
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["sessions"]["shared"] = shared
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    with Repo(str(tmp_path)) as repo:
        stages = {stage.name: stage for stage in repo.index.stages}
        upstream = sorted(s.name for s in repo.index.graph.successors(stages["train"]))
    return list(stages), upstream


@pytest.mark.parametrize("shared", [[], [SECOND], [SECOND, THIRD, 900000004]])
def test_the_dvc_stage_list_grows_with_the_sessions(tmp_path, shared):
    names, upstream = dvc_stages(tmp_path, shared)
    per_session = [f"{kind}-session@{e}" for kind in ("extract", "rank") for e in shared]
    assert [n for n in names if "-session@" in n] == per_session
    assert {"extract", "rank", "sessions", "tune", "train", "mei", "gabor", "validate", "report"} <= set(names)
    assert len(names) == 9 + 2 * len(shared)
    assert set(per_session) | {"sessions", "extract", "rank", "tune"} == set(upstream)  # train waits for them all
