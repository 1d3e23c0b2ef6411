"""Replicates: per-seed projects, resumable runs, intervals and conclusions that must hold in every replicate."""

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy.stats import t

from meiscope import replicate as rep
from meiscope.config import as_dict, load_params, parse_params
from meiscope.errors import MeiscopeError

from test_pipeline import TINY


def fake_metrics(value: float, verdict: int) -> dict:
    return {
        "ranking": {"n_selected": 10, "gt_precision": value, "gt_recall": 1.0},
        "train": {"gt_fresh_corr_mean": value / 2},
        "mei": {}, "gabor": {}, "tune": {},
        "validate": {"gt_mei_rate_ratio_median_simple": value, "gt_verdict_mei_vs_gabor_simple": verdict,
                     "gt_verdict_mei_vs_gabor_complex": 1, "model_verdict_mei_vs_gabor_simple": 1},
    }


def test_intervals_are_t_intervals_of_the_replicate_means():
    summary = rep.summarise_replicates({1: fake_metrics(0.5, -1), 2: fake_metrics(0.7, -1), 3: fake_metrics(0.9, 0)},
                                       confidence=0.95)
    entry = summary["figures"]["ranking.gt_precision"]
    half = t.ppf(0.975, 2) * 0.2 / np.sqrt(3)  # sd of (0.5, 0.7, 0.9) is 0.2
    assert entry["mean"] == pytest.approx(0.7) and entry["sd"] == pytest.approx(0.2)
    assert (entry["ci_low"], entry["ci_high"]) == pytest.approx((0.7 - half, 0.7 + half))
    assert entry["values"] == [0.5, 0.7, 0.9]
    # ratios: geometric mean and an interval on the log scale (2 and 1/2 average to 1)
    ratio = rep.interval([2.0, 0.5, 1.0], 0.95, log_scale=True)
    assert ratio["mean"] == pytest.approx(1.0) and ratio["ci_low"] * ratio["ci_high"] == pytest.approx(1.0)
    assert rep.interval([2.0, 0.0, None], 0.95, log_scale=True)["n"] == 1  # a zero ratio has no log
    missing = summary["figures"]["validate.gt_mei_corr_median_simple"]
    assert missing["mean"] is None and missing["n"] == 0  # absent everywhere: no number invented
    assert "gabor.gabor_patch_frac_orientation_agrees" not in summary["figures"]  # Neuropixels only
    assert rep.format_interval(entry) == f"0.70 [{0.7 - half:.2f}, {0.7 + half:.2f}]"


def test_the_two_recordings_replicates_sit_side_by_side_in_their_own_files(tmp_path):
    from meiscope.report_sections import recordings_section

    seeds = {1: fake_metrics(0.5, -1), 2: fake_metrics(0.7, -1)}
    two_photon = rep.summarise_replicates(seeds, confidence=0.95)  # written before summaries named a recording
    patched = {s: {**m, "gabor": {"gabor_patch_frac_orientation_agrees": 0.5 + s / 10}} for s, m in seeds.items()}
    neuropixels = {**rep.summarise_replicates(patched, confidence=0.95), "recording": "neuropixels"}
    section = recordings_section(neuropixels, two_photon)
    assert section.title == "Two-photon dF/F vs Neuropixels spike counts: the same study, two recordings"
    assert "(metrics/replicates.json, metrics/replicates-neuropixels.json)" in section.intro
    assert section.metrics["ranking precision vs truth"] == ("two-photon dF/F: 0.60 [-0.67, 1.87] | "
                                                             "Neuropixels spike counts: 0.60 [-0.67, 1.87]")
    assert section.metrics["best patch orientation agrees with optimal Gabor"].startswith("two-photon dF/F: n/a | ")
    assert "the same synthetic cortices" in section.intro
    params = parse_params({"data": {"recording": "neuropixels"}})
    assert rep.summary_file(tmp_path, "neuropixels").name == "replicates-neuropixels.json"
    assert rep.summary_file(tmp_path, "two_photon").name == "replicates.json"
    assert rep.replicate_dir(params, tmp_path, 7) == tmp_path / "replicates" / "neuropixels" / "seed_7"
    # the container study never shares a folder or a summary with the two-photon one
    container = parse_params({"data": {"recording": "container"}})
    assert rep.replicate_dir(container, tmp_path, 7) == tmp_path / "replicates" / "container" / "seed_7"
    assert rep.summary_file(tmp_path, "container").name == "replicates-container.json"


