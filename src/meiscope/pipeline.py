"""Glue between the CLI / DVC and the stage functions: read inputs, call, log to MLflow.

Each function here is one DVC stage. The science lives in the stage modules (responses,
ranking, train, tuning, mei, gabor, validation, report); this module only knows where files
are (``paths.Layout``) and what each stage logs.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from meiscope.atomic import write_json
from meiscope.config import Params, as_dict
from meiscope.errors import MeiscopeError
from meiscope.paths import Layout

log = logging.getLogger(__name__)

SYNTHETIC_STAMP = "synthetic_params.json"


# --------------------------------------------------------------------------------------
# raw data
# --------------------------------------------------------------------------------------
def synthesize(params: Params, root: Path) -> list[int]:
    """Write the synthetic sessions into ``data.synthetic_dir``, replacing earlier synthetic sessions.

    Only sessions meiscope wrote (they have a ground truth) are ever replaced or removed; a session
    file of any other origin in that folder stops the command before anything is written.
    """
    from meiscope.synthetic.cortex import synthesize_sessions

    layout = Layout.from_params(params, root)
    folder = layout.synthetic_dir
    _refuse_foreign_sessions(folder)
    ids = synthesize_sessions(params.synthetic, folder)
    _remove_other_synthetic_sessions(folder, keep=ids)
    write_json(folder / SYNTHETIC_STAMP, as_dict(params.synthetic))
    log.info("wrote %d synthetic session(s) to %s: %s", len(ids), folder, ids)
    return ids


def _refuse_foreign_sessions(folder: Path) -> None:
    """Stop when the synthetic cache holds an NWB that ``meiscope synthesize`` did not write."""
    from meiscope.responses import find_sessions, nwb_path
    from meiscope.truth import is_synthetic

    foreign = [nwb_path(folder, e) for e in find_sessions(folder) if not is_synthetic(folder, e)]
    if foreign:
        raise MeiscopeError(f"{foreign[0]}: not written by `meiscope synthesize` (it has no ground truth); meiscope "
                            f"never deletes files it did not write: move real Allen sessions to data.allen_dir")


def _remove_other_synthetic_sessions(folder: Path, keep: list[int]) -> None:
    """Synthetic sessions of an earlier config (meiscope's own files) would otherwise be extracted too."""
    from meiscope.responses import find_sessions, nwb_path
    from meiscope.truth import is_synthetic

    for experiment_id in find_sessions(folder):
        if experiment_id not in keep and is_synthetic(folder, experiment_id):
            nwb_path(folder, experiment_id).unlink()
            for stale in (folder / "ground_truth").glob(f"{experiment_id}.*"):
                stale.unlink()


def download(params: Params, root: Path) -> list[int]:
    """Download the Allen sessions selected by ``params.allen`` into ``data.allen_dir`` (lazily)."""
    from meiscope.allen import download_experiments

    layout = Layout.from_params(params, root)
    return download_experiments(params.allen, layout.allen_dir)


def ensure_data(params: Params, root: Path) -> None:
    """Make the raw data exist for ``params.data.source``; leave matching synthetic data alone."""
    layout = Layout.from_params(params, root)
    if params.data.source == "allen":
        download(params, root)
        return
    stamp = layout.synthetic_dir / SYNTHETIC_STAMP
    expected = [params.synthetic.first_experiment_id + i for i in range(params.synthetic.n_sessions)]
    from meiscope.responses import find_sessions

    if stamp.is_file() and json.loads(stamp.read_text()) == as_dict(params.synthetic) \
            and find_sessions(layout.synthetic_dir) == expected:
        log.info("synthetic data in %s already matches params.yaml", layout.synthetic_dir)
        return
    synthesize(params, root)


# --------------------------------------------------------------------------------------
# extract
# --------------------------------------------------------------------------------------
def extract(params: Params, root: Path) -> Path:
    """Build the dataset file of the studied session and name it for the later stages.

    Only that session is read. The new outputs are written beside the previous ones and swapped in
    only when complete, so a corrupt or swapped NWB never costs the last good extract.
    """
    from meiscope import responses, truth
    from meiscope.atomic import atomic_dir
    from meiscope.tracking import start_run

    layout = Layout.from_params(params, root)
    study_id = responses.study_session(layout.cache_dir, params.extract)
    out_dir = layout.dataset(study_id).parent
    with start_run(params, "extract", root, sections=("data", "extract")) as mlf, atomic_dir(out_dir) as tmp:
        source = "synthetic" if truth.is_synthetic(layout.cache_dir, study_id) else "allen"
        ds = responses.extract_session(layout.cache_dir, study_id, params.extract, source)
        ds.save(tmp / layout.dataset(study_id).name)
        write_json(tmp / layout.study_file.name, {"experiment_id": study_id})
        summary = {"n_cells": ds.n_neurons, "n_images": ds.n_images, "n_trials": len(ds.trial_image),
                   "n_dropped_nan_cells": int(ds.dropped_cell_ids.size)}
        log.info("experiment %d: %d cells, %d images, %d trials", study_id, ds.n_neurons, ds.n_images,
                 len(ds.trial_image))
        if mlf is not None:
            mlf.log_metrics(summary)
    return layout.dataset(study_id)


def load_study_dataset(layout: Layout) -> Any:
    """The dataset of the session the later stages study."""
    from meiscope.dataset import ResponseDataset

    if not layout.study_file.is_file():
        raise MeiscopeError(f"{layout.study_file}: missing (run `meiscope extract` first)")
    experiment_id = int(json.loads(layout.study_file.read_text())["experiment_id"])
    return ResponseDataset.load(layout.dataset(experiment_id))


# --------------------------------------------------------------------------------------
# rank
# --------------------------------------------------------------------------------------
def rank(params: Params, root: Path) -> dict:
    """Rank the studied session's cells; score the selection against the truth when synthetic."""
    from meiscope import ranking, truth
    from meiscope.allen import load_cell_metrics
    from meiscope.tracking import start_run

    layout = Layout.from_params(params, root)
    ds = load_study_dataset(layout)
    population = truth.load_population(layout.cache_dir, ds.experiment_id)
    responsive = truth.responsive_ids(population) if population is not None else None
    allen_metrics = load_cell_metrics(layout.cache_dir, ds.experiment_id)
    with start_run(params, "rank", root, sections=("rank",)) as mlf:
        metrics = ranking.run_rank(ds, params.rank, layout.ranking, layout.metrics_file("ranking"),
                                   allen_metrics=allen_metrics, truth_responsive_ids=responsive)
        if mlf is not None:
            mlf.log_metrics({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))})
            mlf.log_artifacts(str(layout.ranking), artifact_path="ranking")
    return metrics


