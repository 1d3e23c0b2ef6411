"""Stage ``mei``: Most Exciting Inputs of every modelled neuron, scored against the best natural images.

Reads the ensemble and the studied dataset (:func:`~meiscope.stages._insilico.load_setup`), runs
:func:`meiscope.insilico.mei.synthesize_meis` on the optimisation members, scores the MEIs on the
held-out members, and writes ``results/mei`` (``per_neuron.csv``, ``meis.npz``, figures) and
``metrics/mei.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from meiscope.atomic import atomic_path, write_json, write_npz
from meiscope.config import Params
from meiscope.paths import Layout
from meiscope.stages._insilico import InSilicoSetup, load_setup, log_stage

CONTRAST_SCALES = np.linspace(0.25, 2.0, 8)  # norm scales of the contrast sweep (1 = the MEI's budget)


@dataclass
class _Comparisons:
    """What the MEIs are compared with, per neuron (numpy).

    Attributes:
        activation_val: ``(n,)`` held-out members' response to the MEI.
        best_index: ``(n,)`` dataset row of the natural image each neuron responds to most.
        best_raw, best_matched, best_val: ``(n,)`` its response as shown, at the MEI budget, and
            at the budget on the held-out members.
        best_matched_images: ``(n, H, W)`` those images projected to the budget.
        sweep: ``(n, len(CONTRAST_SCALES))`` response to each MEI scaled in contrast.
    """

    activation_val: np.ndarray
    best_index: np.ndarray
    best_raw: np.ndarray
    best_matched: np.ndarray
    best_matched_images: np.ndarray
    best_val: np.ndarray
    sweep: np.ndarray


def run(params: Params, root: Path, device: str | None = None) -> dict:
    """MEIs of all modelled neurons in one batched optimisation, scored by held-out models."""
    from meiscope.insilico.mei import synthesize_meis
    from meiscope.tracking import start_run

    layout = Layout.from_params(params, root)
    s = load_setup(params, root, device)
    out = layout.mei
    with start_run(params, "mei", root, sections=("mei",)) as mlf:
        # 64 images' worth of pixels per pass stay in the CPU caches (1.6x faster per image than
        # one huge batch; with windows ~400 of them, which is all of them on the default study)
        result = synthesize_meis(s.opt_models, s.neurons, s.image_shape, params.mei, s.norm, s.bounds,
                                 s.device, seed=params.mei.seed, max_batch=64 if s.device.type == "cpu" else None)
        compared = _compare(s, result.meis)
        table = _per_neuron_table(s, result, compared)
        with atomic_path(out / "per_neuron.csv") as tmp:
            table.to_csv(tmp, index=False)
        write_npz(out / "meis.npz", dict(meis=result.meis, meis_pixels=s.to_pixels(result.meis),
                  all_starts=result.all_starts, cell_ids=s.cell_ids, norm=s.norm, bounds=np.array(s.bounds),
                  best_image_index=compared.best_index, best_images_matched=compared.best_matched_images,
                  contrast_scales=CONTRAST_SCALES, contrast_sweep=compared.sweep))
        n_show = min(params.mei.n_show, len(s.cell_ids))
        _plot(s, result, compared, n_show, out)
        metrics = _metrics(params, s, result, table, compared.sweep)
        write_json(layout.metrics_file("mei"), metrics)
        log_stage(mlf, metrics, out, {f"mei_cell_{c}": s.to_pixels(m) for c, m in
                                      zip(s.cell_ids[:n_show], result.meis[:n_show])})
    return metrics


def _compare(s: InSilicoSetup, meis: np.ndarray) -> _Comparisons:
    """Score the MEIs ``(n, H, W)`` on the held-out members, find each neuron's best natural image, sweep contrast."""
    import torch

    from meiscope.insilico.budget import project_to_budget
    from meiscope.insilico.scoring import best_natural_images, contrast_sweep, score_images

    act_val = score_images(s.val_models, meis, s.neurons, s.device)
    best_idx, best_raw, best_matched = best_natural_images(s.opt_models, s.natural_images, s.neurons,
                                                           s.device, norm=s.norm, bounds=s.bounds)
    best_images = s.natural_images[best_idx]
    best_matched_images = project_to_budget(torch.as_tensor(best_images, device=s.device), s.norm,
                                            s.bounds).cpu().numpy()
    best_val = score_images(s.val_models, best_matched_images, s.neurons, s.device)
    sweep = contrast_sweep(s.opt_models, meis, s.neurons, CONTRAST_SCALES, s.device, s.bounds)
    return _Comparisons(activation_val=act_val, best_index=best_idx, best_raw=best_raw, best_matched=best_matched,
                        best_matched_images=best_matched_images, best_val=best_val, sweep=sweep)


