"""Fit the ensemble of response models and an LN baseline, and score both (the ``train`` stage's work).

Method (Walker et al. 2019), one function each, in the order :func:`fit_ensemble` runs them:

1. :func:`train_members`: one CNN (shared core + per-neuron readout) per seed, trained on the
   train images with early stopping on the validation images; the ensemble predicts the mean of
   its members. With other sessions (``sessions.shared``) each member's core also learns from
   their selected cells, one readout per session; only the studied session's model is kept.
2. :func:`~meiscope.model.baseline.fit_ln`: a linear-nonlinear baseline on the same split.
3. :func:`predict_every_image` and :func:`score_test_images`: every model scored on the held-out
   test images against single trials (correlation to the average over repeats, single-trial
   correlation, FEVE), next to the leave-one-out oracle (noise ceiling); :func:`per_neuron_table`
   and :func:`summary_metrics` collect the scores.
4. :func:`score_against_truth` (synthetic data): correlation with the true firing rates on the
   test images and on fresh scenes never used for training or selection.
5. :func:`write_results`, :func:`write_figures`, :func:`log_results`: the files and the tracker.

Outputs (:class:`TrainOutputs`): ``ensemble_dir`` (``models/ensemble``: member weights +
``ensemble.json``), ``metrics_path`` (JSON summary), ``results_dir`` (``per_neuron.csv``,
``run.json``, ``history.json``, ``history/seed_<s>.csv``, ``pred_vs_obs.csv``,
``learning_curves.png``, ``pred_vs_obs.png``, ``checkpoints/seed_<s>.pt``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import numpy as np
import pandas as pd

from meiscope.atomic import atomic_path, save_figure, write_json
from meiscope.config import ModelConfig, TrainConfig, as_dict
from meiscope.dataset import ResponseDataset
from meiscope.model import resolve_device
from meiscope.model.baseline import LNModel, fit_ln
from meiscope.model.ensemble import member_path, save_ensemble
from meiscope.model.evaluation import (corr_to_average, feve, finite_or_none, oracle_corr, pearson_columns, predict,
                                       single_trial_corr, trial_mask)
from meiscope.model.network import ResponseModel, check_model_config
from meiscope.model.training import TrainingError, TrainResult, train_shared

if TYPE_CHECKING:
    from meiscope.model.source_protocol import TrainingSource


# --------------------------------------------------------------------------------------
# inputs and outputs
# --------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class TrainingData:
    """What the members learn from.

    Attributes:
        session: the studied session, restricted to its selected neurons (``ds.select_neurons(ids)``);
            the only one whose model is saved and scored.
        other_sessions: other sessions (each restricted to its own selected cells) whose readouts
            train every member's core together with ``session``'s (:func:`~meiscope.model.training.train_shared`).
        extra: other stimuli of ``session``'s cells (a
            :class:`~meiscope.model.source_protocol.TrainingSource`, e.g. the experiment container's), trained
            on with the scenes.
    """

    session: ResponseDataset
    other_sessions: Sequence[ResponseDataset] = ()
    extra: "Optional[TrainingSource]" = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "other_sessions", tuple(self.other_sessions))


@dataclass(frozen=True, eq=False)
class GroundTruth:
    """The true rates of a synthetic session, to score the models against.

    Attributes:
        rates: ``rates(images (n, H, W)) -> true mean rates (n, n_neurons)`` (model-space images).
        fresh_images: optional ``(n_fresh, H, W)`` model-space images of NEW scenes (never used for
            training or selection): the models are also scored against the true rates on them
            (``gt_fresh_corr_*``), far more images than the test split holds.
        kinds: optional ``(n_neurons,)`` true cell kinds, for per-kind fresh-scene scores.
    """

    rates: Callable[[np.ndarray], np.ndarray]
    fresh_images: Optional[np.ndarray] = None
    kinds: Optional[Sequence[str]] = None


@dataclass(frozen=True)
class TrainOutputs:
    """Where :func:`fit_ensemble` writes.

    Attributes:
        ensemble_dir: the ensemble folder (``models/ensemble``).
        results_dir: the stage's results (``results/train``); checkpoints go to ``results_dir/checkpoints``.
        metrics_path: the JSON metrics file (``metrics/train.json``).
    """

    ensemble_dir: Path
    results_dir: Path
    metrics_path: Path

    def __post_init__(self) -> None:
        for name in ("ensemble_dir", "results_dir", "metrics_path"):
            object.__setattr__(self, name, Path(getattr(self, name)))

    @property
    def checkpoints(self) -> Path:
        """One resumable checkpoint per member: ``checkpoints/seed_<s>.pt``."""
        return self.results_dir / "checkpoints"


@dataclass(frozen=True, eq=False)
class HeldOutImages:
    """The held-out images the models are scored on.

    Attributes:
        rows: ``(n_test,)`` rows of the session's test images that have trials.
        trials: ``(n_trials,)`` bool mask of the session's trials of test images.
    """

    rows: np.ndarray
    trials: np.ndarray


@dataclass(frozen=True, eq=False)
class Predictions:
    """Every model's predicted image means of every image of the session, dF/F, ``(n_images, n_neurons)`` each."""

    ensemble: np.ndarray
    members: list[np.ndarray]
    ln: np.ndarray


