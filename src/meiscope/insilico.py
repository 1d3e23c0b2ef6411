"""Glue for the in-silico experiments (the mei, gabor, validate and report stages).

Like ``pipeline.py`` for the earlier stages: read inputs from their standard places
(``paths.Layout``), call the stage functions in ``mei``, ``gabor``, ``validation`` and
``report``, write outputs and log to MLflow. The experiments see the models only through the
"images in, responses out" interface of the ensemble members.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from meiscope.atomic import atomic_path, write_json, write_npz
from meiscope.config import RECORDINGS, Params
from meiscope.errors import MeiscopeError
from meiscope.paths import Layout



@dataclass
class InSilicoSetup:
    """What every in-silico experiment needs: models split into optimisation / held-out, and the budget.

    Attributes:
        opt_models: ensemble members whose mean is optimised.
        val_models: held-out members that only score ("val" activation).
        cell_ids: ``(n_neurons,)`` the modelled neurons, in rank order (model output columns).
        natural_images: ``(n_images, H, W)`` model-space dataset images.
        norm: L2 budget of every synthesised image in model space.
        bounds: model-space values of screen pixels 0 and 255.
    """

    opt_models: list
    val_models: list
    cell_ids: np.ndarray
    natural_images: np.ndarray
    image_shape: tuple[int, int]
    pixel_mean: float
    pixel_std: float
    norm: float
    bounds: tuple[float, float]
    device: Any
    experiment_id: int

    def to_pixels(self, model_images: np.ndarray) -> np.ndarray:
        return model_images * self.pixel_std + self.pixel_mean

    @property
    def neurons(self) -> np.ndarray:
        return np.arange(len(self.cell_ids))


def natural_image_norm(images: np.ndarray) -> float:
    """Median L2 norm of the natural images in model space (the default budget is a fraction of it)."""
    return float(np.median(np.linalg.norm(images.reshape(len(images), -1), axis=1)))


def load_setup(params: Params, root: Path, device: str | None) -> InSilicoSetup:
    """Load the ensemble and the studied dataset, and split the members into optimisation / held-out."""
    from meiscope.model import resolve_device
    from meiscope.model.ensemble import load_ensemble
    from meiscope.model.network import inference_copy
    from meiscope.pipeline import load_study_dataset

    layout = Layout.from_params(params, root)
    torch_device = resolve_device(device or params.mei.device)
    ensemble = load_ensemble(layout.ensemble, device=torch_device)
    n_val = params.mei.n_val_models
    if len(ensemble.members) <= n_val:
        raise MeiscopeError(f"mei.n_val_models ({n_val}) leaves no model to optimise on: the ensemble in "
                            f"{layout.ensemble} has {len(ensemble.members)} members (add train.seeds)")
    ds = load_study_dataset(layout)
    low, high = (0.0 - ensemble.pixel_mean) / ensemble.pixel_std, (255.0 - ensemble.pixel_mean) / ensemble.pixel_std
    return InSilicoSetup(
        opt_models=[inference_copy(m) for m in ensemble.members[:-n_val]],
        val_models=[inference_copy(m) for m in ensemble.members[-n_val:]],
        cell_ids=np.asarray(ensemble.cell_ids), natural_images=ds.images,
        image_shape=tuple(ensemble.image_shape), pixel_mean=ensemble.pixel_mean, pixel_std=ensemble.pixel_std,
        norm=params.mei.norm or params.mei.norm_fraction * natural_image_norm(ds.images), bounds=(low, high),
        device=torch_device,
        experiment_id=ds.experiment_id)


def _log(mlf: Any, metrics: dict, folder: Path, images: dict[str, np.ndarray] | None = None) -> None:
    """Metrics, every file of the stage's folder, and a few images for MLflow's image viewer."""
    if mlf is None:
        return
    mlf.log_metrics({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and np.isfinite(v)})
    mlf.log_artifacts(str(folder), artifact_path=folder.name)
    for key, image in (images or {}).items():
        mlf.log_image(np.clip(image, 0, 255).astype(np.uint8), key=key)


# --------------------------------------------------------------------------------------
# mei
# --------------------------------------------------------------------------------------
def mei(params: Params, root: Path, device: str | None = None) -> dict:
    """MEIs of all modelled neurons in one batched optimisation, scored by held-out models."""
    import pandas as pd
    import torch

    from meiscope import mei as mei_lib
    from meiscope.gallery import plot_mei_grid
    from meiscope.tracking import start_run

    layout = Layout.from_params(params, root)
    s = load_setup(params, root, device)
    out = layout.mei
    with start_run(params, "mei", root, sections=("mei",)) as mlf:
        # 64 images' worth of pixels per pass stay in the CPU caches (1.6x faster per image than
        # one huge batch; with windows ~400 of them, which is all of them on the default study)
        result = mei_lib.synthesize_meis(s.opt_models, s.neurons, s.image_shape, params.mei, s.norm, s.bounds,
                                         s.device, seed=params.mei.seed,
                                         max_batch=64 if s.device.type == "cpu" else None)
        act_val = mei_lib.score_images(s.val_models, result.meis, s.neurons, s.device)
        best_idx, best_raw, best_matched = mei_lib.best_natural_images(s.opt_models, s.natural_images, s.neurons,
                                                                       s.device, norm=s.norm, bounds=s.bounds)
        best_images = s.natural_images[best_idx]
        best_matched_images = mei_lib.project_to_budget(torch.as_tensor(best_images, device=s.device), s.norm,
                                                        s.bounds).cpu().numpy()
        best_val = mei_lib.score_images(s.val_models, best_matched_images, s.neurons, s.device)
        scales = np.linspace(0.25, 2.0, 8)
        sweep = mei_lib.contrast_sweep(s.opt_models, result.meis, s.neurons, scales, s.device, s.bounds)
        table = pd.DataFrame({
            "cell_id": s.cell_ids, "activation": result.activations, "activation_val": act_val,
            "best_image_index": best_idx, "best_image_activation_raw": best_raw,
            "best_image_activation_matched": best_matched, "best_image_activation_val": best_val,
            "mei_over_best_image": result.activations / np.maximum(best_matched, 1e-9),
            "mei_over_best_image_raw": result.activations / np.maximum(best_raw, 1e-9),
            "mei_val_over_best_image": act_val / np.maximum(best_val, 1e-9),
            "seed_consistency": result.seed_consistency,
            "seed_consistency_phase": result.seed_consistency_phase,
        })
        with atomic_path(out / "per_neuron.csv") as tmp:
            table.to_csv(tmp, index=False)
        write_npz(out / "meis.npz", dict(meis=result.meis, meis_pixels=s.to_pixels(result.meis),
                  all_starts=result.all_starts, cell_ids=s.cell_ids, norm=s.norm, bounds=np.array(s.bounds),
                  best_image_index=best_idx, best_images_matched=best_matched_images,
                  contrast_scales=scales, contrast_sweep=sweep))
        n_show = min(params.mei.n_show, len(s.cell_ids))
        plot_mei_grid(np.clip(s.to_pixels(result.meis[:n_show]), 0, 255),
                      [f"cell {c}\nopt {a:.2f} / val {v:.2f}" for c, a, v in
                       zip(s.cell_ids[:n_show], result.activations, act_val)], out / "gallery.png")
        _plot_contrast_sweep(scales, sweep[:n_show], s.cell_ids[:n_show], out / "contrast_sweep.png")
        metrics = {
            "n_neurons": int(len(s.cell_ids)), "norm": s.norm, "n_starts": params.mei.n_starts,
            "mei_over_best_image_median": float(table.mei_over_best_image.median()),
            "mei_over_best_image_raw_median": float(table.mei_over_best_image_raw.median()),
            "mei_val_over_best_image_median": float(table.mei_val_over_best_image.median()),
            "frac_val_mei_beats_best_image": float((table.mei_val_over_best_image > 1).mean()),
            "seed_consistency_median": float(table.seed_consistency.median()),
            "seed_consistency_phase_median": float(table.seed_consistency_phase.median()),
            "frac_starts_disagree": float((table.seed_consistency_phase < params.mei.agree_threshold).mean()),
            "contrast_sweep_monotonic_frac": float(np.mean(np.all(np.diff(sweep, axis=1) >= -1e-6, axis=1))),
            "steps_run_mean": float(result.steps_run.mean()),
            "frac_starts_converged": float((result.steps_run < params.mei.steps).mean()),
        }
        write_json(layout.metrics_file("mei"), metrics)
        _log(mlf, metrics, out, {f"mei_cell_{c}": s.to_pixels(m) for c, m in
                                 zip(s.cell_ids[:n_show], result.meis[:n_show])})
    return metrics


def _plot_contrast_sweep(scales: np.ndarray, sweep: np.ndarray, cell_ids: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from meiscope.atomic import save_figure

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for c, curve in zip(cell_ids, sweep):
        ax.plot(scales, curve / max(curve[np.argmin(np.abs(scales - 1))], 1e-9), alpha=0.7, label=str(c))
    ax.axvline(1.0, color="k", lw=0.8, ls=":")
    ax.set_xlabel("norm scale (1 = the MEI's budget)")
    ax.set_ylabel("predicted response / at budget")
    ax.set_title("Contrast sweep of the MEIs")
    ax.legend(fontsize=6, ncol=2)
    save_figure(fig, path)


# --------------------------------------------------------------------------------------
# gabor
# --------------------------------------------------------------------------------------
def gabor(params: Params, root: Path, device: str | None = None) -> dict:
    """Optimal Gabors under the MEI budget, Gabors fitted to the MEIs, and the paired statistics."""
    import pandas as pd

    from meiscope import gabor as gabor_lib
    from meiscope import mei as mei_lib
    from meiscope.gallery import plot_image_rows
    from meiscope.tracking import start_run

    layout = Layout.from_params(params, root)
    s = load_setup(params, root, device)
    meis = _load_meis(layout)
    out = layout.gabor
    with start_run(params, "gabor", root, sections=("gabor",)) as mlf:
        best = gabor_lib.optimal_gabors(s.opt_models, s.neurons, s.image_shape, params.gabor, s.norm, s.bounds,
                                        s.device)
        gabor_val = mei_lib.score_images(s.val_models, best.images, s.neurons, s.device)
        mei_opt = mei_lib.score_images(s.opt_models, meis, s.neurons, s.device)
        mei_val = mei_lib.score_images(s.val_models, meis, s.neurons, s.device)
        fit_params, fit_images, similarity = gabor_lib.fit_gabor(meis, params.gabor, s.device)
        p_opt = gabor_lib.paired_wilcoxon(mei_opt, best.activations)
        p_val = gabor_lib.paired_wilcoxon(mei_val, gabor_val)
        p_adj = gabor_lib.benjamini_hochberg(np.array([p_opt, p_val]))
        table = pd.DataFrame({
            "cell_id": s.cell_ids, "mei_activation": mei_opt, "gabor_activation": best.activations,
            "mei_activation_val": mei_val, "gabor_activation_val": gabor_val,
            "mei_over_gabor": mei_opt / np.maximum(best.activations, 1e-9),
            "mei_val_over_gabor": mei_val / np.maximum(gabor_val, 1e-9),
            "mei_gabor_similarity": similarity,
            **{f"gabor_{name}": best.params[:, i] for i, name in enumerate(gabor_lib.PARAM_NAMES)},
            **{f"fit_{name}": fit_params[:, i] for i, name in enumerate(gabor_lib.PARAM_NAMES)},
        })
        with atomic_path(out / "per_neuron.csv") as tmp:
            table.to_csv(tmp, index=False)
        write_npz(out / "gabors.npz", dict(optimal=best.images, optimal_params=best.params, fitted=fit_images,
                  fitted_params=fit_params, cell_ids=s.cell_ids))
        n_show = min(params.mei.n_show, len(s.cell_ids))
        px = s.to_pixels
        plot_image_rows(
            [[np.clip(px(meis[i]), 0, 255), np.clip(px(best.images[i]), 0, 255), np.clip(px(fit_images[i]), 0, 255)]
             for i in range(n_show)],
            ["MEI", "optimal Gabor", "Gabor fitted to MEI"], [f"cell {c}" for c in s.cell_ids[:n_show]],
            out / "gallery.png",
            cell_titles=[[f"opt {mei_opt[i]:.2f} val {mei_val[i]:.2f}",
                          f"opt {best.activations[i]:.2f} val {gabor_val[i]:.2f}",
                          f"similarity {similarity[i]:.2f}"] for i in range(n_show)])
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
        metrics.update(_presented_gabor_check(params, layout, s, best.params, out))
        write_json(layout.metrics_file("gabor"), metrics)
        _log(mlf, metrics, out, {f"gabor_cell_{c}": px(g) for c, g in zip(s.cell_ids[:n_show], best.images[:n_show])})
    return metrics


def _presented_gabor_check(params: Params, layout: Layout, s: InSilicoSetup, optimal_params: np.ndarray,
                           out: Path) -> dict:
    """Neuropixels sessions: the best presented Gabor patch of each unit vs its optimal Gabor (else nothing)."""
    from meiscope import truth
    from meiscope.atomic import save_figure
    from meiscope.neuropixels.gabor_check import gabor_patch_check, receptive_field_figure, scene_fraction_to_degrees
    from meiscope.neuropixels.responses import load_other_stimuli, other_stimuli_path

    patches = load_other_stimuli(other_stimuli_path(layout.dataset(s.experiment_id))).get("gabors")
    if patches is None:
        return {}
    population = truth.load_population(layout.cache_dir, s.experiment_id)
    true_xy = None
    if population is not None:
        columns = truth.cell_columns(population, s.cell_ids)
        true_xy = scene_fraction_to_degrees(population.params.x[columns], population.params.y[columns])
    table, metrics = gabor_patch_check(patches, s.cell_ids, np.asarray(optimal_params), params.extract.crop,
                                       s.image_shape, true_xy)
    with atomic_path(out / "presented_gabors.csv") as tmp:
        table.to_csv(tmp, index=False)
    save_figure(receptive_field_figure(patches, table, params.mei.n_show), out / "receptive_fields.png")
    return metrics


def _load_meis(layout: Layout) -> np.ndarray:
    path = layout.mei / "meis.npz"
    if not path.is_file():
        raise MeiscopeError(f"{path}: missing (run `meiscope mei` first)")
    with np.load(path) as f:
        return f["meis"]


# --------------------------------------------------------------------------------------
# validate
# --------------------------------------------------------------------------------------
def validate(params: Params, root: Path, device: str | None = None) -> dict:
    """Show every MEI start, the optimal Gabors and best natural images to the true synthetic neurons."""
    import pandas as pd
    import torch

    from meiscope import optima as optima_lib
    from meiscope import truth, validation
    from meiscope.atomic import save_figure, write_text
    from meiscope.tracking import start_run

    layout = Layout.from_params(params, root)
    s = load_setup(params, root, device)
    out = layout.validate
    population = truth.load_population(layout.cache_dir, s.experiment_id, device="cpu")
    if population is None:
        note = (f"experiment {s.experiment_id} is a real Allen session: it has no ground truth, so the closed "
                "loop is skipped (run the study on the synthetic cortex to check MEIs against the truth).")
        write_text(out / "NOTE.md", note + "\n")
        metrics = {"skipped": True, "note": note}
        write_json(layout.metrics_file("validate"), metrics)
        return metrics
    with np.load(layout.mei / "meis.npz") as f:
        meis, starts, best_images = f["meis"], f["all_starts"], f["best_images_matched"]
    with np.load(layout.gabor / "gabors.npz") as f:
        gabors = f["optimal"]
    scores = pd.read_csv(layout.gabor / "per_neuron.csv")
    model_scores = {"mei": scores.mei_activation.to_numpy(), "gabor": scores.gabor_activation.to_numpy(),
                    "mei_val": scores.mei_activation_val.to_numpy(), "gabor_val": scores.gabor_activation_val.to_numpy()}
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
        _log(mlf, metrics, out)
    return metrics


# --------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------
def report(params: Params, root: Path) -> Path:
    """Write report/index.html from the metrics and figures of every stage (sections: report_sections.py)."""
    from meiscope.ablation import summary_path as ablation_path
    from meiscope.replicate import summary_file
    from meiscope.report import load_metrics, write_report
    from meiscope.report_sections import headline_metrics, study_sections
    from meiscope.tracking import start_run

    layout = Layout.from_params(params, root)
    stages = ("ranking", "tune", "train", "mei", "gabor", "validate")
    metrics = {stage: load_metrics(layout.metrics_file(stage)) for stage in stages}
    # the replicates of this recording's study, and of another recording's (same cortices) to compare:
    # the whole container with the scenes alone, each single-stimulus recording with the other
    metrics["replicates"] = load_metrics(summary_file(root, params.data.recording))
    other = {"container": "two_photon", "neuropixels": "two_photon"}.get(params.data.recording, "neuropixels")
    metrics["replicates_other"] = load_metrics(summary_file(root, other))
    metrics["ablation"] = load_metrics(ablation_path(root))  # the container's ablation, when it was run
    if not any(metrics[stage] for stage in stages) and not metrics["replicates"].get("figures"):
        raise MeiscopeError(f"report: no results in {layout.metrics} yet: run the study first "
                            "(`make run`, or `dvc repro` after `meiscope data`)")
    subtitle = (f"data source: {params.data.source} ({RECORDINGS[params.data.recording]}); "
                f"{metrics['ranking'].get('n_selected', '?')} of "
                f"{metrics['ranking'].get('n_cells', '?')} cells selected and modelled")
    path = write_report(layout.report / "index.html", "meiscope study report", subtitle,
                        study_sections(params, layout, metrics))
    write_json(layout.metrics_file("headline"), headline_metrics(metrics))
    with start_run(params, "report", root) as mlf:
        if mlf is not None:
            mlf.log_artifact(str(path))
    return path
