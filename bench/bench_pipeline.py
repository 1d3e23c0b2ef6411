"""Benchmark: the whole default pipeline, wall time and peak memory (RSS) per stage.

Clones the repository's committed HEAD into a temporary folder (your results, models and
mlflow.db are not touched), synthesizes the default data there (`meiscope data`) and then
forces every DVC stage in order (`dvc repro -f -s <stage>`, which together are `dvc repro -f`).
The clone's own ``src/`` is imported, so the figures belong to that commit. Peak RSS is the
largest resident set of any process of the stage (``os.wait4``'s ``ru_maxrss``).

    .venv/bin/python bench/bench_pipeline.py [--device cpu] [--keep] [--set data.recording=two_photon]

``--set SECTION.KEY=VALUE`` (repeatable) edits the clone's params.yaml first: the default times the
whole-container study at full size, ``data.recording=two_photon`` the scenes-only one.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from meiscope.atomic import write_json  # noqa: E402


def run_measured(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """Run ``cmd``; return (wall seconds, peak RSS in MB of its largest process)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # wait4 reports the child's rusage including its reaped descendants (meiscope under dvc).
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{stderr[-3000:]}")
    return wall, usage.ru_maxrss / 1024  # Linux reports kB


def stage_names(repo: Path) -> list[str]:
    """The stages of ``dvc.yaml`` in file order (which is also their dependency order)."""
    return list(yaml.safe_load((repo / "dvc.yaml").read_text())["stages"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="sets train.device and mei.device in the clone's params")
    parser.add_argument("--keep", action="store_true", help="keep the temporary clone and print its path")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="a params.yaml setting of the clone (YAML value), e.g. data.recording=two_photon")
    parser.add_argument("--out", default=None, help="default: bench/results/pipeline[-<recording>].json")
    args = parser.parse_args()

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True, check=True).stdout.strip()
    workdir = Path(tempfile.mkdtemp(prefix="meiscope-bench-"))
    clone = workdir / "repo"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
    params = yaml.safe_load((clone / "params.yaml").read_text())
    if args.device:
        params["train"]["device"] = params["mei"]["device"] = args.device
    for override in args.overrides:
        key, _, value = override.partition("=")
        section, _, name = key.partition(".")
        if not name or section not in params:
            raise SystemExit(f"--set {override}: expected SECTION.KEY=VALUE with a section of params.yaml")
        params[section][name] = yaml.safe_load(value)
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    recording = params["data"]["recording"]
    out = args.out or str(Path(__file__).parent / "results" /
                          ("pipeline.json" if recording == "two_photon" else f"pipeline-{recording}.json"))

    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(clone / "src"), "MLFLOW_DISABLE_TELEMETRY": "true", "GIT_PYTHON_REFRESH": "quiet"}
    subprocess.run(["dvc", "config", "--local", "core.analytics", "false"], cwd=clone, env=env, check=True)

    print(f"commit {commit}, {os.cpu_count()} CPUs, {platform.machine()}, clone in {clone}", flush=True)
    print(f"{'stage':<12} {'wall s':>8} {'peak RSS MB':>12}", flush=True)
    rows = []
    steps = [("data", ["meiscope", "data"])] + [(s, ["dvc", "repro", "-f", "-s", s]) for s in stage_names(clone)]
    for name, cmd in steps:
        wall, rss = run_measured(cmd, clone, env)
        rows.append(dict(stage=name, wall_s=wall, peak_rss_mb=rss, command=" ".join(cmd)))
        print(f"{name:<12} {wall:>8.1f} {rss:>12.0f}", flush=True)
    total = sum(r["wall_s"] for r in rows)
    repro = sum(r["wall_s"] for r in rows if r["stage"] != "data")
    peak = max(r["peak_rss_mb"] for r in rows)
    print(f"{'total':<12} {total:>8.1f} {peak:>12.0f}   (dvc repro -f alone: {repro:.1f} s = {repro / 60:.1f} min)")

    write_json(out, dict(commit=commit, cpus=os.cpu_count(), machine=platform.machine(), device=args.device,
                         overrides=args.overrides, rows=rows, total_s=total, dvc_repro_s=repro, peak_rss_mb=peak,
                         load_average_after=os.getloadavg()))
    print(f"wrote {out}")
    if args.keep:
        print(f"kept {clone}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