@dataclass(frozen=True, eq=False)
class HeldOutScores:
    """Per-neuron ``(n_neurons,)`` scores on the test images.

    Attributes:
        cnn, ln: the ensemble's and the LN model's ``corr_to_avg``, ``single_trial_corr``, ``feve``.
        members: each member's ``corr_to_avg``, in seed order.
        oracle: the leave-one-out oracle correlation (noise ceiling).
    """

    cnn: dict[str, np.ndarray]
    ln: dict[str, np.ndarray]
    members: list[np.ndarray]
    oracle: np.ndarray


# --------------------------------------------------------------------------------------
# the method
# --------------------------------------------------------------------------------------
def fit_ensemble(data: TrainingData, model_cfg: ModelConfig, train_cfg: TrainConfig, outputs: TrainOutputs,
                 truth: Optional[GroundTruth] = None, device: Any = "cpu", resume: bool = False, log: Any = None,
                 progress: bool = True) -> dict:
    """Train one member per seed, fit the LN baseline, score both on the test images, write everything.

    Args:
        data: the studied session (``n_neurons`` selected cells, images ``(n_images, H, W)``), the
            sessions sharing its core, the container's other stimuli.
        model_cfg, train_cfg: ``params.model`` (possibly the tuned architecture) and ``params.train``.
        outputs: where the ensemble, the results and the metrics go.
        truth: the true rates (synthetic data), scored against on the test images and fresh scenes.
        device: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` or a ``torch.device``.
        resume: continue each member from its checkpoint (finished members are not retrained).
        log: optional tracker with ``log_metric`` / ``log_metrics`` / ``log_artifact`` (the mlflow module).
        progress: tqdm bars.

    Returns the metrics dict that is also written to ``outputs.metrics_path``. Bad configurations
    and splits without enough test images raise before any training.
    """
    device = resolve_device(device)
    ds = data.session
    # Refuse bad configurations and unusable splits before any training starts.
    check_model_config(model_cfg, ds.n_neurons, ds.images.shape[1:])
    test = held_out_images(ds)

    results = train_members(data, model_cfg, train_cfg, outputs.checkpoints, device, resume, log, progress)
    members = [r.model for r in results]
    normalisation = results[0].normalisation  # a function of the train split: identical for every seed
    save_ensemble(outputs.ensemble_dir, members, model_cfg, normalisation, ds.cell_ids, ds.images.shape[1:],
                  ds.pixel_mean, ds.pixel_std, train_cfg.seeds)
    ln = fit_ln(ds, train_cfg.ln_l2)

    pred = predict_every_image(members, ln, ds.images, device)
    scores = score_test_images(pred, ds, test)
    table = per_neuron_table(ds, scores, members, train_cfg.seeds)
    metrics = summary_metrics(ds, test, scores, results)
    if data.other_sessions:  # absent for one session, so the default study's metrics stay as they were
        metrics.update(shared_core_metrics(data))
    if truth is not None:
        columns, gt_metrics = score_against_truth(truth, ds, test, pred, members, ln, device)
        for name, values in columns.items():
            table[name] = values
        metrics.update(gt_metrics)

    write_results(outputs, metrics, table, results, run_record(device, model_cfg, train_cfg, metrics))
    write_figures(outputs.results_dir, results, ds, test, pred, scores)
    if log is not None:
        log_results(log, metrics, train_cfg.seeds, outputs)
    return metrics


