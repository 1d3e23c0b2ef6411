"""CUDA check: every torch stage on ``--device cuda`` gives the CPU's results, and how long it takes.

Takes a project that already ran on the CPU (params.yaml, the synthetic cache's ground truth,
``results/``, ``models/`` and ``metrics/`` of ``make run``) and, in a copy of it:

1. **Same models**: runs ``mei``, ``gabor`` and ``validate`` on the CUDA device with the
   CPU-trained ensemble and compares the outputs with the CPU's (MEI and Gabor images per
   neuron, their activations). Differences here are float rounding only (cuDNN's algorithms,
   TF32 convolutions), amplified by 200 steps of gradient ascent.
2. **Whole chain**: runs ``tune``, ``train``, ``mei``, ``gabor``, ``validate`` and ``report``
   on the device (each through the CLI, ``--device``), times each stage, and puts the
   metrics next to the CPU's. Training on a GPU is not bit-reproducible (atomic adds in
   ``grid_sample``'s backward), so these agree as trained models do, not to rounding.

    python bench/cuda_check.py --reference . --device cuda [--out bench/results/cuda_check.json]

MLflow tracking is switched off in the copy (the check needs torch, optuna and the scientific
stack only). The NWB files are not needed: every stage after ``rank`` reads ``results/``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from meiscope.pipeline import STAGES

REPO = Path(__file__).resolve().parents[1]
# from the stage table: the in-silico stages (they reuse one trained ensemble) and every stage from tune on
_TABLE = [s.name for s in STAGES if s.in_dvc and not s.per_session]
STAGES_CHAIN = _TABLE[_TABLE.index("tune"):]
STAGES_SAME_MODELS = STAGES_CHAIN[STAGES_CHAIN.index("train") + 1:-1]
# metrics compared in the whole-chain table (stage, key)
KEY_METRICS = [("tune", "best_value"), ("train", "test_corr_to_avg_mean"), ("train", "gt_test_corr_mean"),
               ("mei", "mei_over_best_image_median"), ("mei", "seed_consistency_median"),
               ("gabor", "mei_over_gabor_median"), ("train", "gt_fresh_corr_mean"), ("validate", "gt_mei_corr_median"),
               ("validate", "gt_mei_over_gabor_rate_median"), ("validate", "n_true_optimum_beaten")]


def copy_project(reference: Path, target: Path) -> None:
    """Copy what the stages after ``rank`` read (no NWB files, no MLflow store), tracking off."""
    for name in ["params.yaml", "results", "models", "metrics"]:
        src = reference / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, target / name)
    params = yaml.safe_load((target / "params.yaml").read_text())
    folder = params["data"].get("synthetic_dir", "data/synthetic")
    shutil.copytree(reference / folder, target / folder, ignore=shutil.ignore_patterns("*.nwb"))
    params["tracking"]["enabled"] = False
    (target / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def run_stage(stage: str, project: Path, device: str) -> float:
    """Run one stage through the CLI; return its wall time (s). Fails loudly."""
    cmd = [sys.executable, "-m", "meiscope.cli", stage, "--params", str(project / "params.yaml")]
    if stage != "report":
        cmd += ["--device", device]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{stage} failed on {device}:\n{done.stderr[-4000:]}")
    return wall


def corr_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of matching rows of ``a, b (n, ...)``."""
    a = a.reshape(len(a), -1) - a.reshape(len(a), -1).mean(1, keepdims=True)
    b = b.reshape(len(b), -1) - b.reshape(len(b), -1).mean(1, keepdims=True)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def compare_images(reference: Path, project: Path) -> dict:
    """CPU vs device: MEIs, optimal Gabors and their activations, neuron by neuron."""
    import pandas as pd

    out = {}
    for stage, npz, key, act_col in [("mei", "meis.npz", "meis", "activation"),
                                     ("gabor", "gabors.npz", "optimal", "gabor_activation")]:
        with np.load(reference / "results" / stage / npz) as f_cpu, np.load(project / "results" / stage / npz) as f_dev:
            r = corr_rows(f_cpu[key], f_dev[key])
        act_cpu = pd.read_csv(reference / "results" / stage / "per_neuron.csv")[act_col].to_numpy()
        act_dev = pd.read_csv(project / "results" / stage / "per_neuron.csv")[act_col].to_numpy()
        rel = np.abs(act_dev - act_cpu) / np.maximum(np.abs(act_cpu), 1e-9)
        out[stage] = dict(n_neurons=len(r), image_corr_min=float(r.min()), image_corr_median=float(np.median(r)),
                          activation_rel_diff_max=float(rel.max()), activation_rel_diff_median=float(np.median(rel)))
    return out


def metrics_of(project: Path) -> dict:
    return {stage: json.loads((project / "metrics" / f"{stage}.json").read_text())
            for stage in {s for s, _ in KEY_METRICS} if (project / "metrics" / f"{stage}.json").is_file()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, default=REPO, help="project that ran on the CPU")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "cuda_check.json")
    parser.add_argument("--keep", action="store_true", help="keep the copied project and print its path")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    import torch

    from meiscope.atomic import write_json

    name = torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda") else args.device
    print(f"torch {torch.__version__}, device {args.device} ({name})", flush=True)
    project = Path(tempfile.mkdtemp(prefix="meiscope-cuda-")) / "project"
    project.mkdir(parents=True)
    copy_project(args.reference.resolve(), project)
    cpu_metrics = metrics_of(args.reference)

    same = {stage: run_stage(stage, project, args.device) for stage in STAGES_SAME_MODELS}
    images = compare_images(args.reference, project)
    print("\n1. same (CPU-trained) models, CPU vs device")
    print(f"{'stage':<8} {'image r min':>12} {'image r median':>15} {'activation rel diff max':>24}")
    for stage, c in images.items():
        print(f"{stage:<8} {c['image_corr_min']:>12.5f} {c['image_corr_median']:>15.5f} "
              f"{c['activation_rel_diff_max']:>24.2e}")

    times = {stage: run_stage(stage, project, args.device) for stage in STAGES_CHAIN}
    dev_metrics = metrics_of(project)
    print("\n2. whole chain on the device: wall time per stage (s), CLI start included")
    print("   " + ", ".join(f"{s} {t:.1f}" for s, t in times.items()) + f"; total {sum(times.values()):.1f}")
    print(f"{'metric':<40} {'CPU':>10} {'device':>10}")
    rows = []
    for stage, key in KEY_METRICS:
        cpu_v, dev_v = cpu_metrics.get(stage, {}).get(key), dev_metrics.get(stage, {}).get(key)
        rows.append(dict(stage=stage, metric=key, cpu=cpu_v, device=dev_v))
        fmt = lambda v: f"{v:>10.3f}" if isinstance(v, (int, float)) else f"{'-':>10}"  # noqa: E731
        print(f"{stage + '.' + key:<40} {fmt(cpu_v)} {fmt(dev_v)}")
    write_json(args.out, dict(device=args.device, device_name=name, torch=torch.__version__,
                              same_models_s=same, same_models=images, chain_s=times, metrics=rows))
    print(f"wrote {args.out}")
    if args.keep:
        print(f"kept {project}")
    else:
        shutil.rmtree(project.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
