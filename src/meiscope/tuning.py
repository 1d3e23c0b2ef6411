"""The `tune` stage: an Optuna search over the response model's architecture and training.

* The search space is declared in params.yaml (``tune.space``); per-layer channels are
  conditional parameters (``channels_<i>`` exists only when the trial has more than i layers),
  which Optuna's TPE sampler handles natively.
* Trial 0 is always the default architecture (``params.model``), so the study says whether
  the search beat the hand-made design.
* Objective: best validation score (correlation to average or FEVE) of a short training on the
  train split, reported per epoch and pruned by a median pruner. Never the test split.
* Storage: a local Optuna journal file by default (one `tune` invocation at a time, with any
  number of ``--workers``), or a PostgreSQL URL that `tune` processes on many hosts share (see
  :mod:`meiscope.shared_study` for the lock, the budget claims and the heartbeats). A rerun
  resumes the study and only adds the trials missing from the budget; only finished trials
  (complete or pruned) count against it. A trial an earlier run left running (killed) is marked
  failed and its configuration is tried once more.
* Sampling: each worker that joins a study takes the next worker number, which seeds its sampler
  (:func:`sampler_seed`): the first worker of a new study samples with ``tune.seed`` (a
  one-worker study is reproducible); no other worker, on any host, replays its start-up sequence.
* MLflow: every trial becomes a nested child run under the study's one parent run (the first
  `tune` run of the study, recorded in the study), logged by the invocation that ran it after its
  workers finish (MLflow's fluent API is neither thread- nor process-safe on one sqlite store).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import multiprocessing
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from meiscope import shared_study
from meiscope.config import ModelConfig, SearchSpace, TrainConfig, TuneConfig, as_dict, build_section
from meiscope.dataset import ResponseDataset

if TYPE_CHECKING:
    from meiscope.model.source_protocol import SavedSource, TrainingSource

log = logging.getLogger(__name__)

FAIL_REASON = "fail_reason"
RETRY_OF = "retry_of"  # user attribute of a trial that re-runs an interrupted trial's configuration


@dataclass(frozen=True)
class TrialSetup:
    """What one trial trains: the architecture and the two training knobs the search sets."""

    model: ModelConfig
    lr: float
    batch_size: int


def suggest_setup(trial: Any, space: SearchSpace, base: ModelConfig) -> TrialSetup:
    """Sample one configuration from ``space``; ``base`` supplies what the space leaves fixed (the loss).

    Raises :class:`~meiscope.config.ConfigError` for a sampled combination that is invalid.
    """
    layers = trial.suggest_int("layers", space.layers[0], space.layers[1])
    channels = [trial.suggest_int(f"channels_{i}", space.channels[0], space.channels[1], log=True)
                for i in range(layers)]
    hidden_kernel = trial.suggest_categorical("hidden_kernel", space.hidden_kernel) if layers > 1 else base.hidden_kernel
    depth_separable = trial.suggest_categorical("depth_separable", space.depth_separable) if layers > 1 else False
    model = build_section(ModelConfig, {
        **as_dict(base),
        "layers": layers,
        "channels": channels,
        "first_kernel": trial.suggest_categorical("first_kernel", space.first_kernel),
        "hidden_kernel": hidden_kernel,
        "depth_separable": depth_separable,
        "batch_norm": trial.suggest_categorical("batch_norm", space.batch_norm),
        "readout": trial.suggest_categorical("readout", space.readout),
        "readout_l1": trial.suggest_float("readout_l1", space.readout_l1[0], space.readout_l1[1], log=True),
        "laplace_weight": trial.suggest_float("laplace_weight", space.laplace_weight[0], space.laplace_weight[1], log=True),
    }, "model")
    lr = trial.suggest_float("lr", space.lr[0], space.lr[1], log=True)
    batch_size = trial.suggest_categorical("batch_size", space.batch_size)
    return TrialSetup(model=model, lr=lr, batch_size=batch_size)


def default_trial_params(model: ModelConfig, train: TrainConfig) -> dict[str, Any]:
    """Optuna params that reproduce the default configuration (enqueued as the first trial)."""
    params: dict[str, Any] = {
        "layers": model.layers, "first_kernel": model.first_kernel, "batch_norm": model.batch_norm,
        "readout": model.readout, "readout_l1": model.readout_l1, "laplace_weight": model.laplace_weight,
        "lr": train.lr, "batch_size": train.batch_size,
    }
    params.update({f"channels_{i}": c for i, c in enumerate(model.channels)})
    if model.layers > 1:
        params.update(hidden_kernel=model.hidden_kernel, depth_separable=model.depth_separable)
    return params


def objective_value(record: dict, objective: str) -> float:
    """The validation score of one epoch's record (NaN-safe: NaN counts as the worst score)."""
    value = float(record[objective])
    return value if np.isfinite(value) else -1.0