def held_out_images(ds: ResponseDataset) -> HeldOutImages:
    """The test images with trials and their trials; raises unless there are at least 2 of them."""
    repeats = ds.repeats()
    test = ds.image_indices("test")
    test = test[repeats[test] > 0]
    if len(test) < 2:
        raise TrainingError(f"dataset {ds.experiment_id}: needs >= 2 test images with trials to score the models "
                            f"(has {len(test)}; see extract.split.test_fraction)")
    return HeldOutImages(rows=test, trials=trial_mask(ds.split, ds.trial_image, ["test"]))


def train_members(data: TrainingData, model_cfg: ModelConfig, train_cfg: TrainConfig, checkpoints: Path,
                  device: Any, resume: bool, log: Any, progress: bool) -> list[TrainResult]:
    """One member per seed of ``train_cfg.seeds`` (:func:`~meiscope.model.training.train_shared`), in seed order.

    Each member checkpoints to ``checkpoints/seed_<s>.pt`` (``resume`` continues from there); its
    epoch records go to ``log`` as they end, and those restored from a checkpoint afterwards.
    """
    results: list[TrainResult] = []
    for seed in train_cfg.seeds:
        seen: set[int] = set()
        result = train_shared(model_cfg, train_cfg, [data.session, *data.other_sessions], seed, device,
                              checkpoint_path=checkpoints / f"seed_{seed}.pt", resume=resume,
                              on_epoch=_epoch_logger(log, seed, seen), progress=progress, extra=data.extra)
        if log is not None:  # epochs restored from a checkpoint were not seen by the callback
            for record in result.history:
                if record["epoch"] not in seen:
                    log.log_metrics(_epoch_metrics(seed, record), step=int(record["epoch"]))
        results.append(result)
    return results


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


def predict_every_image(members: list[ResponseModel], ln: LNModel, images: np.ndarray, device: Any) -> Predictions:
    """The ensemble's, each member's and the LN model's predictions for ``images`` ``(n_images, H, W)``."""
    ensemble = predict(members, images, device)
    member_preds = [predict(m, images, device) for m in members]
    return Predictions(ensemble=ensemble, members=member_preds, ln=ln.predict(images))


def _scores(pred: np.ndarray, responses: np.ndarray, trial_image: np.ndarray) -> dict[str, np.ndarray]:
    """Per-neuron test scores of one predictor (``pred`` ``(n_images, n)`` in dF/F)."""
    return {"corr_to_avg": corr_to_average(pred, responses, trial_image),
            "single_trial_corr": single_trial_corr(pred, responses, trial_image),
            "feve": feve(pred, responses, trial_image)}


def score_test_images(pred: Predictions, ds: ResponseDataset, test: HeldOutImages) -> HeldOutScores:
    """Every model against the single trials of the test images, and the oracle (noise ceiling)."""
    responses, trial_image = ds.responses[test.trials], ds.trial_image[test.trials]
    return HeldOutScores(cnn=_scores(pred.ensemble, responses, trial_image),
                         ln=_scores(pred.ln, responses, trial_image),
                         members=[corr_to_average(p, responses, trial_image) for p in pred.members],
                         oracle=oracle_corr(responses, trial_image))


