"""Stage ``gabor``: the optimal Gabor of every neuron under the MEI's budget, and the MEI against it.

Reads the ensemble, the studied dataset and the MEIs (``results/mei/meis.npz``), runs
:func:`meiscope.insilico.gabor.optimal_gabors` and :func:`meiscope.insilico.gabor.fit_gabor`,
tests MEI against Gabor across neurons (paired Wilcoxon, Benjamini-Hochberg), and writes
``results/gabor`` and ``metrics/gabor.json``. Neuropixels sessions also compare each unit's best
presented Gabor patch with its optimal Gabor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from meiscope.atomic import atomic_path, write_json, write_npz
from meiscope.config import Params
from meiscope.paths import Layout
from meiscope.recordings import recording_of
from meiscope.stages._insilico import InSilicoSetup, load_meis, load_setup, log_stage


def run(params: Params, root: Path, device: str | None = None) -> dict:
    """Optimal Gabors under the MEI budget, Gabors fitted to the MEIs, and the paired statistics."""
    import pandas as pd

    from meiscope.insilico.gabor import PARAM_NAMES, fit_gabor, optimal_gabors
    from meiscope.insilico.scoring import score_images
    from meiscope.science.stats import benjamini_hochberg, paired_wilcoxon
    from meiscope.tracking import start_run

    layout = Layout.from_params(params, root)
    s = load_setup(params, root, device)
    meis = load_meis(layout)
    out = layout.gabor
    with start_run(params, "gabor", root, sections=("gabor",)) as mlf:
        best = optimal_gabors(s.opt_models, s.neurons, s.image_shape, params.gabor, s.norm, s.bounds, s.device)
        gabor_val = score_images(s.val_models, best.images, s.neurons, s.device)
        mei_opt = score_images(s.opt_models, meis, s.neurons, s.device)
        mei_val = score_images(s.val_models, meis, s.neurons, s.device)
        fit_params, fit_images, similarity = fit_gabor(meis, params.gabor, s.device)
        p_opt = paired_wilcoxon(mei_opt, best.activations)
        p_val = paired_wilcoxon(mei_val, gabor_val)
        p_adj = benjamini_hochberg(np.array([p_opt, p_val]))
        table = pd.DataFrame({
            "cell_id": s.cell_ids, "mei_activation": mei_opt, "gabor_activation": best.activations,
            "mei_activation_val": mei_val, "gabor_activation_val": gabor_val,
            "mei_over_gabor": mei_opt / np.maximum(best.activations, 1e-9),
            "mei_val_over_gabor": mei_val / np.maximum(gabor_val, 1e-9),
            "mei_gabor_similarity": similarity,
            **{f"gabor_{name}": best.params[:, i] for i, name in enumerate(PARAM_NAMES)},
            **{f"fit_{name}": fit_params[:, i] for i, name in enumerate(PARAM_NAMES)},
        })
        with atomic_path(out / "per_neuron.csv") as tmp:
            table.to_csv(tmp, index=False)
        write_npz(out / "gabors.npz", dict(optimal=best.images, optimal_params=best.params, fitted=fit_images,
                  fitted_params=fit_params, cell_ids=s.cell_ids))
        n_show = min(params.mei.n_show, len(s.cell_ids))
        _plot_gallery(s, meis, best, fit_images, table, n_show, out / "gallery.png")
        metrics = {
            "n_neurons": int(len(s.cell_ids)), "n_candidates": int(best.n_candidates_evaluated),
            "refine_steps_run_mean": float(best.refine_steps_run.mean()),
            "mei_over_gabor_median": float(table.mei_over_gabor.median()),
            "mei_val_over_gabor_median": float(table.mei_val_over_gabor.median()),
            "mei_gabor_similarity_median": float(np.median(similarity)),
            "frac_neurons_mei_beats_gabor": float((table.mei_over_gabor > 1).mean()),
            "frac_neurons_mei_val_beats_gabor": float((table.mei_val_over_gabor > 1).mean()),
            "wilcoxon_p_opt": float(p_opt), "wilcoxon_p_val": float(p_val),
            "wilcoxon_p_opt_bh": float(p_adj[0]), "wilcoxon_p_val_bh": float(p_adj[1]),
        }
        # stimuli the recording itself presented, checked against the optimal Gabors (Neuropixels: Gabor patches)
        metrics.update(recording_of(params).check_optimal_gabors(
            params, layout.cache_dir, s.experiment_id, layout.dataset(s.experiment_id), s.cell_ids, s.image_shape,
            best.params, out))
        write_json(layout.metrics_file("gabor"), metrics)
        log_stage(mlf, metrics, out, {f"gabor_cell_{c}": s.to_pixels(g)
                                      for c, g in zip(s.cell_ids[:n_show], best.images[:n_show])})
    return metrics


def _plot_gallery(s: InSilicoSetup, meis: np.ndarray, best: Any, fit_images: np.ndarray, table: Any, n_show: int,
                  path: Path) -> None:
    """One row per neuron (the first ``n_show``): MEI, optimal Gabor, Gabor fitted to the MEI, with their scores."""
    from meiscope.gallery import plot_image_rows

    px = s.to_pixels
    mei_opt, mei_val = table.mei_activation.to_numpy(), table.mei_activation_val.to_numpy()
    gabor_val, similarity = table.gabor_activation_val.to_numpy(), table.mei_gabor_similarity.to_numpy()
    plot_image_rows(
        [[np.clip(px(meis[i]), 0, 255), np.clip(px(best.images[i]), 0, 255), np.clip(px(fit_images[i]), 0, 255)]
         for i in range(n_show)],
        ["MEI", "optimal Gabor", "Gabor fitted to MEI"], [f"cell {c}" for c in s.cell_ids[:n_show]],
        path,
        cell_titles=[[f"opt {mei_opt[i]:.2f} val {mei_val[i]:.2f}",
                      f"opt {best.activations[i]:.2f} val {gabor_val[i]:.2f}",
                      f"similarity {similarity[i]:.2f}"] for i in range(n_show)])