def make_objective(ds: ResponseDataset, cfg: TuneConfig, base_model: ModelConfig, base_train: TrainConfig,
                   device: str, extra: "Optional[TrainingSource]" = None) -> Any:
    """The Optuna objective: a short training (on the scenes and ``extra``'s stimuli), reported per epoch,
    pruned when behind."""
    import optuna

    from meiscope.model.training import train_one

    def objective(trial: optuna.Trial) -> float:
        try:
            setup = suggest_setup(trial, cfg.space, base_model)
            train_cfg = dataclasses.replace(base_train, lr=setup.lr, batch_size=setup.batch_size,
                                            max_epochs=cfg.epochs, patience=cfg.epochs)
            best = [-np.inf]

            def on_epoch(epoch: int, record: dict) -> None:
                value = objective_value(record, cfg.objective)
                best[0] = max(best[0], value)
                trial.report(value, epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at epoch {epoch} with {cfg.objective}={value:.3f}")

            result = train_one(setup.model, train_cfg, ds, seed=cfg.seed + trial.number, device=device,
                               on_epoch=on_epoch, progress=False, extra=extra)
            curve = [objective_value(r, cfg.objective) for r in result.history]
            # shown in optuna-dashboard beside the trial (the full curve is its intermediate values)
            trial.set_user_attr("best_epoch", int(result.best_epoch))
            trial.set_user_attr("epochs", len(curve))
            trial.set_user_attr(f"final_{cfg.objective}", round(curve[-1], 4) if curve else None)
            return best[0]
        except optuna.TrialPruned:
            raise
        except Exception as err:  # any crash (bad architecture, out of memory) fails this trial only
            trial.set_user_attr(FAIL_REASON, f"{type(err).__name__}: {err}"[:500])
            raise

    return objective


def keyed_study(cfg: TuneConfig, base_model: ModelConfig, base_train: TrainConfig, data_key: str) -> TuneConfig:
    """``cfg`` with a study name that changes whenever what the trials compute changes.

    The name in the storage is ``<tune.study_name>-<8 hex digits>``: the suffix hashes the search
    space, the trial settings, the default architecture, the selected data and the training code
    (:func:`meiscope.model.code_digest`). A rerun with the same ones resumes its study; a changed one
    starts a new study in the same storage instead of mixing incomparable trials (a trial scored by
    older code would otherwise keep winning). ``metrics/tune.json`` and the MLflow run name the study.
    """
    import hashlib
    import json

    from meiscope.model import code_digest

    relevant = {"space": as_dict(cfg.space), "epochs": cfg.epochs, "objective": cfg.objective, "seed": cfg.seed,
                "pruner": [cfg.pruner, cfg.pruner_startup_trials, cfg.pruner_warmup_epochs],
                "model": as_dict(base_model), "lr": base_train.lr, "batch_size": base_train.batch_size,
                "batches_per_source": base_train.batches_per_source,
                "source_warmup_epochs": base_train.source_warmup_epochs, "data": data_key, "code": code_digest()}
    key = hashlib.md5(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:8]
    return dataclasses.replace(cfg, study_name=f"{cfg.study_name}-{key}")


def sampler_seed(seed: int, worker: int, n_existing: int) -> int:
    """The sampler seed of one tuning process.

    ``tune.seed`` itself for worker 0 of a study that has no trials yet (a single-worker study is
    reproducible from its seed); otherwise a seed derived from (seed, worker, trials already in the
    study), different for every worker and every resumed run, and still deterministic.
    """
    if worker == 0 and n_existing == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), int(worker), int(n_existing)]).generate_state(1)[0])


