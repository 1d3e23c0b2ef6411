"""End to end on a tiny synthetic session: every stage's glue, outputs, metrics and MLflow runs."""

import json

import numpy as np
import pytest
import yaml

from meiscope import pipeline
from meiscope.paths import Layout
from meiscope.stages import data as data_stage
from meiscope.study import tuned_configs
from meiscope.config import load_params

TINY = {
    "synthetic": {"n_cells": 30, "n_images": 24, "repeats": 8, "image_height": 92, "image_width": 118,
                  "spontaneous_s": 5.0, "peak_rate_hz": [6.0, 30.0],
                  "kinds": {"simple": 0.3, "complex": 0.3, "conjunction": 0.2, "unresponsive": 0.2}},
    "extract": {"image_height": 18, "image_width": 23, "split": {"val_fraction": 0.2, "test_fraction": 0.2}},
    "rank": {"max_p_anova": 0.01, "top_k": 8},
    "model": {"layers": 1, "channels": [4], "first_kernel": 5, "hidden_kernel": 3},
    "train": {"seeds": [1, 2], "max_epochs": 3, "patience": 3, "fresh_scenes": 64},
    "tune": {"n_trials": 2, "epochs": 2, "space": {"layers": [1, 1], "channels": [2, 4], "first_kernel": [3, 5],
                                                   "hidden_kernel": [3]}},
    "mei": {"n_starts": 2, "steps": 5, "n_show": 2},
    "gabor": {"n_positions": [2, 2], "orientations": 2, "wavelengths": [4.0, 8.0], "sigmas": [2.0], "phases": 2,
              "refine_steps": 2, "fit_steps": 2, "batch_size": 64},
}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    (root / "params.yaml").write_text(yaml.safe_dump(TINY))
    params = load_params(root / "params.yaml")
    pipeline.stage("data").run(params, root)
    pipeline.stage("extract").run(params, root)
    pipeline.stage("rank").run(params, root)
    pipeline.stage("tune").run(params, root, device="cpu")
    pipeline.stage("train").run(params, root, device="cpu")
    pipeline.stage("mei").run(params, root, device="cpu")
    pipeline.stage("gabor").run(params, root, device="cpu")
    pipeline.stage("validate").run(params, root, device="cpu")
    pipeline.stage("report").run(params, root)
    return root, params


def _metrics(root, stage):
    return json.loads((root / "metrics" / f"{stage}.json").read_text())


def test_every_stage_writes_its_metrics(study):
    root, _ = study
    assert _metrics(root, "ranking")["n_selected"] == 8
    assert _metrics(root, "tune")["n_trials"] == 2
    train = _metrics(root, "train")
    assert train["n_neurons"] == 8 and "gt_test_corr_mean" in train and "ln_test_corr_to_avg_mean" in train
    assert train["n_fresh_images"] == 64 and -1 <= train["gt_fresh_corr_mean"] <= 1
    mei = _metrics(root, "mei")
    assert mei["n_neurons"] == 8 and {"mei_over_best_image_median", "mei_val_over_best_image_median",
                                      "seed_consistency_median", "seed_consistency_phase_median",
                                      "frac_starts_disagree"} <= set(mei)
    gabor = _metrics(root, "gabor")
    assert {"mei_over_gabor_median", "mei_val_over_gabor_median", "mei_gabor_similarity_median",
            "frac_neurons_mei_beats_gabor"} <= set(gabor)
    validate = _metrics(root, "validate")
    assert validate["n_true_optimum_beaten"] == 0
    assert {"gt_mei_corr_median", "gt_mei_rate_ratio_median", "gt_frac_mei_beats_gabor",
            "gt_sign_p_mei_vs_gabor", "gt_n_zero_rate_gabor"} <= set(validate)
    for kind in ("simple", "complex", "conjunction"):
        if validate.get(f"n_{kind}"):
            assert {f"gt_mei_rate_ratio_median_{kind}", f"gt_frac_mei_beats_gabor_{kind}",
                    f"gt_sign_p_mei_vs_gabor_{kind}", f"gt_verdict_mei_vs_gabor_{kind}"} <= set(validate)


def test_tuned_architecture_feeds_train(study):
    root, params = study
    best = yaml.safe_load((root / "results" / "tune" / "best_model.yaml").read_text())
    model_cfg, _, tuned = tuned_configs(params, Layout.from_params(params, root))
    assert tuned and model_cfg.channels == best["model"]["channels"]
    run = json.loads((root / "results" / "train" / "run.json").read_text())
    assert run["model"]["channels"] == best["model"]["channels"] and run["device"] == "cpu"
    assert "model" not in _metrics(root, "train")  # configuration is not a metric