def test_a_conclusion_counts_only_when_every_replicate_agrees():
    summary = rep.summarise_replicates({1: fake_metrics(0.5, -1), 2: fake_metrics(0.7, -1), 3: fake_metrics(0.9, 0)},
                                       confidence=0.95)
    simple = summary["conclusions"]["simple"]["MEI vs optimal Gabor, in truth"]
    assert simple["per_replicate"] == ["loses", "loses", "ties"]
    assert not simple["holds_in_every_replicate"] and simple["conclusion"] == "inconsistent"
    assert rep.format_conclusion(simple) == "no conclusion (loses, loses, ties)"
    complex_ = summary["conclusions"]["complex"]["MEI vs optimal Gabor, in truth"]
    assert complex_["holds_in_every_replicate"] and complex_["conclusion"] == "beats"
    assert rep.format_conclusion(complex_) == "MEI beats in every replicate"
    absent = summary["conclusions"]["conjunction"]["MEI vs optimal Gabor, in truth"]
    assert not absent["holds_in_every_replicate"]  # no verdict is no conclusion


def test_replicate_params_change_every_seed_and_nothing_else(tmp_path):
    params = parse_params({"tracking": {"uri": "sqlite:///mlflow.db"}})
    raw = rep.replicate_params(params, 102, tmp_path)
    assert raw["synthetic"]["seed"] == raw["synthetic_neuropixels"]["seed"] == raw["extract"]["split"]["seed"] == 102
    assert raw["rank"]["seed"] == raw["tune"]["seed"] == raw["mei"]["seed"] == raw["train"]["fresh_seed"] == 102
    assert raw["train"]["seeds"] == [102001, 102002, 102003]
    assert raw["tracking"]["uri"] == f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}"
    assert raw["tracking"]["experiment"] == "meiscope-replicate-102"
    assert raw["model"] == yaml.safe_load(yaml.safe_dump(raw))["model"]
    reparsed = parse_params(raw)  # a valid params file for the replicate's own project root
    assert reparsed.synthetic.n_cells == params.synthetic.n_cells and reparsed.gabor == params.gabor


def test_replicate_refuses_real_data_and_single_seeds(tmp_path):
    with pytest.raises(MeiscopeError, match="synthetic"):
        rep.replicate(parse_params({"data": {"source": "allen"}}), tmp_path, progress=False)
    with pytest.raises(MeiscopeError, match="at least 2 distinct seeds"):
        rep.replicate(parse_params({}), tmp_path, seeds=[5, 5], progress=False)


