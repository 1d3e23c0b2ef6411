"""Benchmark: optimal-Gabor grid search, candidates evaluated per second for all neurons at once.

meiscope's ``optimal_gabors`` on an ensemble of ``--models`` models of the chosen architecture,
placed as the ``gabor`` stage places them (36x46 images). One forward pass of a candidate
scores it for every neuron, so the grid costs the same for 1 or 256 neurons;
``neuron_candidates_per_s`` counts (candidate, neuron) pairs. Refinement is timed separately
(per Adam step, all neurons jointly).

    .venv/bin/python bench/bench_gabor.py [--neurons 256] [--arch default] [--batch-size 128]
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


from meiscope.atomic import write_json  # noqa: E402
from meiscope.config import GaborConfig  # noqa: E402
from meiscope.insilico.gabor import gabor_grid, optimal_gabors  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--neurons", type=int, default=256)
    parser.add_argument("--arch", choices=sorted(architectures()), default="default")
    parser.add_argument("--positions", type=int, nargs=2, default=list(GaborConfig().n_positions))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[GaborConfig().batch_size],
                        help="candidates per forward pass; several give one row each")
    parser.add_argument("--refine-steps", type=int, default=20)
    parser.add_argument("--models", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    add_machine_args(parser, "gabor")
    args = parser.parse_args()
    device, out = prepare(args, "gabor")

    models = stand_in_ensemble(architectures()[args.arch], args.neurons, args.models, device)
    grid_cfg = dataclasses.replace(GaborConfig(), n_positions=args.positions, refine_steps=0)
    n_cand = len(gabor_grid(grid_cfg, (HEIGHT, WIDTH)))
    common = dict(neuron_indices=list(range(args.neurons)), image_shape=(HEIGHT, WIDTH), norm=10.0,
                  bounds=(-1.8, 2.2), device=device, progress=False)

    def run(cfg: GaborConfig) -> list[float]:
        return wall_times(lambda: optimal_gabors(models, cfg=cfg, **common), args.repeats, device)

    run(dataclasses.replace(grid_cfg, n_positions=[1, 1], orientations=2))  # warm-up
    rows = []
    for batch in args.batch_sizes:
        grid_s = median(run(dataclasses.replace(grid_cfg, batch_size=batch)))
        rows.append(dict(batch_size=batch, grid_s=grid_s, candidates_per_s=n_cand / grid_s,
                         neuron_candidates_per_s=n_cand * args.neurons / grid_s))
    small = dataclasses.replace(grid_cfg, n_positions=[1, 1], orientations=1, wavelengths=[8.0], sigmas=[4.0],
                                phases=1)
    base_s = median(run(small))
    refine_s = median(run(dataclasses.replace(small, refine_steps=args.refine_steps)))
    per_step = (refine_s - base_s) / max(args.refine_steps, 1)

    info = machine(device)
    print(f"{describe(info)}; architecture {args.arch}, {args.models} models, {args.neurons} neurons, "
          f"{n_cand} candidates, {HEIGHT}x{WIDTH}")
    print(f"{'batch':>6} {'grid s':>8} {'candidates/s':>13} {'neuron-candidates/s':>20}")
    for r in rows:
        print(f"{r['batch_size']:>6} {r['grid_s']:>8.2f} {r['candidates_per_s']:>13,.0f} "
              f"{r['neuron_candidates_per_s']:>20,.0f}")
    print(f"refine: {per_step * 1e3:.1f} ms per Adam step for all {args.neurons} neurons "
          f"(default {GaborConfig().refine_steps} steps = {per_step * GaborConfig().refine_steps:.1f} s)")
    write_json(out, dict(machine=info, architecture=args.arch, n_neurons=args.neurons, n_candidates=n_cand,
                         n_models=args.models, rows=rows, refine_s_per_step=per_step,
                         refine_steps_default=GaborConfig().refine_steps))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