def test_meis_hold_the_budget_in_screen_pixels(study):
    root, _ = study
    with np.load(root / "results" / "mei" / "meis.npz") as f:
        meis, pixels, norm = f["meis"], f["meis_pixels"], float(f["norm"])
    np.testing.assert_allclose(np.linalg.norm(meis.reshape(len(meis), -1), axis=1), norm, rtol=1e-4)
    assert pixels.min() >= -1e-3 and pixels.max() <= 255 + 1e-3


def test_second_ensure_data_leaves_matching_synthetic_data_alone(study):
    root, params = study
    nwb = next((root / "data" / "synthetic" / "ophys_experiment_data").glob("*.nwb"))
    before = nwb.stat().st_mtime_ns
    pipeline.stage("data").run(params, root)
    assert nwb.stat().st_mtime_ns == before


def test_report_and_mlflow_runs(study):
    root, _ = study
    html = (root / "report" / "index.html").read_text()
    assert html.count("data:image/png;base64,") >= 8
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["meiscope"])
    stages = runs["tags.stage"].value_counts().to_dict()
    assert stages["tune-trial"] == 2
    for stage in pipeline.commands():  # every stage of the table the study ran logs one run
        if stage.in_dvc and stage.name != "sessions":
            assert stages.get(stage.name) == 1, stage.name
    tune_id = runs.loc[runs["tags.stage"] == "tune", "run_id"].iloc[0]
    assert (runs.loc[runs["tags.stage"] == "tune-trial", "tags.mlflow.parentRunId"] == tune_id).all()


def test_validate_is_skipped_with_a_note_for_real_sessions(study, tmp_path):
    root, params = study
    truth_file = next((root / "data" / "synthetic" / "ground_truth").glob("*.npz"))
    saved = tmp_path / truth_file.name
    truth_file.rename(saved)  # without ground truth the session reads as a real Allen one
    try:
        metrics = pipeline.stage("validate").run(params, root, device="cpu")
    finally:
        saved.rename(truth_file)
    assert metrics["skipped"] is True and "no ground truth" in metrics["note"]
    assert (root / "results" / "validate" / "NOTE.md").is_file()


# --------------------------------------------------------------------------------------
# data safety: never delete what meiscope did not write, never lose the last good extract
# --------------------------------------------------------------------------------------
SMALL = {"synthetic": {**TINY["synthetic"], "n_cells": 8, "n_images": 6, "repeats": 3},
         "extract": TINY["extract"], "tracking": {"enabled": False}}


def _project(root, raw=SMALL):
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    return load_params(root / "params.yaml")


def test_synthesize_never_touches_downloads_or_files_it_did_not_write(tmp_path):
    from meiscope.errors import MeiscopeError

    params = _project(tmp_path)
    download = tmp_path / "data" / "allen" / "ophys_experiment_data" / "501940850.nwb"
    download.parent.mkdir(parents=True)
    download.write_bytes(b"a real Allen session, 275 MB in real life")
    pipeline.stage("data").run(params, tmp_path)  # synthetic data go to data/synthetic
    assert download.read_bytes().startswith(b"a real Allen session")
    synthetic = tmp_path / "data" / "synthetic"
    assert sorted(p.name for p in (synthetic / "ophys_experiment_data").glob("*.nwb")) == ["900000001.nwb"]
    # a foreign session inside the synthetic folder is refused, named, and left alone
    foreign = synthetic / "ophys_experiment_data" / "123.nwb"
    foreign.write_bytes(b"someone else's file")
    with pytest.raises(MeiscopeError, match="123.nwb: not written by `meiscope synthesize`"):
        data_stage.synthesize(params, tmp_path)
    assert foreign.read_bytes() == b"someone else's file"
    # meiscope's own sessions of an earlier config are replaced (they have a ground truth)
    foreign.unlink()
    two = _project(tmp_path, {**SMALL, "synthetic": {**SMALL["synthetic"], "first_experiment_id": 900000005}})
    data_stage.synthesize(two, tmp_path)
    assert sorted(p.name for p in (synthetic / "ophys_experiment_data").glob("*.nwb")) == ["900000005.nwb"]
    assert download.is_file()


def test_a_failed_extract_keeps_the_last_good_outputs_and_reads_only_the_studied_session(tmp_path):
    from meiscope.errors import MeiscopeError

    params = _project(tmp_path, {**SMALL, "synthetic": {**SMALL["synthetic"], "n_sessions": 2}})
    pipeline.stage("data").run(params, tmp_path)
    nwbs = sorted((tmp_path / "data" / "synthetic" / "ophys_experiment_data").glob("*.nwb"))
    nwbs[1].write_bytes(b"not an NWB")  # a session the study does not use
    pipeline.stage("extract").run(params, tmp_path)  # reads only the studied (first) session
    out = tmp_path / "results" / "responses"
    assert sorted(p.name for p in out.iterdir()) == ["900000001.npz", "study.json"]
    good = {p.name: p.read_bytes() for p in out.iterdir()}
    nwbs[0].write_bytes(nwbs[0].read_bytes()[:4000])  # the studied session is damaged
    with pytest.raises(MeiscopeError, match="900000001.nwb"):
        pipeline.stage("extract").run(params, tmp_path)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == good  # the last good extract is intact
    assert [p.name for p in (tmp_path / "results").iterdir()] == ["responses"]  # no temporary folder left


