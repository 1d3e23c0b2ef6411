"""Benchmark: batched MEI synthesis (one optimisation for N neurons) vs one neuron at a time.

Both runs use meiscope's ``synthesize_meis`` with the same recipe (``MeiConfig()``, except the
number of steps: the cost per step is what is compared) on an ensemble of ``--models`` models
of the chosen architecture, placed as the ``mei`` stage places them. The looped run is
``synthesize_meis_looped`` (one ``synthesize_meis`` call per neuron, as per-neuron MEI libraries
work). Its time per neuron does not depend on N, so it is measured on ``--loop-subset`` neurons
and scaled to N where N is larger (the table says so). The looped and batched MEIs of those
neurons are compared: they are the same images up to float rounding.

    .venv/bin/python bench/bench_mei.py [--sizes 16 64 256] [--steps 20] [--repeats 3] [--arch default]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from statistics import median
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (HEIGHT, WIDTH, add_machine_args, architectures, describe, machine,  # noqa: E402
                    prepare, stand_in_ensemble, wall_times)

import numpy as np  # noqa: E402

from meiscope.atomic import write_json  # noqa: E402
from meiscope.config import MeiConfig  # noqa: E402
from meiscope.insilico.mei import synthesize_meis, synthesize_meis_looped  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--loop-subset", type=int, default=16, help="neurons timed in the looped run")
    parser.add_argument("--models", type=int, default=2, help="optimisation models (train.seeds - mei.n_val_models)")
    parser.add_argument("--arch", choices=sorted(architectures()), default="default")
    parser.add_argument("--max-batch", type=int, default=None,
                        help="images per pass in the batched run (default: 64 on CPU as the mei stage, all on CUDA)")
    add_machine_args(parser, "mei")
    args = parser.parse_args()
    device, out = prepare(args, "mei")
    max_batch = args.max_batch or (64 if device.type == "cpu" else None)

    n_total = max(args.sizes)
    models = stand_in_ensemble(architectures()[args.arch], n_total, args.models, device)
    cfg = dataclasses.replace(MeiConfig(), steps=args.steps)
    common = dict(image_shape=(HEIGHT, WIDTH), cfg=cfg, norm=10.0, bounds=(-1.8, 2.2), device=device, seed=0,
                  progress=False)
    synthesize_meis(models, [0, 1], **{**common, "cfg": dataclasses.replace(cfg, steps=2)})  # warm-up

    loop_n = min(args.loop_subset, n_total)
    looped = synthesize_meis_looped(models, list(range(loop_n)), **common)
    batched = synthesize_meis(models, list(range(loop_n)), **common, max_batch=max_batch)
    max_diff = float(np.abs(looped.all_starts - batched.all_starts).max())
    # Interleave looped and batched repeats so a change in machine load hits both alike.
    loop_times: list[float] = []
    batch_times: dict[int, list[float]] = {n: [] for n in args.sizes}
    for _ in range(args.repeats):
        loop_times += wall_times(lambda: synthesize_meis_looped(models, list(range(loop_n)), **common), 1, device)
        for n in args.sizes:
            batch_times[n] += wall_times(
                lambda: synthesize_meis(models, list(range(n)), **common, max_batch=max_batch), 1, device)
    loop_per_neuron = median(loop_times) / loop_n

    info = machine(device)
    print(f"{describe(info)}; architecture {args.arch}, {args.models} models, {cfg.n_starts} starts, "
          f"{args.steps} steps (recipe {MeiConfig().steps}), {HEIGHT}x{WIDTH}, max_batch {max_batch}, "
          f"median of {args.repeats}")
    print(f"{'N':>5} {'batched s':>10} {'batched s/neuron':>17} {'looped s/neuron':>16} {'speedup':>8}  looped")
    rows = []
    for n in args.sizes:
        b = median(batch_times[n])
        how = "measured" if n <= loop_n else f"scaled from {loop_n} neurons"
        rows.append(dict(n_neurons=n, batched_s=b, batched_s_per_neuron=b / n, looped_s_per_neuron=loop_per_neuron,
                         speedup=loop_per_neuron * n / b, looped=how, batched_repeats_s=batch_times[n]))
        print(f"{n:>5} {b:>10.2f} {b / n:>17.4f} {loop_per_neuron:>16.4f} {loop_per_neuron * n / b:>7.1f}x  {how}")
    print(f"batched vs looped MEIs of {loop_n} neurons: max |difference| {max_diff:.1e} (model-space pixels)")
    write_json(out, dict(machine=info, architecture=args.arch, steps=args.steps, recipe_steps=MeiConfig().steps,
                         n_starts=cfg.n_starts, n_models=args.models, max_batch=max_batch, repeats=args.repeats,
                         loop_subset=loop_n, looped_repeats_s=loop_times, max_abs_diff_batched_vs_looped=max_diff,
                         rows=rows))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
