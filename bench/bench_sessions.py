"""Benchmark: what sharing the core with other sessions buys one fixed session, and what it costs per epoch.

On the synthetic cortex of ``params.yaml`` (every setting as the default study, but ``n_sessions``
sessions: each a new set of cells shown the same scenes), every session is extracted and ranked on
its own (the pipeline's functions, into ``--root``). The studied session (the smallest id, as in
the default study) then gets its ensemble trained by ``fit_ensemble``, the train stage's own function,
with 1, 2, 4 ... sessions sharing each member's core, and is scored against the truth on the
``train.fresh_scenes`` fresh scenes (``gt_fresh_corr_mean``: the train stage's scoring, the
same function). Per member (one per ``train.seeds``) too, which gives the spread over seeds.

Architecture and optimiser: the default study's tuned ones (``results/tune/best_model.yaml``; else
``common.architectures()["tuned"]``). Time per epoch: wall time between consecutive epochs of a
member (Adam steps over every session's train images + every session's validation scores + the
checkpoint), median over all epochs but each member's first.

    .venv/bin/python bench/bench_sessions.py [--sessions 1 2 4] [--max-epochs N] [--root DIR]

Writes the JSON (``--out``, default ``bench/results/sessions_<device>.json``) and ``--figure``
(default ``docs/sessions.png``) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import add_machine_args, architectures, describe, machine, prepare  # noqa: E402

import numpy as np  # noqa: E402
import yaml  # noqa: E402

from meiscope import pipeline, truth  # noqa: E402
from meiscope.atomic import save_figure, write_json  # noqa: E402
from meiscope.config import Params, SessionsConfig, as_dict, load_params, parse_params  # noqa: E402
from meiscope.paths import Layout  # noqa: E402
from meiscope.study import load_study_dataset, shared_session_datasets, tuned_configs  # noqa: E402
from meiscope.ranking import load_selected  # noqa: E402
from meiscope.model.fitting import GroundTruth, TrainingData, TrainOutputs, fit_ensemble  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


class EpochClock:
    """Stands in for the MLflow module given to ``fit_ensemble``: stamps each member's epochs as they end."""

    def __init__(self) -> None:
        self.stamps: dict[str, list[float]] = {}

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        if step is None:  # the final summary, not an epoch
            return
        member = next(iter(metrics)).split("/")[0]  # "member_<seed>/train_loss" -> "member_<seed>"
        self.stamps.setdefault(member, []).append(time.perf_counter())

    def log_metric(self, key: str, value: float, step: int | None = None) -> None:
        pass

    def log_artifact(self, path: str) -> None:
        pass

    def epoch_seconds(self) -> list[float]:
        """Every epoch's duration except each member's first (it holds the set-up)."""
        return [float(d) for stamps in self.stamps.values() for d in np.diff(stamps)]


def bench_params(path: Path, n_sessions: int, root: Path) -> Params:
    """``path``'s params with ``n_sessions`` synthetic sessions, all but the first shared, tracking off."""
    raw = yaml.safe_load(path.read_text())
    first = raw.get("synthetic", {}).get("first_experiment_id", 900000001)
    raw.setdefault("synthetic", {})["n_sessions"] = n_sessions
    raw.setdefault("extract", {})["experiment_id"] = None  # the smallest id, as the default study
    raw["sessions"] = {"shared": [first + i for i in range(1, n_sessions)]}
    raw.setdefault("tracking", {})["enabled"] = False
    raw.setdefault("data", {})["source"] = "synthetic"
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return parse_params(raw)


def prepare_sessions(params: Params, root: Path) -> None:
    """Synthesize (unless the root holds them already), extract and rank every session, each on its own."""
    pipeline.stage("data").run(params, root)
    pipeline.stage("extract").run(params, root)
    pipeline.stage("rank").run(params, root)
    for experiment_id in params.sessions.shared:
        pipeline.stage("extract").run(params, root, session=experiment_id)
        pipeline.stage("rank").run(params, root, session=experiment_id)


