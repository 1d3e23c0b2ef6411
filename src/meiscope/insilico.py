"""Glue for the in-silico experiments (the mei, gabor, validate and report stages).

Like ``pipeline.py`` for the earlier stages: read inputs from their standard places
(``paths.Layout``), call the stage functions in ``mei``, ``gabor``, ``validation`` and
``report``, write outputs and log to MLflow. The experiments see the models only through the
"images in, responses out" interface of the ensemble members.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from meiscope.atomic import atomic_path, write_json, write_npz
from meiscope.config import Params
from meiscope.errors import MeiscopeError
from meiscope.paths import Layout

log = logging.getLogger(__name__)


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
        opt_models=ensemble.members[:-n_val], val_models=ensemble.members[-n_val:],
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
        # chunks of 64 images stay in the CPU caches (1.6x faster per image than one huge batch)
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
            "contrast_sweep_monotonic_frac": float(np.mean(np.all(np.diff(sweep, axis=1) >= -1e-6, axis=1))),
        }
        write_json(layout.metrics_file("mei"), metrics)
        _log(mlf, metrics, out, {f"mei_cell_{c}": s.to_pixels(m) for c, m in
                                 zip(s.cell_ids[:n_show], result.meis[:n_show])})
    log.info("mei: %s", metrics)
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
            "mei_over_gabor_median": float(table.mei_over_gabor.median()),
            "mei_val_over_gabor_median": float(table.mei_val_over_gabor.median()),
            "mei_gabor_similarity_median": float(np.median(similarity)),
            "frac_neurons_mei_beats_gabor": float((table.mei_over_gabor > 1).mean()),
            "frac_neurons_mei_val_beats_gabor": float((table.mei_val_over_gabor > 1).mean()),
            "wilcoxon_p_opt": float(p_opt), "wilcoxon_p_val": float(p_val),
            "wilcoxon_p_opt_bh": float(p_adj[0]), "wilcoxon_p_val_bh": float(p_adj[1]),
        }
        write_json(layout.metrics_file("gabor"), metrics)
        _log(mlf, metrics, out, {f"gabor_cell_{c}": px(g) for c, g in zip(s.cell_ids[:n_show], best.images[:n_show])})
    log.info("gabor: %s", metrics)
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
    """Show MEIs, optimal Gabors and best natural images to the true synthetic neurons."""
    import pandas as pd

    from meiscope import truth, validation
    from meiscope.atomic import write_text
    from meiscope.tracking import start_run

    layout = Layout.from_params(params, root)
    s = load_setup(params, root, device)
    out = layout.validate
    population = truth.load_population(layout.cache_dir, s.experiment_id, device=s.device)
    if population is None:
        note = (f"experiment {s.experiment_id} is a real Allen session: it has no ground truth, so the closed "
                "loop is skipped (run the study on the synthetic cortex to check MEIs against the truth).")
        write_text(out / "NOTE.md", note + "\n")
        metrics = {"skipped": True, "note": note}
        write_json(layout.metrics_file("validate"), metrics)
        return metrics
    with np.load(layout.mei / "meis.npz") as f:
        meis, best_images = f["meis"], f["best_images_matched"]
    with np.load(layout.gabor / "gabors.npz") as f:
        gabors = f["optimal"]
    model_ratio = pd.read_csv(layout.gabor / "per_neuron.csv")["mei_over_gabor"].to_numpy()
    columns = truth.cell_columns(population, s.cell_ids)
    truth_drive, truth_rate = (validation.TrueNeuronsInModelSpace(population, columns, s.pixel_mean, s.pixel_std,
                                                                  drive=d).to(s.device) for d in (True, False))
    kinds = [population.kinds[c] for c in columns]
    with start_run(params, "validate", root, sections=("mei",)) as mlf:
        starts = validation.true_filter_starts(population, columns, s.image_shape)
        optima = validation.true_optima(truth_drive, starts, s.norm, s.bounds, params.mei.steps, params.mei.lr,
                                        s.device, progress=True)
        table = validation.closed_loop_table(truth_drive, truth_rate, kinds, s.cell_ids, meis, gabors, best_images,
                                             optima, model_ratio, s.device)
        with atomic_path(out / "per_neuron.csv") as tmp:
            table.to_csv(tmp, index=False)
        write_npz(out / "true_optima.npz", dict(optima=optima, cell_ids=s.cell_ids))
        metrics = validation.summarise_validation(table)
        _plot_closed_loop(table, meis, optima, s, out / "closed_loop.png", params.mei.n_show)
        write_json(layout.metrics_file("validate"), metrics)
        _log(mlf, metrics, out)
    log.info("validate: %s", metrics)
    return metrics


def _plot_closed_loop(table: Any, meis: np.ndarray, optima: np.ndarray, s: InSilicoSetup, path: Path,
                      n_show: int) -> None:
    """True MEI / Gabor response ratio per cell kind, and MEIs beside the true optima."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from meiscope.atomic import save_figure

    kinds = sorted(table.kind.unique())
    n_show = min(n_show, len(table), 6)
    fig = plt.figure(figsize=(12, 4.5))
    ax = fig.add_subplot(1, 3, 1)
    for k, kind in enumerate(kinds):
        ratios = table.loc[table.kind == kind, "mei_over_gabor"].to_numpy()
        ax.scatter(np.full(len(ratios), k) + np.random.default_rng(k).uniform(-0.15, 0.15, len(ratios)),
                   ratios, s=12, alpha=0.7)
    ax.axhline(1, color="k", lw=0.8, ls=":")
    ax.set_xticks(range(len(kinds)), kinds, rotation=20)
    ax.set_ylabel("true drive: MEI / optimal Gabor")
    ax.set_title("Closed loop on the true neurons")
    ax2 = fig.add_subplot(1, 3, 2)
    ax2.scatter(table.model_mei_over_gabor, table.mei_over_gabor, s=12, c=[kinds.index(k) for k in table.kind],
                cmap="tab10", vmin=0, vmax=9)
    ax2.axhline(1, color="k", lw=0.8, ls=":")
    ax2.axvline(1, color="k", lw=0.8, ls=":")
    ax2.set_xlabel("model: MEI / optimal Gabor")
    ax2.set_ylabel("truth: MEI / optimal Gabor")
    ax2.set_title("Model's conclusion vs truth")
    for i in range(n_show):
        for j, (img, label) in enumerate(((meis[i], "MEI"), (optima[i], "true optimum"))):
            a = fig.add_subplot(n_show, 6, i * 6 + 5 + j)
            a.imshow(np.clip(s.to_pixels(img), 0, 255), cmap="gray", vmin=0, vmax=255)
            a.set_xticks([])
            a.set_yticks([])
            if i == 0:
                a.set_title(label, fontsize=8)
            if j == 0:
                a.set_ylabel(f"{table.kind.iloc[i]}\nr={table.mei_truth_corr.iloc[i]:.2f}", fontsize=6)
    save_figure(fig, path)