def _per_neuron_table(s: InSilicoSetup, result: Any, compared: _Comparisons) -> Any:
    """``per_neuron.csv``: one row per neuron, the MEI's responses and its ratios to the best natural image."""
    import pandas as pd

    act_val, best_raw, best_matched, best_val = (compared.activation_val, compared.best_raw, compared.best_matched,
                                                 compared.best_val)
    return pd.DataFrame({
        "cell_id": s.cell_ids, "activation": result.activations, "activation_val": act_val,
        "best_image_index": compared.best_index, "best_image_activation_raw": best_raw,
        "best_image_activation_matched": best_matched, "best_image_activation_val": best_val,
        "mei_over_best_image": result.activations / np.maximum(best_matched, 1e-9),
        "mei_over_best_image_raw": result.activations / np.maximum(best_raw, 1e-9),
        "mei_val_over_best_image": act_val / np.maximum(best_val, 1e-9),
        "seed_consistency": result.seed_consistency,
        "seed_consistency_phase": result.seed_consistency_phase,
    })


def _metrics(params: Params, s: InSilicoSetup, result: Any, table: Any, sweep: np.ndarray) -> dict:
    """``metrics/mei.json``: medians over neurons, agreement of the starts, convergence (steps run per start)."""
    return {
        "n_neurons": int(len(s.cell_ids)), "norm": s.norm, "n_starts": params.mei.n_starts,
        "mei_over_best_image_median": float(table.mei_over_best_image.median()),
        "mei_over_best_image_raw_median": float(table.mei_over_best_image_raw.median()),
        "mei_val_over_best_image_median": float(table.mei_val_over_best_image.median()),
        "frac_val_mei_beats_best_image": float((table.mei_val_over_best_image > 1).mean()),
        "seed_consistency_median": float(table.seed_consistency.median()),
        "seed_consistency_phase_median": float(table.seed_consistency_phase.median()),
        "frac_starts_disagree": float((table.seed_consistency_phase < params.mei.agree_threshold).mean()),
        "contrast_sweep_monotonic_frac": float(np.mean(np.all(np.diff(sweep, axis=1) >= -1e-6, axis=1))),
        # steps each start ran before its plateau test ended it (mei.steps caps them)
        "steps_run_mean": float(result.steps_run.mean()),
        "steps_run_median": float(np.median(result.steps_run)),
        "steps_run_max": int(result.steps_run.max()),
        "frac_starts_converged": float((result.steps_run < params.mei.steps).mean()),
    }


def _plot(s: InSilicoSetup, result: Any, compared: _Comparisons, n_show: int, out: Path) -> None:
    """The gallery of the first ``n_show`` MEIs and their contrast sweeps."""
    from meiscope.gallery import plot_mei_grid

    plot_mei_grid(np.clip(s.to_pixels(result.meis[:n_show]), 0, 255),
                  [f"cell {c}\nopt {a:.2f} / val {v:.2f}" for c, a, v in
                   zip(s.cell_ids[:n_show], result.activations, compared.activation_val)], out / "gallery.png")
    _plot_contrast_sweep(CONTRAST_SCALES, compared.sweep[:n_show], s.cell_ids[:n_show], out / "contrast_sweep.png")


def _plot_contrast_sweep(scales: np.ndarray, sweep: np.ndarray, cell_ids: np.ndarray, path: Path) -> None:
    """Each neuron's response ``sweep (n, n_scales)`` against the norm scale, relative to the budget's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from meiscope.atomic import save_figure

    # sized for a ~1000 px page at save_figure's 110 dpi (9 pt is ~13 px there); one colour (and, past the
    # palette's 10, one dash style) per neuron so that no two legend entries look alike
    fig, ax = plt.subplots(figsize=(8.5, 4.2))
    colours = plt.get_cmap("tab10").colors
    styles = ("-", "--", ":", "-.")
    for k, (c, curve) in enumerate(zip(cell_ids, sweep)):
        ax.plot(scales, curve / max(curve[np.argmin(np.abs(scales - 1))], 1e-9), color=colours[k % len(colours)],
                ls=styles[(k // len(colours)) % len(styles)], lw=1.6, label=f"cell {c}")
    ax.axvline(1.0, color="k", lw=0.8, ls=":")
    ax.set_xlabel("norm scale (1 = the MEI's budget)", fontsize=9)
    ax.set_ylabel("predicted response / at budget", fontsize=9)
    ax.set_title("Contrast sweep of the MEIs", fontsize=10)
    ax.tick_params(labelsize=9)
    ax.legend(fontsize=9, ncol=1 + len(cell_ids) // 13, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    save_figure(fig, path)