def tuned_architecture(params: Params, root: Path) -> tuple[Any, Any, str]:
    """The default study's tuned model and train configs (applied by the train stage's own function)."""
    source = REPO / params.train.architecture_file
    if source.is_file():
        target = root / params.train.architecture_file
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, target)
        model_cfg, train_cfg, _ = tuned_configs(params, Layout.from_params(params, root))
        return model_cfg, train_cfg, str(source.relative_to(REPO))
    return architectures()["tuned"], params.train, "bench/common.py tuned"


def cached(fn: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    """``fn`` that computes the true rates of one image array once (the fresh scenes are scored every run)."""
    memory: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def call(images: np.ndarray) -> np.ndarray:
        hit = memory.get(id(images))
        if hit is None or hit[0] is not images:
            hit = memory[id(images)] = (images, fn(images))
        return hit[1]

    return call


def run_one(n_sessions: int, params: Params, root: Path, model_cfg: Any, train_cfg: Any, inputs: dict,
            device: Any) -> dict:
    """Train and score the studied session's ensemble with ``n_sessions`` sessions sharing the core."""
    layout = Layout.from_params(params, root)
    shared = params.sessions.shared[:n_sessions - 1]
    subset = dataclasses.replace(params, sessions=SessionsConfig(shared=list(shared)))
    others = shared_session_datasets(subset, layout, inputs["ds"].experiment_id)
    folder = root / "bench" / f"sessions_{n_sessions}"
    clock = EpochClock()
    start = time.perf_counter()
    truth = GroundTruth(inputs["truth"], fresh_images=inputs["fresh"], kinds=inputs["kinds"])
    metrics = fit_ensemble(TrainingData(inputs["ds"], other_sessions=others), model_cfg, train_cfg,
                           TrainOutputs(folder / "ensemble", folder / "train", folder / "train.json"),
                           truth=truth, device=device, progress=False, log=clock)
    wall = time.perf_counter() - start
    members = [m for m in metrics["member_gt_fresh_corr_mean"]]
    epochs = clock.epoch_seconds()
    return {"n_sessions": n_sessions, "sessions": [inputs["ds"].experiment_id, *shared],
            "n_neurons": [inputs["ds"].n_neurons, *(o.n_neurons for o in others)],
            "gt_fresh_corr_mean": metrics["gt_fresh_corr_mean"], "member_gt_fresh_corr_mean": members,
            "member_mean": float(np.mean(members)), "member_sd": float(np.std(members, ddof=1)),
            "ln_gt_fresh_corr_mean": metrics["ln_gt_fresh_corr_mean"],
            "test_corr_to_avg_mean": metrics["test_corr_to_avg_mean"],
            "member_epochs": metrics["member_epochs"], "member_best_epoch": metrics["member_best_epoch"],
            "s_per_epoch_median": statistics.median(epochs) if epochs else None, "wall_s": wall}


def markdown(rows: list[dict]) -> list[str]:
    """The README table: one row per number of sessions sharing the core."""
    lines = ["| sessions sharing the core | cells (studied + others) | `gt_fresh_corr_mean`, ensemble | "
             "per member (seed order) | members: mean ± s.d. | epochs (best) per member | s / epoch (median) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = " + ".join(str(n) for n in r["n_neurons"])
        per = " / ".join(f"{v:.2f}" for v in r["member_gt_fresh_corr_mean"])
        epochs = " / ".join(f"{e} ({b})" for e, b in zip(r["member_epochs"], r["member_best_epoch"]))
        lines.append(f"| {r['n_sessions']} | {cells} | {r['gt_fresh_corr_mean']:.3f} | {per} | "
                     f"{r['member_mean']:.3f} ± {r['member_sd']:.3f} | {epochs} | {r['s_per_epoch_median']:.2f} |")
    return lines


def figure(rows: list[dict]) -> Any:
    """Left: correlation with the truth on fresh scenes (dots: members, diamonds: ensemble); right: s / epoch."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 2.8))
    ax_corr, ax_time = fig.subplots(1, 2)
    n = [r["n_sessions"] for r in rows]
    for r in rows:
        ax_corr.scatter([r["n_sessions"]] * len(r["member_gt_fresh_corr_mean"]), r["member_gt_fresh_corr_mean"],
                        color="tab:blue", s=14, alpha=0.6)
    ax_corr.plot(n, [r["gt_fresh_corr_mean"] for r in rows], "D-", color="tab:red", label="ensemble")
    ax_corr.axhline(rows[0]["ln_gt_fresh_corr_mean"], color="gray", ls=":", lw=1, label="LN baseline")
    ax_corr.set(xlabel="sessions sharing the core", ylabel="corr. with true rates (fresh)", xticks=n,
                title="studied session (dots: members)")
    ax_corr.legend(frameon=False, fontsize=7)
    ax_time.plot(n, [r["s_per_epoch_median"] for r in rows], "o-")
    ax_time.set(xlabel="sessions sharing the core", ylabel="s / epoch (median)", xticks=n, ylim=(0, None),
                title="cost of an epoch")
    for ax in (ax_corr, ax_time):
        ax.title.set_fontsize(9)
    fig.tight_layout()
    return fig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 2, 4], help="sessions sharing the core")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml", help="the study's params")
    parser.add_argument("--max-epochs", type=int, default=None, help="default: train.max_epochs (tuned file aside)")
    parser.add_argument("--root", type=Path, default=None,
                        help="project root for the sessions (reused if it holds them); default: a temp folder")
    parser.add_argument("--figure", type=Path, default=REPO / "docs" / "sessions.png")
    add_machine_args(parser, "sessions")
    args = parser.parse_args()
    device, out = prepare(args, "sessions")
    counts = sorted(set(args.sessions))
    if counts[0] < 1:
        parser.error("--sessions: every count must be >= 1")
    root = args.root or Path(tempfile.mkdtemp(prefix="meiscope-sessions-"))
    root.mkdir(parents=True, exist_ok=True)
    load_params(args.params)  # a broken params file fails here, in one line
    params = bench_params(args.params, counts[-1], root)

    start = time.perf_counter()
    prepare_sessions(params, root)
    prepared_s = time.perf_counter() - start
    model_cfg, train_cfg, architecture = tuned_architecture(params, root)
    if args.max_epochs is not None:
        train_cfg = dataclasses.replace(train_cfg, max_epochs=args.max_epochs)
    layout = Layout.from_params(params, root)
    ds = load_study_dataset(layout).select_neurons(load_selected(layout.ranking))
    population = truth.load_population(layout.cache_dir, ds.experiment_id)
    inputs = {"ds": ds, "truth": cached(truth.rates_for_model_images(population, ds.to_pixels, ds.cell_ids)),
              "kinds": [population.kinds[c] for c in truth.cell_columns(population, ds.cell_ids)],
              "fresh": truth.fresh_model_images(layout.cache_dir, ds.experiment_id, train_cfg.fresh_scenes,
                                                train_cfg.fresh_seed, params.extract.crop, ds.images.shape[1:],
                                                ds.pixel_mean, ds.pixel_std)}
    rows = []
    for n in counts:
        rows.append(run_one(n, params, root, model_cfg, train_cfg, inputs, device))
        print(f"{n} session(s): gt_fresh_corr_mean {rows[-1]['gt_fresh_corr_mean']:.3f}, "
              f"{rows[-1]['s_per_epoch_median']:.2f} s / epoch, {rows[-1]['wall_s']:.0f} s", flush=True)

    info = machine(device)
    print(f"\n{describe(info)}; studied session {ds.experiment_id}; {architecture}, seeds {list(train_cfg.seeds)}, "
          f"max_epochs {train_cfg.max_epochs}, patience {train_cfg.patience}; {train_cfg.fresh_scenes} fresh scenes; "
          f"sessions prepared in {prepared_s:.0f} s\n")
    print("\n".join(markdown(rows)))
    write_json(out, {"machine": info, "studied_session": int(ds.experiment_id), "architecture": architecture,
                     "model": as_dict(model_cfg), "seeds": list(train_cfg.seeds), "lr": train_cfg.lr,
                     "max_epochs": train_cfg.max_epochs, "patience": train_cfg.patience,
                     "fresh_scenes": train_cfg.fresh_scenes, "prepare_s": prepared_s, "rows": rows})
    save_figure(figure(rows), args.figure)
    print(f"\nwrote {out} and {args.figure}")


if __name__ == "__main__":
    main()
