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
                       "--positions", "1", "2")
    assert [r["variant"] for r in result["mei"]] == ["before", "+ folded BN", "+ windows", "+ converged stop"]
    assert all(r["gflop"] > 0 and r["seconds"] > 0 for r in result["mei"] + result["gabor_grid"] + result["gabor_refine"])
    assert result["mei"][2]["gflop"] < result["mei"][1]["gflop"] / 3  # windows do a fraction of the work
    assert result["mei_window_vs_full_corr_median"] > 0.999
    assert result["peak_gflop_per_s"] > 0
