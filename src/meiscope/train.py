"""The ``train`` stage: fit the ensemble of response models and an LN baseline, score both on test images.

Method (Walker et al. 2019): one CNN (shared core + per-neuron readout) per seed, each trained
on the train images with early stopping on the validation images; the ensemble predicts the
mean of its members. A linear-nonlinear baseline is fitted on the same split. All models are
scored on the held-out test images against single trials (correlation to the average over
repeats, single-trial correlation, FEVE), next to the leave-one-out oracle (noise ceiling) and,
for synthetic data, against the true firing rates. With other sessions (``sessions.shared``) each
member's core also learns from their selected cells, one readout per session; only the studied
session's model is saved and scored.

Outputs: ``out_dir`` (``models/ensemble``: member weights + ``ensemble.json``), ``metrics_path``
(JSON summary), ``results_dir`` (``per_neuron.csv``, ``history.json``, ``learning_curves.png``,
``pred_vs_obs.png``, ``checkpoints/seed_<s>.pt``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import pandas as pd

from meiscope.atomic import atomic_path, save_figure, write_json
from meiscope.config import ModelConfig, TrainConfig, as_dict
from meiscope.dataset import ResponseDataset
from meiscope.model import resolve_device
from meiscope.model.baseline import fit_ln
from meiscope.model.ensemble import member_path, save_ensemble
from meiscope.model.evaluation import (corr_to_average, feve, finite_or_none, oracle_corr, pearson_columns, predict,
                                       single_trial_corr, trial_mask)
from meiscope.model.network import check_model_config
from meiscope.model.training import TrainingError, TrainResult, train_shared


def _epoch_logger(log: Any, seed: int, seen: set[int]) -> Callable[[int, dict], None]:
    """An ``on_epoch`` callback that sends one member's epoch record to ``log`` (e.g. mlflow)."""

    def on_epoch(epoch: int, record: dict) -> None:
        seen.add(epoch)
        if log is not None:
            log.log_metrics(_epoch_metrics(seed, record), step=epoch)

    return on_epoch


def _epoch_metrics(seed: int, record: dict) -> dict[str, float]:
    names = {"train_loss": "train_loss", "val_corr_to_avg": "val_corr", "val_feve": "val_feve", "lr": "lr"}
    return {f"member_{seed}/{short}": float(record[key]) for key, short in names.items()
            if np.isfinite(record[key])}


def _test_split(ds: ResponseDataset) -> tuple[np.ndarray, np.ndarray]:
    """Test image rows (with trials) and the ``(n_trials,)`` mask of their trials."""
    repeats = ds.repeats()
    test = ds.image_indices("test")
    test = test[repeats[test] > 0]
    if len(test) < 2:
        raise TrainingError(f"dataset {ds.experiment_id}: needs >= 2 test images with trials to score the models "
                            f"(has {len(test)}; see extract.split.test_fraction)")
    return test, trial_mask(ds.split, ds.trial_image, ["test"])


def _scores(pred: np.ndarray, responses: np.ndarray, trial_image: np.ndarray) -> dict[str, np.ndarray]:
    """Per-neuron test scores of one predictor (``pred`` ``(n_images, n)`` in dF/F)."""
    return {"corr_to_avg": corr_to_average(pred, responses, trial_image),
            "single_trial_corr": single_trial_corr(pred, responses, trial_image),
            "feve": feve(pred, responses, trial_image)}


def _json_safe(value: Any) -> Any:
    """NaN / inf -> None (strict JSON has no NaN)."""
    return None if isinstance(value, float) and not np.isfinite(value) else value


def _mean(values: np.ndarray) -> Optional[float]:
    v = np.asarray(values, dtype=np.float64)
    return float(np.nanmean(v)) if np.isfinite(v).any() else None


def _median(values: np.ndarray) -> Optional[float]:
    v = np.asarray(values, dtype=np.float64)
    return float(np.nanmedian(v)) if np.isfinite(v).any() else None