# --------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------
# The closed-loop targets of the study (simple and complex cells) and the model accuracy they need.
TARGETS = {"gt_mei_corr": 0.8, "gt_mei_response_ratio": 0.9, "gt_test_corr": 0.8}


def _target_note(m: dict[str, dict]) -> str:
    """Say which closed-loop targets were missed, and why, from the train and validate metrics."""
    missed = []
    for kind in ("simple", "complex"):
        for key in ("gt_mei_corr", "gt_mei_response_ratio"):
            value = m["validate"].get(f"{key}_median_{kind}")
            if value is not None and value < TARGETS[key]:
                missed.append(f"{key} for {kind} cells is {value:.2f} (target {TARGETS[key]})")
    if not missed:
        return ""
    model = m["train"].get("gt_test_corr_mean")
    why = (f" The MEIs can only be as close to the truth as the model is: its test predictions correlate "
           f"{model:.2f} with the true rates (target {TARGETS['gt_test_corr']})." if model is not None else "")
    return ("Targets missed: " + "; ".join(missed) + "." + why +
            " With 118 scenes (88 for training) a CNN learns each cell's receptive field only roughly; more "
            "stimuli (e.g. other Allen stimuli or several sessions sharing one core), a more data-efficient "
            "core (rotation-equivariant, or a fixed Gabor front end) or a closed loop that adds the MEIs to the "
            "training data would close the gap.")


def report(params: Params, root: Path) -> Path:
    """Write report/index.html from the metrics and figures of every stage."""
    from meiscope.report import Section, load_metrics, write_report
    from meiscope.tracking import start_run

    layout = Layout.from_params(params, root)
    m = {stage: load_metrics(layout.metrics_file(stage))
         for stage in ("ranking", "tune", "train", "mei", "gabor", "validate")}
    validate_note = m["validate"].get("note", "") if m["validate"].get("skipped") else _target_note(m)
    sections = [
        Section("Most expressive neurons (rank)",
                f"Cells ranked by {params.rank.metric}; selected cells pass every threshold in params.yaml (rank:).",
                m["ranking"], [layout.ranking / "reliability.png", layout.ranking / "tuning.png"]),
        Section("Architecture search (tune)",
                "Optuna study over the CNN architecture; trial 0 is the default configuration of params.yaml.",
                {k: v for k, v in m["tune"].items()}, [layout.tune / "optimization_history.png",
                                                       layout.tune / "param_importances.png"]),
        Section("Response model (train)",
                "CNN ensemble (shared core + per-neuron readout) vs the linear-nonlinear baseline on held-out test "
                "images; FEVE and correlation to average are measured against the noise ceiling.",
                m["train"], [layout.train / "learning_curves.png", layout.train / "pred_vs_obs.png"]),
        Section("Most Exciting Inputs (mei)",
                "One batched gradient ascent for all neurons under a fixed L2 budget in the model's pixel space; "
                "'val' scores come from an ensemble member held out of the optimisation.",
                m["mei"], [layout.mei / "gallery.png", layout.mei / "contrast_sweep.png"]),
        Section("MEI vs optimal Gabor (gabor)",
                "Optimal Gabor per neuron from a grid + refinement under the same budget; the fitted Gabor says how "
                "Gabor-like each MEI is. Paired Wilcoxon tests with Benjamini-Hochberg correction.",
                m["gabor"], [layout.gabor / "gallery.png"]),
        Section("Closed loop on the true neurons (validate)",
                "Synthetic sessions only: MEIs, optimal Gabors and best natural images shown to the ground-truth "
                "neurons, compared with each neuron's true optimal stimulus under the same budget.",
                {k: v for k, v in m["validate"].items() if k != "note"}, [layout.validate / "closed_loop.png"],
                note=validate_note),
    ]
    subtitle = (f"data source: {params.data.source}; {m['ranking'].get('n_selected', '?')} of "
                f"{m['ranking'].get('n_cells', '?')} cells selected and modelled")
    path = write_report(layout.report / "index.html", "meiscope study report", subtitle, sections)
    with start_run(params, "report", root) as mlf:
        if mlf is not None:
            mlf.log_artifact(str(path))
    return path
