"""Benchmark: what each stimulus of the experiment container buys one model, and what it costs.

On an extracted and ranked container study (``--root``: a project whose ``params.yaml`` has
``data.recording: container``, after ``meiscope extract`` and ``meiscope rank``), one model per
seed is trained by ``train_one`` (the train stage's member training) on the selected cells with
each stimulus set of the ablation (natural scenes only; + static gratings; + natural movies;
+ sparse noise; all) and scored against the true rates on fresh scenes (the train stage's
``gt_fresh`` scoring). Architecture: the project's ``model`` section (untuned), so the arms differ
only in their data. Time per epoch: wall time of the whole training over its epochs.

This is a quick single-cortex screen; the study's figure is the replicate runner's
(``meiscope ablation``: ``meiscope replicate`` per ``container.stimuli`` arm).

    .venv/bin/python bench/bench_container.py --root DIR [--seeds 1 2] [--fresh 300]

Writes the JSON (``--out``, default ``bench/results/container_ablation.json``) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
ARMS = {
    "natural scenes only": ("natural_scenes",),
    "+ static gratings": ("natural_scenes", "static_gratings"),
    "+ natural movies": ("natural_scenes", "natural_movies"),
    "+ sparse noise": ("natural_scenes", "locally_sparse_noise"),
    "all": ("natural_scenes", "static_gratings", "natural_movies", "locally_sparse_noise"),
}


def _arm_stimuli(full, stimuli):
    """The container's stimuli restricted to one arm (None: natural scenes only)."""
    trials = [t for t in full.trials if ("locally_sparse_noise" if t.name.startswith("locally") else t.name) in stimuli]
    movies = full.movies if "natural_movies" in stimuli else []
    return dataclasses.replace(full, trials=trials, movies=movies) if trials or movies else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--fresh", type=int, default=300, help="fresh scenes for the truth score")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "container_ablation.json")
    args = parser.parse_args()

    from meiscope import truth
    from meiscope.atomic import write_json
    from meiscope.config import load_params
    from meiscope.recordings.container.responses import container_path
    from meiscope.recordings.training_stimuli import TrainingStimuli
    from meiscope.dataset import ResponseDataset
    from meiscope.model.evaluation import pearson_columns, predict
    from meiscope.model.training import train_one
    from meiscope.paths import Layout
    from meiscope.ranking import load_selected

    params = load_params(args.root / "params.yaml")
    if params.data.recording != "container":
        sys.exit(f"{args.root / 'params.yaml'}: data.recording must be container")
    layout = Layout.from_params(params, args.root)
    study_id = int(__import__("json").loads(layout.study_file.read_text())["experiment_id"])
    ds = ResponseDataset.load(layout.dataset(study_id)).select_neurons(load_selected(layout.ranking))
    full = TrainingStimuli.load(container_path(layout.dataset(study_id))).select_neurons(ds.cell_ids)
    population = truth.load_population(layout.cache_dir, study_id)
    true_rates = truth.rates_for_model_images(population, ds.to_pixels, ds.cell_ids)
    fresh = truth.fresh_model_images(layout.cache_dir, study_id, args.fresh, params.train.fresh_seed,
                                     params.extract.crop, ds.images.shape[1:], ds.pixel_mean, ds.pixel_std)
    target = true_rates(fresh)

    rows = []
    for arm, stimuli in ARMS.items():
        for seed in args.seeds:
            start = time.perf_counter()
            result = train_one(params.model, params.train, ds, seed=seed, progress=False,
                               extra=_arm_stimuli(full, stimuli))
            seconds = time.perf_counter() - start
            corr = float(np.nanmean(pearson_columns(predict([result.model], fresh, "cpu"), target)))
            rows.append({"arm": arm, "seed": seed, "gt_fresh_corr_mean": corr, "best_epoch": result.best_epoch,
                         "epochs": len(result.history), "seconds": seconds,
                         "seconds_per_epoch": seconds / max(len(result.history), 1)})
            print(f"{arm:22s} seed {seed}: gt_fresh_corr_mean {corr:.3f}  ({len(result.history)} epochs, "
                  f"{seconds:.0f} s)", flush=True)
    write_json(args.out, {"root": str(args.root), "n_neurons": ds.n_neurons, "fresh_scenes": args.fresh,
                          "batches_per_source": params.train.batches_per_source, "rows": rows})
    print("\n| stimuli | gt_fresh_corr_mean (one model) | s / epoch |\n|---|---|---|")
    for arm in ARMS:
        mine = [r for r in rows if r["arm"] == arm]
        print(f"| {arm} | {np.mean([r['gt_fresh_corr_mean'] for r in mine]):.3f} | "
              f"{np.mean([r['seconds_per_epoch'] for r in mine]):.2f} |")


if __name__ == "__main__":
    main()