def test_report_without_results_says_what_to_run(tmp_path):
    from meiscope.errors import MeiscopeError

    params = _project(tmp_path)
    with pytest.raises(MeiscopeError, match="no results .* yet: run the study first"):
        pipeline.stage("report").run(params, tmp_path)
    assert not (tmp_path / "report").exists()


def test_commands_end_with_a_readable_summary_and_no_library_noise(study):
    from click.testing import CliRunner

    from meiscope.cli import main

    root, _ = study
    result = CliRunner().invoke(main, ["rank", "--params", str(root / "params.yaml")])
    assert result.exit_code == 0, result.output
    assert "rank:" in result.stdout and "cells selected" in result.stdout and "8 of" in result.stdout
    assert "numexpr" not in result.stderr and "pkg_resources" not in result.stderr
    assert "{'" not in result.stdout + result.stderr  # no raw dicts


# --------------------------------------------------------------------------------------
# MLflow: each checkout its own store; `mlflow run` entry points work
# --------------------------------------------------------------------------------------
def _files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def _copy_project(root, target):
    import shutil

    shutil.copytree(root, target, ignore=shutil.ignore_patterns("*.nwb"))
    return target


def test_a_copied_project_writes_runs_into_its_own_store(study, tmp_path):
    import mlflow

    root, _ = study
    original = _files(root / "mlruns")
    copy = _copy_project(root, tmp_path / "copy")
    pipeline.stage("report").run(load_params(copy / "params.yaml"), copy)
    assert _files(root / "mlruns") == original  # nothing written into the original checkout
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{copy / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("meiscope").experiment_id],
                             "tags.stage = 'report'", order_by=["attributes.start_time DESC"])[0]
    assert run.info.artifact_uri.startswith((copy / "mlruns").as_uri())
    assert any(p.endswith("index.html") for p in _files(copy / "mlruns"))


def test_mlflow_run_entry_point_end_to_end(study, tmp_path):
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    import mlflow

    root, _ = study
    repo = Path(__file__).resolve().parents[1]
    project = _copy_project(root, tmp_path / "project")
    for name in ("MLproject", "python_env.yaml"):
        shutil.copy(repo / name, project / name)
    uri = f"sqlite:///{project / 'mlflow.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(MLFLOW_TRACKING_URI=uri, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    done = subprocess.run([sys.executable, "-m", "mlflow", "run", str(project), "--env-manager", "local",
                           "--experiment-name", "meiscope", "-e", "report"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    client = mlflow.MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("meiscope").experiment_id],
                              "tags.`mlflow.project.entryPoint` = 'report'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED" and runs[0].data.tags["stage"] == "report"
    default = client.get_experiment_by_name("Default")
    assert default is None or not client.search_runs([default.experiment_id])  # nothing left in Default


def test_mlflow_runs_carry_model_dataset_provenance_and_real_trial_times(study):
    import mlflow

    from meiscope.tuning import RUN_STATUS

    root, params = study
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("meiscope")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI's training view
    runs = client.search_runs([experiment.experiment_id])
    train = [r for r in runs if r.data.tags.get("stage") == "train"][0]
    assert train.data.tags["mlflow.source.git.commit"] and train.data.tags["git_dirty"] in ("true", "false", "unknown")
    assert train.info.run_name.startswith("train 20")  # stage, date and commit: two runs can be told apart
    assert [d.dataset.name for d in train.inputs.dataset_inputs] == ["experiment-900000001-train"]
    versions = client.search_model_versions("name = 'meiscope-ensemble'")
    assert versions and versions[0].run_id == train.info.run_id
    logged = mlflow.pytorch.load_model(f"models:/meiscope-ensemble/{versions[0].version}")
    assert logged(torch_zeros((2, 1, 18, 23))).shape == (2, 8)
    trials = [r for r in runs if r.data.tags.get("stage") == "tune-trial"]
    for run in trials:
        assert run.info.status == RUN_STATUS[run.data.tags["state"]]  # a pruned trial is not "Finished"
        assert run.info.end_time >= run.info.start_time


def torch_zeros(shape):
    import torch

    return torch.zeros(shape)


def test_ctrl_c_during_train_says_how_to_continue(study, monkeypatch):
    from click.testing import CliRunner

    from meiscope.cli import main

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    import meiscope.stages.train

    monkeypatch.setattr(meiscope.stages.train, "run", interrupted)
    root, _ = study
    result = CliRunner().invoke(main, ["train", "--params", str(root / "params.yaml")])
    assert result.exit_code == 130
    assert "`meiscope train --resume` continues" in result.stderr
