"""Benchmark: optimal-Gabor grid search, candidates evaluated per second for all neurons at once.

Uses the stand-in model of ``bench_mei.py`` (default model shapes, 36x46 images). One forward
pass of a candidate scores it for every neuron, so the grid costs the same for 1 or 256 neurons;
``neuron_candidates_per_s`` counts (candidate, neuron) pairs. Refinement is timed separately
(per Adam step, all neurons jointly).

    .venv/bin/python bench/bench_gabor.py [--neurons 256] [--positions 7 9] [--refine-steps 20]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_mei import HEIGHT, WIDTH, StandInModel  # noqa: E402

from meiscope.atomic import write_json  # noqa: E402
from meiscope.config import GaborConfig  # noqa: E402
from meiscope.gabor import gabor_grid, optimal_gabors  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--neurons", type=int, default=256)
    parser.add_argument("--positions", type=int, nargs=2, default=list(GaborConfig().n_positions))
    parser.add_argument("--batch-size", type=int, default=GaborConfig().batch_size)
    parser.add_argument("--refine-steps", type=int, default=20)
    parser.add_argument("--models", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "gabor.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    models = [StandInModel(args.neurons, seed=s).to(args.device).eval() for s in range(args.models)]
    grid_cfg = dataclasses.replace(GaborConfig(), n_positions=args.positions, batch_size=args.batch_size,
                                   refine_steps=0)
    n_cand = len(gabor_grid(grid_cfg, (HEIGHT, WIDTH)))
    common = dict(neuron_indices=list(range(args.neurons)), image_shape=(HEIGHT, WIDTH), norm=30.0,
                  bounds=(-1.8, 2.2), device=args.device, progress=False)
    optimal_gabors(models, cfg=dataclasses.replace(grid_cfg, n_positions=[1, 1], orientations=2), **common)  # warm-up

    def run(cfg: GaborConfig) -> float:
        start = time.perf_counter()
        optimal_gabors(models, cfg=cfg, **common)
        return time.perf_counter() - start

    grid_s = statistics.median(run(grid_cfg) for _ in range(args.repeats))
    small = dataclasses.replace(grid_cfg, n_positions=[1, 1], orientations=1, wavelengths=[8.0], sigmas=[4.0],
                                phases=1)
    base_s = statistics.median(run(small) for _ in range(args.repeats))
    refine_s = statistics.median(run(dataclasses.replace(small, refine_steps=args.refine_steps))
                                 for _ in range(args.repeats))
    per_step = (refine_s - base_s) / max(args.refine_steps, 1)
    result = dict(n_neurons=args.neurons, n_candidates=n_cand, n_models=args.models, device=args.device,
                  threads=torch.get_num_threads(), batch_size=args.batch_size, grid_s=grid_s,
                  candidates_per_s=n_cand / grid_s, neuron_candidates_per_s=n_cand * args.neurons / grid_s,
                  refine_s_per_step=per_step, refine_steps_default=GaborConfig().refine_steps,
                  image_shape=[HEIGHT, WIDTH], torch=torch.__version__)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, {args.models} models, "
          f"{args.neurons} neurons, images {HEIGHT}x{WIDTH}")
    print(f"grid: {n_cand} candidates in {grid_s:.2f} s = {n_cand / grid_s:,.0f} candidates/s "
          f"({n_cand * args.neurons / grid_s:,.0f} neuron-candidates/s)")
    print(f"refine: {per_step * 1e3:.1f} ms per Adam step for all {args.neurons} neurons "
          f"(default {GaborConfig().refine_steps} steps = {per_step * GaborConfig().refine_steps:.1f} s)")
    write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
