"""Stage ``validate``: the closed loop, the MEIs, optimal Gabors and natural images shown to the true neurons.

Synthetic sessions only (a real Allen session has no ground truth: the stage writes a note and
skips). Reads ``results/mei`` and ``results/gabor`` and the synthetic population, computes each
neuron's exact optimum under the same budget (:mod:`meiscope.optima`), and writes
``results/validate`` and ``metrics/validate.json`` (:mod:`meiscope.validation`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from meiscope.atomic import atomic_path, write_json, write_npz
from meiscope.config import Params
from meiscope.paths import Layout
from meiscope.stages._insilico import InSilicoSetup, load_setup, log_stage


def run(params: Params, root: Path, device: str | None = None) -> dict:
    """Show every MEI start, the optimal Gabors and best natural images to the true synthetic neurons."""
    import torch

    from meiscope import optima as optima_lib
    from meiscope import truth, validation
    from meiscope.atomic import save_figure
    from meiscope.tracking import start_run

    layout = Layout.from_params(params, root)
    s = load_setup(params, root, device)
    out = layout.validate
    population = truth.load_population(layout.cache_dir, s.experiment_id, device="cpu")
    if population is None:
        return _skip(layout, s)
    with np.load(layout.mei / "meis.npz") as f:
        meis, starts, best_images = f["meis"], f["all_starts"], f["best_images_matched"]
    with np.load(layout.gabor / "gabors.npz") as f:
        gabors = f["optimal"]
    model_scores = _model_scores(layout)
    columns = truth.cell_columns(population, s.cell_ids)
    kinds = [population.kinds[c] for c in columns]
    with start_run(params, "validate", root, sections=("mei",)) as mlf:
        filters = optima_lib.model_space_subunits(population, columns, s.pixel_mean, s.pixel_std, s.image_shape)
        best = optima_lib.true_optima(filters, kinds, s.norm, s.bounds)
        # the truth in float64 on the CPU: the optimum check compares values to 1e-5
        exact = population.to(dtype=torch.float64)
        modules = {q: validation.TrueNeuronsInModelSpace(exact, columns, s.pixel_mean, s.pixel_std, quantity=q)
                   for q in validation.TrueNeuronsInModelSpace.QUANTITIES}
        stimuli = {"mei": meis, "gabor": gabors, "best_image": best_images, "optimum": best.images}
        table = validation.closed_loop_table(modules, kinds, s.cell_ids, stimuli, starts,
                                             np.stack([filters.w1, filters.w2], axis=1), model_scores, best.phi, "cpu")
        validation.check_optima(table)
        with atomic_path(out / "per_neuron.csv") as tmp:
            table.to_csv(tmp, index=False)
        write_npz(out / "true_optima.npz", dict(optima=best.images.astype(np.float32), drives=best.drives,
                                                phi=best.phi, cell_ids=s.cell_ids))
        metrics = validation.summarise_validation(table)
        save_figure(validation.closed_loop_figure(table, meis, best.images, s.to_pixels, params.mei.n_show),
                    out / "closed_loop.png")
        write_json(layout.metrics_file("validate"), metrics)
        log_stage(mlf, metrics, out)
    return metrics


def _skip(layout: Layout, s: InSilicoSetup) -> dict:
    """A real session: note why there is no closed loop, in ``results/validate/NOTE.md`` and the metrics."""
    from meiscope.atomic import write_text

    note = (f"experiment {s.experiment_id} is a real Allen session: it has no ground truth, so the closed "
            "loop is skipped (run the study on the synthetic cortex to check MEIs against the truth).")
    write_text(layout.validate / "NOTE.md", note + "\n")
    metrics = {"skipped": True, "note": note}
    write_json(layout.metrics_file("validate"), metrics)
    return metrics


def _model_scores(layout: Layout) -> dict[str, Any]:
    """``(n_neurons,)`` the ensemble's responses to the MEIs and optimal Gabors, as the ``gabor`` stage scored them."""
    import pandas as pd

    scores = pd.read_csv(layout.gabor / "per_neuron.csv")
    return {"mei": scores.mei_activation.to_numpy(), "gabor": scores.gabor_activation.to_numpy(),
            "mei_val": scores.mei_activation_val.to_numpy(), "gabor_val": scores.gabor_activation_val.to_numpy()}