def per_neuron_table(ds: ResponseDataset, scores: HeldOutScores, members: list[ResponseModel],
                     seeds: Sequence[int]) -> pd.DataFrame:
    """One row per neuron: test scores of the ensemble, the oracle, the LN model and each member, and
    the members' mean readout position (row, column in model pixels)."""
    table = pd.DataFrame({"cell_id": ds.cell_ids.astype(np.int64)})
    for name, values in scores.cnn.items():
        table[f"test_{name}"] = values
    table["test_oracle_corr"] = scores.oracle
    for name, values in scores.ln.items():
        table[f"ln_test_{name}"] = values
    for seed, values in zip(seeds, scores.members):
        table[f"member_{seed}_test_corr_to_avg"] = values
    positions = np.mean([m.readout.positions().cpu().numpy() for m in members], axis=0)
    table["readout_row"], table["readout_col"] = positions[:, 0], positions[:, 1]
    return table


def summary_metrics(ds: ResponseDataset, test: HeldOutImages, scores: HeldOutScores,
                    results: list[TrainResult]) -> dict:
    """The summary: split sizes, mean / median test scores of the ensemble, the LN model and each
    member, how each member's training went, and the single-trial correlation as a fraction of the oracle."""
    cnn, lin = scores.cnn, scores.ln
    oracle_mean = _mean(scores.oracle)
    single_mean = _mean(cnn["single_trial_corr"])
    return {
        "n_neurons": int(ds.n_neurons),
        "n_train_images": int(len(ds.image_indices("train"))),
        "n_val_images": int(len(ds.image_indices("val"))),
        "n_test_images": int(len(test.rows)),
        "n_test_trials": int(test.trials.sum()),
        "test_corr_to_avg_mean": _mean(cnn["corr_to_avg"]),
        "test_corr_to_avg_median": _median(cnn["corr_to_avg"]),
        "test_single_trial_corr_mean": single_mean,
        "test_feve_median": _median(cnn["feve"]),
        "ln_test_corr_to_avg_mean": _mean(lin["corr_to_avg"]),
        "ln_test_single_trial_corr_mean": _mean(lin["single_trial_corr"]),
        "ln_test_feve_median": _median(lin["feve"]),
        "cnn_beats_ln_fraction": float(np.mean(cnn["corr_to_avg"] > lin["corr_to_avg"])),
        "member_test_corr_to_avg_mean": [_mean(c) for c in scores.members],
        "member_best_epoch": [int(r.best_epoch) for r in results],
        "member_best_val_corr": [finite_or_none(r.best_val_corr) for r in results],
        "member_epochs": [len(r.history) for r in results],
        "member_stop_reason": [r.stop_reason for r in results],
        "test_oracle_corr_mean": oracle_mean,
        # Single-trial correlation as a fraction of the noise ceiling (1 = as good as the data allow).
        "test_fraction_of_oracle": (single_mean / oracle_mean if single_mean is not None and oracle_mean
                                    else None),
    }


def shared_core_metrics(data: TrainingData) -> dict[str, list[int]]:
    """The sessions that trained the core (studied one first) and their numbers of neurons."""
    sessions = [data.session, *data.other_sessions]
    return {"shared_core_sessions": [int(s.experiment_id) for s in sessions],
            "shared_core_n_neurons": [int(s.n_neurons) for s in sessions]}


