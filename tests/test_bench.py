"""The benchmark scripts still run (tiny sizes; no timing is asserted: timings belong in bench/)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def run_bench(script: str, out: Path, *args: str) -> dict:
    done = subprocess.run([sys.executable, str(BENCH / script), "--threads", "1", "--out", str(out), *args],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_mei_benchmark_compares_batched_with_looped_on_the_same_images(tmp_path):
    result = run_bench("bench_mei.py", tmp_path / "mei.json", "--sizes", "2", "4", "--steps", "3",
                       "--repeats", "1", "--loop-subset", "2")
    assert [row["n_neurons"] for row in result["rows"]] == [2, 4]
    assert result["max_abs_diff_batched_vs_looped"] <= 1e-5
    assert all(row["speedup"] > 0 and row["batched_s"] > 0 for row in result["rows"])
    assert result["machine"]["device"] == "cpu"


@pytest.mark.slow
def test_gabor_benchmark_counts_the_whole_grid(tmp_path):
    result = run_bench("bench_gabor.py", tmp_path / "gabor.json", "--positions", "1", "2", "--neurons", "3",
                       "--refine-steps", "2", "--batch-sizes", "16", "64")
    assert result["n_candidates"] == 1 * 2 * 8 * 5 * 4 * 4  # positions x orientations x wavelengths x sigmas x phases
    assert [row["batch_size"] for row in result["rows"]] == [16, 64]


@pytest.mark.slow
def test_insilico_benchmark_counts_flops_and_compares_windows(tmp_path):
    result = run_bench("bench_insilico.py", tmp_path / "insilico.json", "--stand-in", "3", "--steps", "10",
                       "--positions", "1", "2", "--refine-steps", "10")
    assert [r["variant"] for r in result["mei"]] == ["before", "+ folded BN", "+ windows", "+ converged stop"]
    assert all(r["gflop"] > 0 and r["seconds"] > 0 for r in result["mei"] + result["gabor_grid"] + result["gabor_refine"])
    assert result["mei"][2]["gflop"] < result["mei"][1]["gflop"] / 3  # windows do a fraction of the work
    assert result["mei_window_vs_full_corr_median"] > 0.999
    assert result["peak_gflop_per_s"] > 0


def test_compare_replicates_flags_a_changed_conclusion_and_disjoint_intervals(tmp_path):
    def replicates(verdicts, low, high):
        return {"git_commit": "abc", "conclusions": {"simple": {"MEI vs optimal Gabor, in truth": {
            "conclusion": verdicts[0] if len(set(verdicts)) == 1 else "inconsistent", "per_replicate": verdicts}}},
            "figures": {"train.gt_fresh_corr_mean": {"mean": (low + high) / 2, "ci_low": low, "ci_high": high}}}

    def run(old, new):
        (tmp_path / "old.json").write_text(json.dumps(old))
        (tmp_path / "new.json").write_text(json.dumps(new))
        return subprocess.run([sys.executable, str(BENCH / "compare_replicates.py"), str(tmp_path / "old.json"),
                               str(tmp_path / "new.json"), "--out", str(tmp_path / "cmp.json")],
                              capture_output=True, text=True, timeout=60)

    same = run(replicates(["ties"] * 3, 0.1, 0.5), replicates(["ties"] * 3, 0.4, 0.6))
    assert same.returncode == 0 and "overlap" in same.stdout
    assert json.loads((tmp_path / "cmp.json").read_text())["same"] is True
    changed = run(replicates(["ties"] * 3, 0.1, 0.5), replicates(["beats"] * 3, 0.1, 0.5))
    assert changed.returncode == 1 and "CHANGED" in changed.stdout
    apart = run(replicates(["ties"] * 3, 0.1, 0.3), replicates(["ties"] * 3, 0.4, 0.6))
    assert apart.returncode == 1 and "NO OVERLAP" in apart.stdout


@pytest.mark.slow
def test_sessions_benchmark_scores_the_studied_session_as_sessions_join_the_core(tmp_path):
    tiny = {"synthetic": {"n_cells": 30, "n_images": 24, "repeats": 8, "image_height": 92, "image_width": 118,
                          "spontaneous_s": 5.0, "peak_rate_hz": [6.0, 30.0],
                          "kinds": {"simple": 0.3, "complex": 0.3, "conjunction": 0.2, "unresponsive": 0.2}},
            "extract": {"image_height": 18, "image_width": 23, "split": {"val_fraction": 0.2, "test_fraction": 0.2}},
            "rank": {"max_p_anova": 0.01, "top_k": 8},
            "train": {"seeds": [1, 2], "fresh_scenes": 16, "architecture_file": "no/tuned.yaml"}}
    (tmp_path / "params.yaml").write_text(json.dumps(tiny))  # JSON is YAML
    result = run_bench("bench_sessions.py", tmp_path / "sessions.json", "--params", str(tmp_path / "params.yaml"),
                       "--sessions", "1", "2", "--max-epochs", "2", "--root", str(tmp_path / "root"),
                       "--figure", str(tmp_path / "sessions.png"))
    assert [r["n_sessions"] for r in result["rows"]] == [1, 2]
    assert result["rows"][1]["sessions"] == [900000001, 900000002] and len(result["rows"][1]["n_neurons"]) == 2
    assert all(-1 <= r["gt_fresh_corr_mean"] <= 1 and r["s_per_epoch_median"] > 0 for r in result["rows"])
    assert all(len(r["member_gt_fresh_corr_mean"]) == 2 for r in result["rows"])
    assert (tmp_path / "sessions.png").is_file()