# --------------------------------------------------------------------------------------
# tune
# --------------------------------------------------------------------------------------
def tune(params: Params, root: Path, device: str | None = None, workers: int | None = None,
         storage: str | None = None, n_trials: int | None = None) -> dict:
    """Run (or resume) the architecture search and write the winner for `train`."""
    from meiscope import tuning
    from meiscope.atomic import write_text
    from meiscope.tracking import file_hash, start_run

    import yaml

    layout = Layout.from_params(params, root)
    ds = _selected_dataset(layout)
    device = device or params.train.device
    with start_run(params, "tune", root, sections=("tune", "model", "train")) as mlf:
        if mlf is not None:  # create the store before any worker could race to migrate it
            parent_id = mlf.active_run().info.run_id
        tmp_dataset = layout.tune / "selected.npz"
        ds.save(tmp_dataset)
        cfg = tuning.keyed_study(params.tune, params.model, params.train, file_hash(tmp_dataset))
        log.info("tune: study %s in %s", cfg.study_name, storage or cfg.storage or cfg.journal_file)
        try:  # the workers read the selected neurons from this file
            study, new = tuning.run_study(tmp_dataset, cfg, params.model, params.train, device, root,
                                          storage_url=storage, workers=workers or params.tune.workers,
                                          n_trials=n_trials, progress=True)
        finally:
            tmp_dataset.unlink()
        summary = tuning.summarise(study, cfg)
        if summary["n_complete"] == 0:
            raise MeiscopeError(f"tune: none of the {summary['n_trials']} trials completed; "
                                "see the fail_reason tags in MLflow or shrink tune.space")
        best = tuning.best_setup(study, params.model, params.tune.space)
        write_text(layout.tune / "best_model.yaml", yaml.safe_dump(best, sort_keys=True))
        figures = tuning.plot_study(study, layout.tune)
        tuning.write_history(study, layout.tune / "history.csv")
        write_json(layout.metrics_file("tune"), summary)
        if mlf is not None:
            tuning.log_trials(mlf, study, new, parent_id, cfg)
            mlf.log_metrics({k: float(v) for k, v in summary.items() if isinstance(v, (int, float))})
            for fig in figures:
                mlf.log_artifact(str(fig), artifact_path="figures")
            mlf.log_artifact(str(layout.tune / "best_model.yaml"))
    return summary