def open_study(cfg: TuneConfig, root: Path, storage_url: str | None = None, seed: int | None = None,
               storage: Any = None) -> Any:
    """Create or load the study on the configured storage (journal file by default).

    ``seed``: the sampler's seed (default ``cfg.seed``; see :func:`sampler_seed`). ``storage``: a
    storage object from :func:`open_storage` to open it on, for a caller that needs the storage
    itself (heartbeats, a trial's user attributes); by default one is built here.
    """
    import optuna

    if storage is None:
        storage = open_storage(cfg, root, storage_url)
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=cfg.pruner_startup_trials,
                                          n_warmup_steps=cfg.pruner_warmup_epochs)
              if cfg.pruner == "median" else optuna.pruners.NopPruner())
    sampler = optuna.samplers.TPESampler(seed=cfg.seed if seed is None else seed)
    study = optuna.create_study(study_name=cfg.study_name, storage=storage, direction="maximize",
                                sampler=sampler, pruner=pruner, load_if_exists=True)
    if study.metric_names is None:  # the objective's name, shown by optuna-dashboard
        study.set_metric_names([cfg.objective])
    return study


def open_storage(cfg: TuneConfig, root: Path, storage_url: str | None = None) -> Any:
    """The Optuna storage object of the study: an RDB storage with heartbeats for a URL (``storage_url``
    or ``tune.storage``), else the journal file ``tune.journal_file`` under ``root``.

    Optuna keeps the storage a study was opened on private: whoever needs it builds it here, keeps the
    reference and opens the study on it (:func:`open_study`).
    """
    url = storage_url or cfg.storage
    shared_study.require_shared_storage(url)
    if url:
        import warnings

        import optuna
        import sqlalchemy.exc

        from meiscope.errors import MeiscopeError

        # the first connection creates Optuna's tables: two hosts doing so at once collide in PostgreSQL
        schema = (shared_study.postgres_lock(url, "optuna-schema") if shared_study.is_postgresql(url)
                  else contextlib.nullcontext())
        try:
            with warnings.catch_warnings(), schema:  # heartbeat_interval is marked experimental
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url, heartbeat_interval=shared_study.HEARTBEAT_S, grace_period=shared_study.GRACE_S,
                    heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1))
        except sqlalchemy.exc.OperationalError as err:
            raise MeiscopeError(unreachable_storage(url, err)) from None
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path = Path(root) / cfg.journal_file
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def unreachable_storage(url: str, err: Exception) -> str:
    """One line for a study database that refused the connection: the URL (password hidden) and what to do."""
    from meiscope.pgpass import redact

    detail = (str(getattr(err, "orig", None) or err).strip().splitlines() or ["no detail"])[0]
    if not shared_study.is_postgresql(url):
        hint = "check the URL"
    elif "password" in detail:  # the server is up: the client lacks the password file
        hint = "export PGPASSFILE as `meiscope services status` prints it (the password file of `make services`)"
    else:
        hint = "is the database running? start the team stack with `make services` (meiscope services start)"
    return f"tune: cannot connect to the study's database {redact(url)}: {redact(detail)}; {hint}"


def lock_file(cfg: TuneConfig, root: Path) -> Path:
    """The lock file of a study on this host's storage (beside the journal)."""
    return Path(root) / Path(cfg.journal_file).parent / f"{cfg.study_name}.lock"


def study_lock(cfg: TuneConfig, root: Path, storage_url: str | None) -> Any:
    """The study's lock: PostgreSQL advisory lock or this host's lock file (see :mod:`meiscope.shared_study`)."""
    return shared_study.study_lock(storage_url or cfg.storage, lock_file(cfg, root), cfg.study_name)


def _worker(dataset_path: str, cfg: TuneConfig, base_model: ModelConfig, base_train: TrainConfig,
            device: str, root: str, storage_url: str | None, budget: int, tuner: str,
            progress: bool = True, extras: "Optional[SavedSource]" = None, threads: int | None = None) -> None:
    """One worker of the study: claims and runs trials until the study's budget is met.

    ``tuner`` stamps the trials this invocation of `tune` runs (it logs them to MLflow);
    ``extras``: other stimuli of the selected cells, trained on in every trial (read by the worker);
    ``threads``: torch's CPU threads (the local workers share the cores).
    """
    import optuna
    import torch
    from tqdm import tqdm

    if threads:
        torch.set_num_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    ds = ResponseDataset.load(dataset_path)
    extra = extras.load() if extras is not None else None
    storage = open_storage(cfg, Path(root), storage_url)
    study = open_study(cfg, Path(root), storage_url, storage=storage)
    lock = functools.partial(study_lock, cfg, Path(root), storage_url)
    with lock():
        number, finished = shared_study.join_study(study)
    study.sampler = optuna.samplers.TPESampler(seed=sampler_seed(cfg.seed, number, finished))
    objective = make_objective(ds, cfg, base_model, base_train, device, extra)
    bar = tqdm(total=budget, initial=min(finished, budget), desc=f"tune worker {number}", unit="trial",
               position=number % 8, leave=False, disable=not progress)
    for _ in range(budget):  # at most the budget: a worker whose every trial crashes still stops
        with lock():
            trial = shared_study.claim_trial(study, budget)
            if trial is not None:
                trial.set_user_attr(shared_study.TUNER, tuner)
        if trial is None:
            break
        shared_study.run_claimed_trial(study, trial, objective, storage)
        bar.n = min(budget, shared_study.count_finished(study))
        bar.refresh()
    bar.close()