def run_train(ds: ResponseDataset, model_cfg: ModelConfig, train_cfg: TrainConfig, out_dir: Path,
              results_dir: Path, metrics_path: Path, device: Any = "auto", resume: bool = False,
              truth: Optional[Callable[[np.ndarray], np.ndarray]] = None, progress: bool = True,
              log: Any = None, fresh_images: Optional[np.ndarray] = None,
              kinds: Optional[Sequence[str]] = None, other_sessions: Sequence[ResponseDataset] = (),
              extra: Any = None) -> dict:
    """Train one member per seed, fit the LN baseline, evaluate on test images, write everything.

    Args:
        ds: the session, restricted to the selected neurons (``ds.select_neurons(ids)``).
        model_cfg, train_cfg: ``params.model`` (possibly the tuned architecture) and ``params.train``.
        out_dir: ensemble folder (``models/ensemble``).
        results_dir: stage results (``results/train``); checkpoints go to ``results_dir/checkpoints``.
        metrics_path: the JSON metrics file.
        device: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` or a ``torch.device``.
        resume: continue each member from its checkpoint (finished members are not retrained).
        truth: optional ``truth(images (n, H, W)) -> true mean rates (n, n_neurons)`` (synthetic data).
        progress: tqdm bars.
        log: optional tracker with ``log_metric`` / ``log_metrics`` / ``log_artifact`` (the mlflow module).
        fresh_images: optional ``(n_fresh, H, W)`` model-space images of NEW scenes (never used for
            training or selection): with ``truth``, the models are scored against the true rates on
            them (``gt_fresh_corr_*``), far more images than the test split holds.
        kinds: optional ``(n_neurons,)`` true cell kinds, for per-kind fresh-scene scores.
        other_sessions: other sessions (each restricted to its own selected cells) whose readouts
            train every member's core together with ``ds``'s (:func:`~meiscope.model.training.train_shared`).
            Only ``ds``'s model is saved and scored.
        extra: the container's other stimuli of ``ds``'s cells (a
            :class:`~meiscope.container.responses.ContainerStimuli`), trained on with the scenes.

    Returns the metrics dict that is also written to ``metrics_path``.
    """
    device = resolve_device(device)
    out_dir, results_dir, metrics_path = Path(out_dir), Path(results_dir), Path(metrics_path)
    # Refuse bad configurations and unusable splits before any training starts.
    check_model_config(model_cfg, ds.n_neurons, ds.images.shape[1:])
    test, test_trials = _test_split(ds)

    results: list[TrainResult] = []
    for seed in train_cfg.seeds:
        seen: set[int] = set()
        result = train_shared(model_cfg, train_cfg, [ds, *other_sessions], seed, device,
                              checkpoint_path=results_dir / "checkpoints" / f"seed_{seed}.pt", resume=resume,
                              on_epoch=_epoch_logger(log, seed, seen), progress=progress, extra=extra)
        if log is not None:  # epochs restored from a checkpoint were not seen by the callback
            for record in result.history:
                if record["epoch"] not in seen:
                    log.log_metrics(_epoch_metrics(seed, record), step=int(record["epoch"]))
        results.append(result)

    members = [r.model for r in results]
    normalisation = results[0].normalisation  # a function of the train split: identical for every seed
    save_ensemble(out_dir, members, model_cfg, normalisation, ds.cell_ids, ds.images.shape[1:],
                  ds.pixel_mean, ds.pixel_std, train_cfg.seeds)
    ln = fit_ln(ds, train_cfg.ln_l2)

    # Predictions for every image (dF/F); scores use the test trials only.
    ensemble_pred = predict(members, ds.images, device)
    member_preds = [predict(m, ds.images, device) for m in members]
    ln_pred = ln.predict(ds.images)
    responses, trial_image = ds.responses[test_trials], ds.trial_image[test_trials]
    cnn = _scores(ensemble_pred, responses, trial_image)
    lin = _scores(ln_pred, responses, trial_image)
    member_corr = [corr_to_average(p, responses, trial_image) for p in member_preds]
    oracle = oracle_corr(responses, trial_image)

    table = pd.DataFrame({"cell_id": ds.cell_ids.astype(np.int64)})
    for name, values in cnn.items():
        table[f"test_{name}"] = values
    table["test_oracle_corr"] = oracle
    for name, values in lin.items():
        table[f"ln_test_{name}"] = values
    for seed, values in zip(train_cfg.seeds, member_corr):
        table[f"member_{seed}_test_corr_to_avg"] = values
    positions = np.mean([m.readout.positions().cpu().numpy() for m in members], axis=0)
    table["readout_row"], table["readout_col"] = positions[:, 0], positions[:, 1]

    oracle_mean = _mean(oracle)
    single_mean = _mean(cnn["single_trial_corr"])
    metrics: dict[str, Any] = {
        "n_neurons": int(ds.n_neurons),
        "n_train_images": int(len(ds.image_indices("train"))),
        "n_val_images": int(len(ds.image_indices("val"))),
        "n_test_images": int(len(test)),
        "n_test_trials": int(test_trials.sum()),
        "test_corr_to_avg_mean": _mean(cnn["corr_to_avg"]),
        "test_corr_to_avg_median": _median(cnn["corr_to_avg"]),
        "test_single_trial_corr_mean": single_mean,
        "test_feve_median": _median(cnn["feve"]),
        "ln_test_corr_to_avg_mean": _mean(lin["corr_to_avg"]),
        "ln_test_single_trial_corr_mean": _mean(lin["single_trial_corr"]),
        "ln_test_feve_median": _median(lin["feve"]),
        "cnn_beats_ln_fraction": float(np.mean(cnn["corr_to_avg"] > lin["corr_to_avg"])),
        "member_test_corr_to_avg_mean": [_mean(c) for c in member_corr],
        "member_best_epoch": [int(r.best_epoch) for r in results],
        "member_best_val_corr": [finite_or_none(r.best_val_corr) for r in results],
        "member_epochs": [len(r.history) for r in results],
        "member_stop_reason": [r.stop_reason for r in results],
        "test_oracle_corr_mean": oracle_mean,
        # Single-trial correlation as a fraction of the noise ceiling (1 = as good as the data allow).
        "test_fraction_of_oracle": (single_mean / oracle_mean if single_mean is not None and oracle_mean
                                    else None),
    }
    if other_sessions:  # absent for one session, so the default study's metrics stay as they were
        metrics["shared_core_sessions"] = [int(ds.experiment_id), *(int(o.experiment_id) for o in other_sessions)]
        metrics["shared_core_n_neurons"] = [int(ds.n_neurons), *(int(o.n_neurons) for o in other_sessions)]
    if truth is not None:
        true_rates = np.asarray(truth(ds.images[test]), dtype=np.float64)
        if true_rates.shape != (len(test), ds.n_neurons):
            raise TrainingError(f"truth returned shape {true_rates.shape}, expected {(len(test), ds.n_neurons)}")
        gt = pearson_columns(ensemble_pred[test], true_rates)
        ln_gt = pearson_columns(ln_pred[test], true_rates)
        table["gt_test_corr"], table["ln_gt_test_corr"] = gt, ln_gt
        metrics.update({"gt_test_corr_mean": _mean(gt), "gt_test_corr_median": _median(gt),
                        "ln_gt_test_corr_mean": _mean(ln_gt)})
        if fresh_images is not None and len(fresh_images):
            fresh = _fresh_scores(members, ln, fresh_images, truth, device, kinds)
            table["gt_fresh_corr"], table["ln_gt_fresh_corr"] = fresh.pop("per_neuron"), fresh.pop("ln_per_neuron")
            metrics.update(fresh)

    results_dir.mkdir(parents=True, exist_ok=True)
    write_json(metrics_path, metrics)
    with atomic_path(results_dir / "per_neuron.csv", suffix=".csv") as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    # what was run (configuration, not metrics: `dvc params` and MLflow hold it too)
    run = {"device": str(device), "seeds": [int(s) for s in train_cfg.seeds], "model": as_dict(model_cfg),
           "lr": train_cfg.lr, "batch_size": train_cfg.batch_size}
    if other_sessions:
        run["shared_core_sessions"] = metrics["shared_core_sessions"]
    write_json(results_dir / "run.json", run)
    write_json(results_dir / "history.json",
               {str(r.seed): [{k: _json_safe(v) for k, v in h.items()} for h in r.history] for r in results})
    _write_plot_data(results, ds, test, ensemble_pred, results_dir)
    save_figure(_learning_curves_figure(results), results_dir / "learning_curves.png")
    save_figure(_pred_vs_obs_figure(ds, test, ensemble_pred, ln_pred, cnn["corr_to_avg"], lin["corr_to_avg"]),
                results_dir / "pred_vs_obs.png")

    if log is not None:
        final = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                 and np.isfinite(v)}
        for seed, value in zip(train_cfg.seeds, metrics["member_test_corr_to_avg_mean"]):
            if value is not None:
                final[f"member_{seed}/test_corr_to_avg_mean"] = value
        log.log_metrics(final)
        for path in (metrics_path, results_dir / "run.json", results_dir / "per_neuron.csv",
                     results_dir / "learning_curves.png",
                     results_dir / "pred_vs_obs.png", out_dir / "ensemble.json",
                     *[member_path(out_dir, s) for s in train_cfg.seeds]):
            log.log_artifact(str(path))
    return metrics


