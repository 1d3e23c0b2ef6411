"""Stage ``validate``: the closed loop, the MEIs, optimal Gabors and natural images shown to the true neurons.

Synthetic sessions only (a real Allen session has no ground truth: the stage writes a note and
skips). Reads ``results/mei`` and ``results/gabor`` and the synthetic population, computes each
neuron's exact optimum under the same budget (:mod:`meiscope.optima`), and writes
``results/validate`` and ``metrics/validate.json`` (:mod:`meiscope.validation`). The optima are also
computed for every truly responsive cell the ranking did not select, for the figures that need no MEI
(``results/validate/best_scenes.csv``: each cell's best natural scene against its optimum).
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
        best_native = s.natural_images[f["best_image_index"]]  # the same scenes at the contrast the cells saw
    with np.load(layout.gabor / "gabors.npz") as f:
        gabors = f["optimal"]
    model_scores = _model_scores(layout)
    columns = truth.cell_columns(population, s.cell_ids)
    # every truly responsive cell, the selected ones first: the optima of the others serve the figures
    # that need no MEI (validation.best_scene_table)
    others = np.setdiff1d(np.flatnonzero(population.responsive), columns)
    every = np.concatenate([columns, others]).astype(np.int64)
    kinds_every = [population.kinds[c] for c in every]
    n = len(columns)
    with start_run(params, "validate", root, sections=("mei", "validate")) as mlf:
        filters = optima_lib.model_space_subunits(population, every, s.pixel_mean, s.pixel_std, s.image_shape)
        best = optima_lib.true_optima(filters, kinds_every, s.norm, s.bounds)
        # the truth in float64 on the CPU: the optimum check compares values to 1e-5
        exact = population.to(dtype=torch.float64)
        modules = {q: validation.TrueNeuronsInModelSpace(exact, columns, s.pixel_mean, s.pixel_std, quantity=q)
                   for q in validation.TrueNeuronsInModelSpace.QUANTITIES}
        stimuli = {"mei": meis, "gabor": gabors, "best_image": best_images, "best_image_native": best_native,
                   "optimum": best.images[:n]}
        table = validation.closed_loop_table(modules, kinds_every[:n], s.cell_ids, stimuli, starts,
                                             np.stack([filters.w1[:n], filters.w2[:n]], axis=1), model_scores,
                                             best.phi[:n], "cpu")
        validation.check_optima(table)
        scenes = _best_scenes(s, exact, every, kinds_every, n, best.images)
        with atomic_path(out / "per_neuron.csv") as tmp:
            table.to_csv(tmp, index=False)
        with atomic_path(out / "best_scenes.csv") as tmp:
            scenes.to_csv(tmp, index=False)
        write_npz(out / "true_optima.npz", dict(optima=best.images[:n].astype(np.float32), drives=best.drives[:n],
                                                phi=best.phi[:n], drive_upper=best.upper[:n], cell_ids=s.cell_ids))
        metrics = {**validation.summarise_validation(table, params.validate),
                   **validation.summarise_best_scenes(scenes)}
        save_figure(validation.closed_loop_figure(table, meis, best.images[:n], s.to_pixels, params.mei.n_show),
                    out / "closed_loop.png")
        write_json(layout.metrics_file("validate"), metrics)
        log_stage(mlf, metrics, out)
    return metrics


def _best_scenes(s: InSilicoSetup, exact: Any, every: np.ndarray, kinds: list[str], n_selected: int,
                 optima: np.ndarray) -> Any:
    """:func:`meiscope.validation.best_scene_table` of the cells ``every`` (the first ``n_selected`` selected)."""
    import torch

    from meiscope import validation
    from meiscope.insilico.budget import project_to_budget

    matched = project_to_budget(torch.as_tensor(s.natural_images, dtype=torch.float64), s.norm, s.bounds).numpy()
    modules = {q: validation.TrueNeuronsInModelSpace(exact, every, s.pixel_mean, s.pixel_std, quantity=q)
               for q in validation.SCENE_QUANTITIES}
    return validation.best_scene_table(modules, kinds, exact.cell_ids[every], np.arange(len(every)) < n_selected,
                                       s.natural_images, matched, optima, "cpu")


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