def test_an_interrupted_replicate_run_resumes_where_it_stopped(tmp_path, monkeypatch):
    """Stages that finished are not run again; a params change starts the replicate over."""
    ran, killed = [], []

    def fake_stage(folder, stage, device):
        ran.append((folder.name, stage))
        if stage == "gabor" and folder.name == "seed_2" and not killed:
            killed.append(stage)
            raise MeiscopeError("killed")
        if stage == "validate":
            for stem, metrics in fake_metrics(0.5 + int(folder.name[-1]) / 10, 1).items():
                (folder / "metrics").mkdir(exist_ok=True)
                (folder / "metrics" / f"{stem}.json").write_text(json.dumps(metrics))

    monkeypatch.setattr(rep, "run_stage", fake_stage)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"replicate": {"seeds": [1, 2]}}))
    params = load_params(tmp_path / "params.yaml")
    with pytest.raises(MeiscopeError, match="killed"):
        rep.replicate(params, tmp_path, progress=False)
    assert ran.count(("seed_1", "validate")) == 1 and ("seed_2", "validate") not in ran
    ran.clear()
    summary = rep.replicate(params, tmp_path, progress=False)
    assert ran == [("seed_2", "gabor"), ("seed_2", "validate")]  # seed 1 and seed 2's first stages are kept
    assert summary["k"] == 2 and summary["figures"]["ranking.gt_precision"]["values"] == [0.6, 0.7]
    written = json.loads((tmp_path / "metrics" / "replicates.json").read_text())
    assert written["seeds"] == [1, 2] and (tmp_path / "replicates" / "intervals.png").stat().st_size > 10_000
    assert written["params_key"] == rep.settings_key(params)  # the report tells a summary of other settings
    # another MEI setting: every replicate reruns from mei on; its data, models and ranking are kept
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"replicate": {"seeds": [1, 2]}, "mei": {"steps": 50}}))
    ran.clear()
    rep.replicate(load_params(tmp_path / "params.yaml"), tmp_path, progress=False)
    assert ran == [(f"seed_{s}", stage) for s in (1, 2) for stage in ("mei", "gabor", "validate")]
    assert yaml.safe_load((tmp_path / "replicates" / "seed_1" / "params.yaml").read_text())["mei"]["steps"] == 50
    # another training setting: tuning and training run again, on the same data
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"replicate": {"seeds": [1, 2]}, "mei": {"steps": 50},
                                                        "train": {"patience": 7}}))
    ran.clear()
    rep.replicate(load_params(tmp_path / "params.yaml"), tmp_path, progress=False)
    assert ran == [(f"seed_{s}", stage) for s in (1, 2) for stage in rep.STAGES[3:]]
    # another cortex: everything
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"replicate": {"seeds": [1, 2]}, "synthetic": {"n_cells": 50},
                                                        "mei": {"steps": 50}, "train": {"patience": 7}}))
    ran.clear()
    rep.replicate(load_params(tmp_path / "params.yaml"), tmp_path, progress=False)
    assert len(ran) == 2 * len(rep.STAGES)


def test_stage_keys_cover_every_params_section_and_what_dvc_stages_read():
    """Every params section changes some stage's key; each stage's key covers the sections dvc.yaml gives it."""
    raw = as_dict(parse_params({}))
    keys = rep.stage_keys(raw)
    assert list(keys) == list(rep.STAGES)
    for section in set(raw) - {"tracking"}:
        changed = copy.deepcopy(raw)
        changed[section] = {"changed": True}
        assert rep.stage_keys(changed) != keys, section
    stages = yaml.safe_load((Path(__file__).parents[1] / "dvc.yaml").read_text())["stages"]
    covered: set[str] = set()
    for stage in rep.STAGES:
        covered |= set(rep.STAGE_SECTIONS[stage])
        for entry in stages.get(stage, {}).get("params", []):
            assert entry.split(".")[0] in covered, (stage, entry)


@pytest.mark.slow
def test_two_tiny_replicates_end_to_end(tmp_path):
    """The real stages, each in its own process, on two tiny cortices; then the report shows the intervals."""
    from meiscope import insilico

    (tmp_path / "params.yaml").write_text(yaml.safe_dump({**TINY, "replicate": {"seeds": [11, 12]},
                                                       "tracking": {"enabled": False}}))  # MLflow: test_pipeline
    params = load_params(tmp_path / "params.yaml")
    summary = rep.replicate(params, tmp_path, device="cpu", progress=False)
    for seed in (11, 12):
        folder = tmp_path / "replicates" / f"seed_{seed}"
        validate = json.loads((folder / "metrics" / "validate.json").read_text())
        assert validate["n_true_optimum_beaten"] == 0
        assert (folder / "logs" / "train.log").is_file()
    entry = summary["figures"]["train.gt_fresh_corr_mean"]
    assert entry["n"] == 2 and entry["ci_low"] <= entry["mean"] <= entry["ci_high"]
    # the two cortices differ (new cells and scenes), so the figures do too
    assert entry["values"][0] != entry["values"][1]
    insilico.report(params, tmp_path)
    html = (tmp_path / "report" / "index.html").read_text()
    assert "Replicates (two-photon dF/F): what holds across new cortices" in html and "replicate intervals" in html