def _fresh_scores(members: list, ln: Any, images: np.ndarray, truth: Callable[[np.ndarray], np.ndarray],
                  device: Any, kinds: Optional[Sequence[str]]) -> dict[str, Any]:
    """Correlation of the ensemble, each member and the LN model with the true rates on fresh scenes.

    Cells whose true rate does not vary (unresponsive ones) have no correlation (NaN) and are left
    out of the means and medians.
    """
    true_rates = np.asarray(truth(images), dtype=np.float64)
    ensemble = pearson_columns(predict(members, images, device), true_rates)
    ln_corr = pearson_columns(ln.predict(images), true_rates)
    out: dict[str, Any] = {
        "n_fresh_images": int(len(images)), "gt_fresh_corr_mean": _mean(ensemble),
        "gt_fresh_corr_median": _median(ensemble), "ln_gt_fresh_corr_mean": _mean(ln_corr),
        "member_gt_fresh_corr_mean": [_mean(pearson_columns(predict(m, images, device), true_rates))
                                      for m in members],
        "per_neuron": ensemble, "ln_per_neuron": ln_corr}
    if kinds is not None:
        kinds = np.asarray(kinds)
        for kind in sorted(set(kinds) - {"unresponsive"}):
            out[f"gt_fresh_corr_median_{kind}"] = _median(ensemble[kinds == kind])
    return out