def run_study(dataset_path: Path, cfg: TuneConfig, base_model: ModelConfig, base_train: TrainConfig,
              device: str, root: Path, storage_url: str | None = None, workers: int = 1,
              n_trials: int | None = None, progress: bool = False,
              extras: "Optional[SavedSource]" = None) -> tuple[Any, list[int]]:
    """Run the study up to its budget with ``workers`` processes. Returns the study and the
    numbers of the trials this call ran.

    ``extras``: the selected cells' other stimuli as saved for the workers (each reads them back
    with the source's own loader, whatever the recording), or None to train on the scenes alone.

    On a PostgreSQL storage, `tune` processes on other hosts may work on the same study at the
    same time: the budget is claimed trial by trial under the study lock
    (:mod:`meiscope.shared_study`), so all of them together run it exactly. A local journal
    serves one invocation (and its workers): trials left RUNNING in it by an interrupted earlier
    run are marked failed and retried once; on an RDB storage missing heartbeats do that.
    """
    import uuid

    budget = n_trials or cfg.n_trials
    url = storage_url or cfg.storage
    storage = open_storage(cfg, root, url)
    study = open_study(cfg, root, url, storage=storage)
    with study_lock(cfg, root, url):
        if not url:
            _retry_interrupted(study, storage)
        if not study.trials:
            study.enqueue_trial(default_trial_params(base_model, base_train))
    tuner = uuid.uuid4().hex
    args = (str(dataset_path), cfg, base_model, base_train, device, str(root), url, budget, tuner, progress, extras)
    if workers == 1:
        _worker(*args)
    else:
        ctx = multiprocessing.get_context("spawn")
        threads = max(1, len(os.sched_getaffinity(0)) // workers)  # oversubscribed cores slow every worker down
        procs = [ctx.Process(target=_worker, args=(*args, threads)) for _ in range(workers)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        bad = [p.exitcode for p in procs if p.exitcode]
        if bad:
            log.warning("%d tuning worker(s) exited with codes %s", len(bad), bad)
    study = open_study(cfg, root, url)
    mine = sorted(t.number for t in study.trials if t.user_attrs.get(shared_study.TUNER) == tuner)
    return study, mine


def _retry_interrupted(study: Any, storage: Any) -> None:
    """Mark trials left RUNNING by a killed run as failed; enqueue each one's configuration once more.

    ``storage``: the storage object ``study`` was opened on (:func:`open_storage`).
    """
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        # the reason first: a finished trial's attributes can no longer be set
        storage.set_trial_user_attr(shared_study.storage_trial_id(storage, study, t.number), FAIL_REASON,
                                    "interrupted (left running by an earlier run)")
        study.tell(t.number, state=TrialState.FAIL)
        if RETRY_OF not in t.user_attrs and t.params:  # a retry that is interrupted again is not retried
            study.enqueue_trial(t.params, user_attrs={RETRY_OF: t.number})


def best_setup(study: Any, base_model: ModelConfig, space: SearchSpace) -> dict[str, Any]:
    """The winning trial as the file `train` reads: ``{model: {...}, train: {lr, batch_size}}``."""
    import optuna

    fixed = optuna.trial.FixedTrial(study.best_params)
    setup = suggest_setup(fixed, space, base_model)
    return {"model": as_dict(setup.model), "train": {"lr": setup.lr, "batch_size": setup.batch_size},
            "trial": study.best_trial.number, "value": study.best_value, "study": study.study_name}


def summarise(study: Any, cfg: TuneConfig) -> dict[str, Any]:
    """Counts, the best value and params, and the default configuration's value (trial 0)."""
    from optuna.trial import TrialState

    states = [t.state for t in study.trials]
    summary: dict[str, Any] = {
        "n_trials": len(states),
        "n_complete": states.count(TrialState.COMPLETE),
        "n_pruned": states.count(TrialState.PRUNED),
        "n_failed": states.count(TrialState.FAIL),
    }
    if summary["n_complete"]:  # the winning configuration itself is in results/tune/best_model.yaml
        summary.update(best_value=study.best_value, best_trial=study.best_trial.number)
    first = study.trials[0] if study.trials else None
    if first is not None and first.state == TrialState.COMPLETE:
        summary["default_value"] = first.value
    return summary


# a pruned trial is stopped early: MLflow's KILLED (not a green "Finished"); a crashed one FAILED
RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED", "RUNNING": "RUNNING"}


def _ms(moment: Any) -> int | None:
    return int(moment.timestamp() * 1000) if moment is not None else None


def log_trials(mlflow: Any, study: Any, numbers: list[int], parent_run_id: str, cfg: TuneConfig) -> None:
    """One nested MLflow child run per trial, with the trial's own start and end times and its state.

    Logged after the workers finish (see the module docstring), so each run is created with the
    trial's recorded times rather than the moment of logging.
    """
    from mlflow.entities import Metric, Param, RunTag

    client = mlflow.MlflowClient()
    experiment_id = mlflow.get_run(parent_run_id).info.experiment_id
    by_number = {t.number: t for t in study.trials}
    for number in numbers:
        t = by_number[number]
        tags = {"stage": "tune-trial", "trial_number": str(number), "state": t.state.name,
                "mlflow.parentRunId": parent_run_id, "optuna_study": study.study_name}
        if FAIL_REASON in t.user_attrs:
            tags[FAIL_REASON] = str(t.user_attrs[FAIL_REASON])
        run = client.create_run(experiment_id, start_time=_ms(t.datetime_start), tags=tags,
                                run_name=f"trial-{number:03d} {t.state.name.lower()}")
        end = _ms(t.datetime_complete) or _ms(t.datetime_start)
        metrics = [Metric(cfg.objective, float(v), end or 0, int(step)) for step, v in sorted(t.intermediate_values.items())]
        if t.value is not None:
            metrics.append(Metric(f"final_{cfg.objective}", float(t.value), end or 0, 0))
        client.log_batch(run.info.run_id, metrics=metrics, params=[Param(k, str(v)) for k, v in t.params.items()],
                         tags=[RunTag(k, str(v)) for k, v in t.user_attrs.items() if k != FAIL_REASON])
        client.set_terminated(run.info.run_id, status=RUN_STATUS.get(t.state.name, "FINISHED"), end_time=end)


def write_history(study: Any, path: Path) -> None:
    """``history.csv`` for `dvc plots`: trial number, state, value and the best value so far."""
    import pandas as pd

    from meiscope.atomic import atomic_path

    rows, best = [], -np.inf
    for t in sorted(study.trials, key=lambda t: t.number):
        value = t.value if t.value is not None else (max(t.intermediate_values.values())
                                                     if t.intermediate_values else None)
        if t.state.name == "COMPLETE" and value is not None:
            best = max(best, value)
        rows.append({"trial": t.number, "state": t.state.name.lower(), "value": value,
                     "best_so_far": best if np.isfinite(best) else None})
    with atomic_path(path, suffix=".csv") as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False, float_format="%.6g")


def plot_study(study: Any, out_dir: Path) -> list[Path]:
    """Optimisation history and parameter importances (Optuna's matplotlib backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import optuna.visualization.matplotlib as ovm

    from meiscope.atomic import save_figure

    written = []
    plots = {"optimization_history.png": ovm.plot_optimization_history,
             "param_importances.png": ovm.plot_param_importances}
    for name, plot in plots.items():
        try:
            ax = plot(study)
        except Exception as err:  # importances need >= 2 complete trials with varying params
            log.warning("skipped %s: %s", name, err)
            continue
        fig = ax.figure if hasattr(ax, "figure") else np.ravel(ax)[0].figure
        fig.set_size_inches(7, 4.5)
        save_figure(fig, out_dir / name)
        written.append(out_dir / name)
    return written
