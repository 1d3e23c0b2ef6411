"""Benchmark: batched MEI synthesis (all neurons in one run) vs one neuron at a time.

Stand-in model with the default model's shapes (the model package is not imported): core of 3
conv layers with 16 channels (kernels 9, 5, 5) + batch norm + ELU on 36x46 images, and a
Gaussian-readout-like head (each neuron samples the feature map at its own position with
``grid_sample``, then a linear feature weight, ELU + 1). The recipe is ``MeiConfig()``'s
except for the number of steps (default 50 here instead of 400; the cost per step is what is
compared). The looped time per neuron does not depend on N, so it is measured on a subset of
neurons and extrapolated to N where N is larger (the output says so).

    .venv/bin/python bench/bench_mei.py [--sizes 16 64 256] [--steps 50] [--repeats 3] [--threads N]

On shared CPUs run with ``OMP_WAIT_POLICY=PASSIVE`` (or ``--threads 1``): when another process
keeps the cores busy, OpenMP threads that spin at barriers make the small per-neuron steps of
the looped run up to ~15x slower, which inflates the batched speedup.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from meiscope.atomic import write_json  # noqa: E402
from meiscope.config import MeiConfig  # noqa: E402
from meiscope.mei import synthesize_meis, synthesize_meis_looped  # noqa: E402

HEIGHT, WIDTH = 36, 46


class StandInModel(nn.Module):
    """Conv core (16 ch, kernels 9/5/5, BN, ELU) + per-neuron point readout: ``(N,1,36,46) -> (N, n_neurons)``."""

    def __init__(self, n_neurons: int, seed: int, channels: int = 16):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        layers, c_in = [], 1
        for kernel in (9, 5, 5):
            layers += [nn.Conv2d(c_in, channels, kernel, padding=kernel // 2), nn.BatchNorm2d(channels), nn.ELU()]
            c_in = channels
        self.core = nn.Sequential(*layers)
        self.positions = nn.Parameter(torch.rand(n_neurons, 2, generator=gen) * 1.4 - 0.7)  # grid_sample coords
        self.features = nn.Parameter(torch.randn(n_neurons, channels, generator=gen) / channels ** 0.5)
        self.bias = nn.Parameter(torch.zeros(n_neurons))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        maps = self.core(images)  # (N, C, H, W)
        grid = self.positions[None, None].expand(images.shape[0], 1, -1, -1)  # (N, 1, n_neurons, 2)
        sampled = F.grid_sample(maps, grid, align_corners=False)[:, :, 0]  # (N, C, n_neurons)
        return F.elu((sampled * self.features.T[None]).sum(1) + self.bias) + 1


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--loop-subset", type=int, default=16, help="neurons timed in the looped run")
    parser.add_argument("--models", type=int, default=2, help="ensemble size (train.seeds minus mei.n_val_models)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--starts", type=int, default=MeiConfig().n_starts)
    parser.add_argument("--max-batch", type=int, default=None, help="images per pass in the batched run")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "mei.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    n_total = max(args.sizes)
    models = [StandInModel(n_total, seed=s).to(args.device).eval() for s in range(args.models)]
    cfg = dataclasses.replace(MeiConfig(), steps=args.steps, n_starts=args.starts)
    common = dict(image_shape=(HEIGHT, WIDTH), cfg=cfg, norm=30.0, bounds=(-1.8, 2.2), device=args.device,
                  seed=0, progress=False)
    synthesize_meis(models, [0, 1], **{**common, "cfg": dataclasses.replace(cfg, steps=2)})  # warm-up

    loop_n = min(args.loop_subset, n_total)
    # Interleave the looped and batched runs repeat by repeat, so a change in machine load
    # (shared CPUs) hits both alike; report medians.
    loop_times: list[float] = []
    batch_times: dict[int, list[float]] = {n: [] for n in args.sizes}
    for _ in range(args.repeats):
        loop_times.append(timed(lambda: synthesize_meis_looped(models, list(range(loop_n)), **common)))
        for n in args.sizes:
            batch_times[n].append(timed(lambda: synthesize_meis(models, list(range(n)), **common,
                                                                max_batch=args.max_batch)))
    loop_per_neuron = statistics.median(loop_times) / loop_n

    rows = []
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, "
          f"{args.models} models, {cfg.n_starts} starts, {args.steps} steps (recipe default {MeiConfig().steps}), "
          f"images {HEIGHT}x{WIDTH}, {args.repeats} repeats (median), max_batch {args.max_batch}")
    print(f"{'N':>5} {'batched s':>10} {'batched s/neuron':>17} {'looped s/neuron':>16} {'speedup':>8}  looped")
    for n in args.sizes:
        batched = statistics.median(batch_times[n])
        how = "measured" if n <= loop_n else f"extrapolated from {loop_n} neurons"
        row = dict(n_neurons=n, batched_s=batched, batched_s_per_neuron=batched / n,
                   looped_s_per_neuron=loop_per_neuron, looped_s_estimated=loop_per_neuron * n,
                   speedup=loop_per_neuron * n / batched, looped=how, batched_repeats_s=batch_times[n])
        rows.append(row)
        print(f"{n:>5} {batched:>10.2f} {batched / n:>17.4f} {loop_per_neuron:>16.4f} {row['speedup']:>7.1f}x  {how}")

    write_json(args.out, dict(
        steps=args.steps, recipe_steps=MeiConfig().steps, n_starts=cfg.n_starts, n_models=args.models,
        image_shape=[HEIGHT, WIDTH], device=args.device, torch=torch.__version__, threads=torch.get_num_threads(),
        machine=platform.processor() or platform.machine(), repeats=args.repeats, loop_subset=loop_n,
        looped_repeats_s=loop_times, rows=rows, load_average_after=os.getloadavg(),
        omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"), max_batch=args.max_batch,
        note="looped time per neuron is independent of N; measured on loop_subset neurons"))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
