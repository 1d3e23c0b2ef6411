"""Benchmark: the MEI and optimal-Gabor work before and after the speed-ups, in seconds and FLOP/s.

Runs meiscope's ``synthesize_meis`` and ``optimal_gabors`` on the study's trained ensemble
(``models/ensemble`` under ``--root``, with the norm budget and neurons the stages use; run
``make run`` first) or, with ``--stand-in N``, on random models of the tuned architecture
for N neurons. Each step of the speed-up is one row, cumulative:

* ``before``: whole images, the ensemble's own members (batch norm as a separate layer),
  every ascent to its last step, every Gabor grid candidate scored exactly;
* ``+ folded BN``: the members as the stages now run them (``inference_copy``);
* ``+ windows``: each model only on its neuron's receptive-field window;
* ``+ converged stop`` (MEI) / ``+ grid shortcut`` (Gabor grid): the default recipe.

The Gabor grid and the refinement (from the grid's winners) are timed apart.

FLOPs are counted by ``torch.utils.flop_counter`` (convolutions and matrix products, forward
and backward) on a short run of each variant and scaled to the steps actually taken. The
peak is the FLOP/s of a large float32 matrix product (``torch.mm`` 2048 x 2048) with the same
threads: the most this CPU and library reach, not the datasheet's number (no clock is
readable here). MEIs of the full and windowed runs are compared (median correlation).

    .venv/bin/python bench/bench_insilico.py [--root .] [--stand-in 64] [--steps 200] [--positions 7 9]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (HEIGHT, WIDTH, add_machine_args, architectures, describe, machine,  # noqa: E402
                    prepare, stand_in_ensemble)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from meiscope.atomic import write_json  # noqa: E402
from meiscope.config import GaborConfig, MeiConfig, load_params  # noqa: E402
from meiscope.insilico.gabor import exhaustive_grid, gabor_grid, refine_gabors, shortcut_grid  # noqa: E402
from meiscope.insilico.mei import synthesize_meis  # noqa: E402
from meiscope.model.network import inference_copy  # noqa: E402


def matmul_peak(size: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of ``torch.mm`` on two ``size x size`` float32 matrices (the practical peak)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size ** 3 * repeats / (time.perf_counter() - start)


def counted_flops(fn) -> int:
    """FLOPs of the convolutions and matrix products that ``fn()`` runs."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def setup(args: argparse.Namespace, device: torch.device) -> tuple[list, list, float, tuple, MeiConfig, GaborConfig]:
    """(raw members, neurons, norm, bounds, mei recipe, gabor config) of the study or of a stand-in ensemble."""
    if args.stand_in:
        members = stand_in_ensemble(architectures()["tuned"], args.stand_in, 2, device)
        return members, list(range(args.stand_in)), 10.0, (-1.8, 2.2), MeiConfig(), GaborConfig()
    from meiscope.stages._insilico import load_setup

    root = Path(args.root)
    params = load_params(root / "params.yaml")
    s = load_setup(params, root, str(device))
    from meiscope.model.ensemble import load_ensemble
    from meiscope.paths import Layout

    raw = load_ensemble(Layout.from_params(params, root).ensemble, device=device).members[:len(s.opt_models)]
    return raw, list(s.neurons), s.norm, s.bounds, params.mei, params.gabor


def mei_rows(raw: list, neurons: list, norm: float, bounds: tuple, recipe: MeiConfig, device: torch.device,
             steps: int) -> tuple[list[dict], float]:
    folded = [inference_copy(m) for m in raw]
    recipe = dataclasses.replace(recipe, steps=steps)
    variants = [("before", raw, dict(window=False, converge_tol=0.0)),
                ("+ folded BN", folded, dict(window=False, converge_tol=0.0)),
                ("+ windows", folded, dict(window=True, converge_tol=0.0)),
                ("+ converged stop", folded, dict(window=True))]
    rows, results = [], {}
    for name, models, change in variants:
        cfg = dataclasses.replace(recipe, **change)

        def run(c=cfg, m=models):
            return synthesize_meis(m, neurons, (HEIGHT, WIDTH), c, norm, bounds, device, seed=0, progress=False,
                                   max_batch=64 if device.type == "cpu" else None)

        seconds, result = timed(run)
        short = dataclasses.replace(cfg, steps=10, converge_tol=0.0)
        per_image_step = counted_flops(lambda: run(short)) / (10 * result.steps_run.size)
        flops = per_image_step * result.steps_run.sum()
        results[name] = result
        rows.append(dict(variant=name, seconds=seconds, s_per_neuron=seconds / len(neurons), gflop=flops / 1e9,
                         gflop_per_s=flops / seconds / 1e9, steps_mean=float(result.steps_run.mean())))
    full, window = results["+ folded BN"].all_starts, results["+ windows"].all_starts
    corr = [np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in
            zip(full.reshape(-1, HEIGHT * WIDTH), window.reshape(-1, HEIGHT * WIDTH))]
    return rows, float(np.median(corr))