# --------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------
def _write_plot_data(results: list[TrainResult], ds: ResponseDataset, test: np.ndarray, ensemble_pred: np.ndarray,
                     results_dir: Path) -> None:
    """The data behind the figures as CSV, for `dvc plots` (declared in dvc.yaml, overlaid across experiments).

    ``history/seed_<s>.csv``: one row per epoch of a member; ``pred_vs_obs.csv``: one row per
    (test image, neuron), observed image mean and ensemble prediction (dF/F).
    """
    history_dir = results_dir / "history"
    history_dir.mkdir(parents=True, exist_ok=True)
    for stale in history_dir.glob("seed_*.csv"):
        stale.unlink()
    for r in results:
        frame = pd.DataFrame([{k: _json_safe(v) for k, v in h.items()} for h in r.history])
        with atomic_path(history_dir / f"seed_{r.seed}.csv", suffix=".csv") as tmp:
            frame.to_csv(tmp, index=False, float_format="%.6g")
    observed = ds.image_means()[test]
    rows, cols = np.meshgrid(np.arange(len(test)), np.arange(ds.n_neurons), indexing="ij")
    table = pd.DataFrame({"image": ds.image_ids[test][rows.ravel()], "cell_id": ds.cell_ids[cols.ravel()],
                          "observed": observed.ravel(), "predicted": ensemble_pred[test].ravel()})
    with atomic_path(results_dir / "pred_vs_obs.csv", suffix=".csv") as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")


def _learning_curves_figure(results: list[TrainResult]) -> Any:
    """Train loss and validation correlation per epoch, one line per member (best epoch marked)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.4))
    ax_loss, ax_val = fig.subplots(1, 2)
    for r in results:
        epochs = [h["epoch"] for h in r.history]
        line, = ax_loss.plot(epochs, [h["train_loss"] for h in r.history], label=f"seed {r.seed}")
        ax_val.plot(epochs, [h["val_corr_to_avg"] for h in r.history], color=line.get_color())
        ax_val.axvline(r.best_epoch, color=line.get_color(), ls=":", lw=1)
    ax_loss.set(xlabel="epoch", ylabel="train loss (normalised units)", yscale="log", title="training loss")
    ax_val.set(xlabel="epoch", ylabel="val corr to average", title="validation (dotted: best epoch)")
    ax_loss.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return fig


def _pred_vs_obs_figure(ds: ResponseDataset, test: np.ndarray, cnn_pred: np.ndarray, ln_pred: np.ndarray,
                        cnn_corr: np.ndarray, ln_corr: np.ndarray) -> Any:
    """Predicted vs observed test image means for a few neurons + histogram of test correlations."""
    from matplotlib.figure import Figure

    observed = ds.image_means()[test]
    order = np.argsort(-cnn_corr)
    picks = list(dict.fromkeys(order[np.linspace(0, len(order) - 1, min(4, len(order))).astype(int)]))
    fig = Figure(figsize=(3 * max(len(picks), 2), 6))
    grid = fig.add_gridspec(2, len(picks))
    for i, n in enumerate(picks):
        ax = fig.add_subplot(grid[0, i])
        ax.scatter(observed[:, n], cnn_pred[test, n], s=12, label="CNN ensemble")
        ax.scatter(observed[:, n], ln_pred[test, n], s=12, marker="x", alpha=0.6, label="LN")
        low = min(observed[:, n].min(), cnn_pred[test, n].min())
        high = max(observed[:, n].max(), cnn_pred[test, n].max())
        ax.plot([low, high], [low, high], color="gray", lw=0.8)
        ax.set(title=f"cell {ds.cell_ids[n]}: r={cnn_corr[n]:.2f} (LN {ln_corr[n]:.2f})",
               xlabel="observed mean dF/F", ylabel="predicted dF/F" if i == 0 else "")
        ax.title.set_fontsize(8)
        if i == 0:
            ax.legend(frameon=False, fontsize=7)
    ax = fig.add_subplot(grid[1, :])
    bins = np.linspace(-1, 1, 41)
    ax.hist(cnn_corr, bins=bins, alpha=0.6, label=f"CNN ensemble (mean {np.mean(cnn_corr):.2f})")
    ax.hist(ln_corr, bins=bins, alpha=0.6, label=f"LN (mean {np.mean(ln_corr):.2f})")
    ax.set(xlabel="test correlation to average (per neuron)", ylabel="neurons")
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return fig
