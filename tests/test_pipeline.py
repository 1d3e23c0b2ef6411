"""End to end on a tiny synthetic session: every stage's glue, outputs, metrics and MLflow runs."""

import json

import numpy as np
import pytest
import yaml

from meiscope import insilico, pipeline
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
    pipeline.ensure_data(params, root)
    pipeline.extract(params, root)
    pipeline.rank(params, root)
    pipeline.tune(params, root, device="cpu")
    pipeline.train(params, root, device="cpu")
    insilico.mei(params, root, device="cpu")
    insilico.gabor(params, root, device="cpu")
    insilico.validate(params, root, device="cpu")
    insilico.report(params, root)
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
    model_cfg, _, tuned = pipeline.tuned_configs(params, pipeline.Layout.from_params(params, root))
    assert tuned and model_cfg.channels == best["model"]["channels"]
    assert _metrics(root, "train")["model"]["channels"] == best["model"]["channels"]


def test_meis_hold_the_budget_in_screen_pixels(study):
    root, _ = study
    with np.load(root / "results" / "mei" / "meis.npz") as f:
        meis, pixels, norm = f["meis"], f["meis_pixels"], float(f["norm"])
    np.testing.assert_allclose(np.linalg.norm(meis.reshape(len(meis), -1), axis=1), norm, rtol=1e-4)
    assert pixels.min() >= -1e-3 and pixels.max() <= 255 + 1e-3


def test_second_ensure_data_leaves_matching_synthetic_data_alone(study):
    root, params = study
    nwb = next((root / "data" / "allen" / "ophys_experiment_data").glob("*.nwb"))
    before = nwb.stat().st_mtime_ns
    pipeline.ensure_data(params, root)
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
    for stage in ("extract", "rank", "tune", "train", "mei", "gabor", "validate", "report"):
        assert stages.get(stage) == 1, stage
    tune_id = runs.loc[runs["tags.stage"] == "tune", "run_id"].iloc[0]
    assert (runs.loc[runs["tags.stage"] == "tune-trial", "tags.mlflow.parentRunId"] == tune_id).all()


def test_validate_is_skipped_with_a_note_for_real_sessions(study, tmp_path):
    root, params = study
    truth_file = next((root / "data" / "allen" / "ground_truth").glob("*.npz"))
    saved = tmp_path / truth_file.name
    truth_file.rename(saved)  # without ground truth the session reads as a real Allen one
    try:
        metrics = insilico.validate(params, root, device="cpu")
    finally:
        saved.rename(truth_file)
    assert metrics["skipped"] is True and "no ground truth" in metrics["note"]
    assert (root / "results" / "validate" / "NOTE.md").is_file()