def score_against_truth(truth: GroundTruth, ds: ResponseDataset, test: HeldOutImages, pred: Predictions,
                        members: list[ResponseModel], ln: LNModel,
                        device: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Correlation of the ensemble and the LN model with the true rates on the test images (and, with
    ``truth.fresh_images``, on fresh scenes: :func:`_fresh_scores`).

    Returns per-neuron ``(n_neurons,)`` columns for the table and the summary metrics.
    """
    true_rates = np.asarray(truth.rates(ds.images[test.rows]), dtype=np.float64)
    if true_rates.shape != (len(test.rows), ds.n_neurons):
        raise TrainingError(f"truth returned shape {true_rates.shape}, expected {(len(test.rows), ds.n_neurons)}")
    gt = pearson_columns(pred.ensemble[test.rows], true_rates)
    ln_gt = pearson_columns(pred.ln[test.rows], true_rates)
    columns = {"gt_test_corr": gt, "ln_gt_test_corr": ln_gt}
    metrics = {"gt_test_corr_mean": _mean(gt), "gt_test_corr_median": _median(gt), "ln_gt_test_corr_mean": _mean(ln_gt)}
    if truth.fresh_images is not None and len(truth.fresh_images):
        fresh = _fresh_scores(members, ln, truth.fresh_images, truth.rates, device, truth.kinds)
        columns["gt_fresh_corr"], columns["ln_gt_fresh_corr"] = fresh.pop("per_neuron"), fresh.pop("ln_per_neuron")
        metrics.update(fresh)
    return columns, metrics


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
# files and the tracker
# --------------------------------------------------------------------------------------
def run_record(device: Any, model_cfg: ModelConfig, train_cfg: TrainConfig, metrics: dict) -> dict:
    """What was run (configuration, not metrics: `dvc params` and MLflow hold it too), for ``run.json``."""
    run = {"device": str(device), "seeds": [int(s) for s in train_cfg.seeds], "model": as_dict(model_cfg),
           "lr": train_cfg.lr, "batch_size": train_cfg.batch_size}
    if "shared_core_sessions" in metrics:
        run["shared_core_sessions"] = metrics["shared_core_sessions"]
    return run


def write_results(outputs: TrainOutputs, metrics: dict, table: pd.DataFrame, results: list[TrainResult],
                  run: dict) -> None:
    """The metrics JSON, ``per_neuron.csv``, ``run.json`` and every member's epoch history (``history.json``)."""
    results_dir = outputs.results_dir
    results_dir.mkdir(parents=True, exist_ok=True)
    write_json(outputs.metrics_path, metrics)
    with atomic_path(results_dir / "per_neuron.csv", suffix=".csv") as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    write_json(results_dir / "run.json", run)
    write_json(results_dir / "history.json",
               {str(r.seed): [{k: _json_safe(v) for k, v in h.items()} for h in r.history] for r in results})


def write_figures(results_dir: Path, results: list[TrainResult], ds: ResponseDataset, test: HeldOutImages,
                  pred: Predictions, scores: HeldOutScores) -> None:
    """The figures' data as CSV, the learning curves (every member on one figure: the one `dvc plots show`
    draws) and predicted vs observed responses."""
    _write_plot_data(results, ds, test.rows, pred.ensemble, results_dir)
    save_figure(_learning_curves_figure(results), results_dir / "learning_curves.png")
    save_figure(_pred_vs_obs_figure(ds, test.rows, pred.ensemble, pred.ln, scores.cnn["corr_to_avg"],
                                    scores.ln["corr_to_avg"]), results_dir / "pred_vs_obs.png")


def log_results(log: Any, metrics: dict, seeds: Sequence[int], outputs: TrainOutputs) -> None:
    """Send the finite numeric metrics (and each member's test score) and the written files to ``log``."""
    final = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
             and np.isfinite(v)}
    for seed, value in zip(seeds, metrics["member_test_corr_to_avg_mean"]):
        if value is not None:
            final[f"member_{seed}/test_corr_to_avg_mean"] = value
    log.log_metrics(final)
    results_dir, ensemble_dir = outputs.results_dir, outputs.ensemble_dir
    for path in (outputs.metrics_path, results_dir / "run.json", results_dir / "per_neuron.csv",
                 results_dir / "learning_curves.png", results_dir / "pred_vs_obs.png",
                 ensemble_dir / "ensemble.json", *[member_path(ensemble_dir, s) for s in seeds]):
        log.log_artifact(str(path))


def _json_safe(value: Any) -> Any:
    """NaN / inf -> None (strict JSON has no NaN)."""
    return None if isinstance(value, float) and not np.isfinite(value) else value


def _mean(values: np.ndarray) -> Optional[float]:
    v = np.asarray(values, dtype=np.float64)
    return float(np.nanmean(v)) if np.isfinite(v).any() else None


def _median(values: np.ndarray) -> Optional[float]:
    v = np.asarray(values, dtype=np.float64)
    return float(np.nanmedian(v)) if np.isfinite(v).any() else None


# --------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------
def _write_plot_data(results: list[TrainResult], ds: ResponseDataset, test: np.ndarray, ensemble_pred: np.ndarray,
                     results_dir: Path) -> None:
    """The data behind the figures as CSV (`dvc plots` shows the PNGs, which need no network to view).

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