def _selected_dataset(layout: Layout) -> Any:
    """The studied session restricted to the neurons the rank stage selected (in rank order)."""
    from meiscope.ranking import load_selected

    return load_study_dataset(layout).select_neurons(load_selected(layout.ranking))


# --------------------------------------------------------------------------------------
# train
# --------------------------------------------------------------------------------------
def tuned_configs(params: Params, layout: Layout) -> tuple[Any, Any, bool]:
    """The model and train configs, with the tuned architecture applied when its file exists."""
    import dataclasses

    import yaml

    from meiscope.config import replace_model

    path = layout.root / params.train.architecture_file
    if not path.is_file():
        return params.model, params.train, False
    tuned = yaml.safe_load(path.read_text()) or {}
    try:
        model_cfg = replace_model(params.model, tuned.get("model", {}))
        train_cfg = dataclasses.replace(params.train, **tuned.get("train", {}))
    except (TypeError, ValueError) as err:
        raise MeiscopeError(f"{path}: not a valid tuned architecture ({err})") from None
    return model_cfg, train_cfg, True


def train(params: Params, root: Path, device: str | None = None, resume: bool = False) -> dict:
    """Train the ensemble on the selected neurons and evaluate it (and the LN baseline) on test images."""
    from meiscope import truth
    from meiscope.config import flat_dict
    from meiscope.tracking import file_hash, start_run
    from meiscope.train import run_train

    layout = Layout.from_params(params, root)
    ds = _selected_dataset(layout)
    model_cfg, train_cfg, tuned = tuned_configs(params, layout)
    population = truth.load_population(layout.cache_dir, ds.experiment_id)
    truth_fn, fresh, kinds = None, None, None
    if population is not None:
        truth_fn = truth.rates_for_model_images(population, ds.to_pixels, ds.cell_ids)
        kinds = [population.kinds[c] for c in truth.cell_columns(population, ds.cell_ids)]
        fresh = truth.fresh_model_images(layout.cache_dir, ds.experiment_id, train_cfg.fresh_scenes,
                                         train_cfg.fresh_seed, params.extract.crop, ds.images.shape[1:],
                                         ds.pixel_mean, ds.pixel_std, progress=True)
    tags = {"architecture": "tuned" if tuned else "params.yaml",
            "ranking_md5": file_hash(layout.ranking / "ranking.csv"),
            "dataset_md5": file_hash(layout.dataset(ds.experiment_id))}
    with start_run(params, "train", root, sections=("train",), tags=tags) as mlf:
        if mlf is not None:
            mlf.log_params({k: str(v) for k, v in flat_dict(model_cfg, "model.").items()})
            mlf.log_params({"effective.lr": train_cfg.lr, "effective.batch_size": train_cfg.batch_size})
        metrics = run_train(ds, model_cfg, train_cfg, layout.ensemble, layout.train, layout.metrics_file("train"),
                            device=device or train_cfg.device, resume=resume, truth=truth_fn, log=mlf,
                            fresh_images=fresh, kinds=kinds)
        if mlf is not None:
            from meiscope.tracking import log_ensemble, log_training_data

            log_training_data(mlf, ds, layout.dataset(ds.experiment_id))
            log_ensemble(mlf, layout.ensemble, registered_name=f"{params.tracking.experiment}-ensemble")
    return metrics