def gabor_rows(raw: list, neurons: list, norm: float, bounds: tuple, config: GaborConfig,
               device: torch.device) -> tuple[list[dict], list[dict]]:
    """Grid and refinement rows, timed apart (``optimal_gabors`` runs one, then the other)."""
    folded = [inference_copy(m) for m in raw]
    cols = torch.as_tensor(neurons, device=device)
    grid = gabor_grid(config, (HEIGHT, WIDTH)).to(device)
    one_place = grid[:len(grid) // (config.n_positions[0] * config.n_positions[1])]
    common = dict(norm=norm, bounds=bounds, image_shape=(HEIGHT, WIDTH), progress=False)
    grid_rows, starts = [], None
    for name, models, preselect in [("before", raw, 0), ("+ folded BN", folded, 0),
                                    ("+ grid shortcut", folded, config.preselect)]:
        cfg = dataclasses.replace(config, preselect=preselect)
        search = shortcut_grid if preselect else exhaustive_grid
        seconds, (best_idx, best_act) = timed(lambda: search(models, cols, grid, cfg, **common))
        flops = (counted_flops(lambda: search(models, cols, one_place, cfg, **common)) * len(grid) / len(one_place)
                 if not preselect else counted_flops(lambda: search(models, cols, grid, cfg, **common)))
        starts = starts or (grid[best_idx].clone(), best_act.clone())
        grid_rows.append(dict(variant=name, seconds=seconds, gflop=flops / 1e9, gflop_per_s=flops / seconds / 1e9,
                              s_per_neuron=seconds / len(neurons)))
    refine_rows = []
    for name, models, window in [("before", raw, False), ("+ folded BN", folded, False), ("+ windows", folded, True)]:
        cfg = dataclasses.replace(config, window=window)
        seconds, (_, _, steps) = timed(lambda: refine_gabors(models, cols, *starts, cfg, lr=0.2, **common))
        short = dataclasses.replace(cfg, refine_steps=10, converge_tol=0.0)
        flops = counted_flops(lambda: refine_gabors(models, cols, *starts, short, lr=0.2, **common)) / 10 * \
            float(steps.float().mean())
        refine_rows.append(dict(variant=name, seconds=seconds, gflop=flops / 1e9, gflop_per_s=flops / seconds / 1e9,
                                s_per_neuron=seconds / len(neurons)))
    return grid_rows, refine_rows


def print_table(title: str, rows: list[dict], peak: float, steps: bool = False) -> None:
    """Print ``rows`` under ``title`` and add each row's ``fraction_of_peak`` (nothing for no rows)."""
    if not rows:
        return
    print(f"\n{title}")
    print(f"{'variant':<18} {'s':>7} {'s/neuron':>9} {'GFLOP':>8} {'GFLOP/s':>8} {'of peak':>8}"
          + (f" {'steps':>6}" if steps else ""))
    for r in rows:
        r["fraction_of_peak"] = r["gflop_per_s"] * 1e9 / peak
        last = f" {r['steps_mean']:>6.0f}" if steps else ""
        print(f"{r['variant']:<18} {r['seconds']:>7.1f} {r['s_per_neuron']:>9.3f} {r['gflop']:>8.0f} "
              f"{r['gflop_per_s']:>8.1f} {r['fraction_of_peak']:>8.1%}{last}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(Path(__file__).resolve().parents[1]))
    parser.add_argument("--stand-in", type=int, default=0, help="random models for this many neurons instead")
    parser.add_argument("--steps", type=int, default=None, help="MEI steps (default: the recipe's)")
    parser.add_argument("--positions", type=int, nargs=2, default=None, help="Gabor grid positions (rows cols)")
    parser.add_argument("--refine-steps", type=int, default=None, help="Gabor refinement steps (default: params')")
    parser.add_argument("--skip-gabor", action="store_true")
    add_machine_args(parser, "insilico")
    args = parser.parse_args()
    device, out = prepare(args, "insilico")
    raw, neurons, norm, bounds, recipe, gabor_cfg = setup(args, device)
    if args.positions:
        gabor_cfg = dataclasses.replace(gabor_cfg, n_positions=args.positions)
    if args.refine_steps is not None:
        gabor_cfg = dataclasses.replace(gabor_cfg, refine_steps=args.refine_steps)
    peak = matmul_peak() if device.type == "cpu" else float("nan")
    info = machine(device)
    print(f"{describe(info)}; {len(neurons)} neurons, {len(raw)} optimisation models, "
          f"peak (2048^2 sgemm) {peak / 1e9:.0f} GFLOP/s", flush=True)

    mei, window_corr = mei_rows(raw, neurons, norm, bounds, recipe, device, args.steps or recipe.steps)
    print_table(f"MEI ({recipe.n_starts} starts, {args.steps or recipe.steps} steps)", mei, peak, steps=True)
    print(f"windowed vs whole-image MEIs (every start): median correlation {window_corr:.5f}")
    grid, refine = ([], []) if args.skip_gabor else gabor_rows(raw, neurons, norm, bounds, gabor_cfg, device)
    print_table("optimal-Gabor grid", grid, peak)
    print_table(f"Gabor refinement ({gabor_cfg.refine_steps} steps)", refine, peak)
    write_json(out, dict(machine=info, n_neurons=len(neurons), stand_in=bool(args.stand_in),
                         peak_gflop_per_s=peak / 1e9,
                         mei=mei, mei_window_vs_full_corr_median=window_corr, gabor_grid=grid,
                         gabor_refine=refine))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
