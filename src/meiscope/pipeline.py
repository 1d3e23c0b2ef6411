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
from meiscope.config import Params
from meiscope.errors import MeiscopeError
from meiscope.paths import Layout
from meiscope.recordings import Recording, recording_of

log = logging.getLogger(__name__)

SYNTHETIC_STAMP = "synthetic_params.json"
SESSION_RANK_METRICS = "metrics.json"  # in results/sessions/<id>/ranking/


# --------------------------------------------------------------------------------------
# raw data
# --------------------------------------------------------------------------------------
def synthesize(params: Params, root: Path) -> list[int]:
    """Write the synthetic sessions of ``data.recording`` into its synthetic folder, replacing earlier ones.

    Only sessions meiscope wrote (they have a ground truth) are ever replaced or removed; a session
    file of any other origin in that folder stops the command before anything is written.
    """
    recording = recording_of(params)
    folder = Path(root) / params.data.synthetic_folder
    _refuse_foreign_sessions(recording, folder)
    ids = recording.synthesize(params, folder)
    _remove_other_synthetic_sessions(recording, folder, keep=ids)
    write_json(folder / SYNTHETIC_STAMP, recording.synthetic_stamp(params))
    log.info("wrote %d synthetic session(s) to %s: %s", len(ids), folder, ids)
    return ids


def sessions_in_cache(params: Params, cache_dir: Path) -> list[int]:
    """Session ids whose NWB file is in ``cache_dir``, for ``data.recording``'s cache layout."""
    return recording_of(params).find_sessions(cache_dir)


def study_session_id(params: Params, layout: Layout) -> int:
    """The session the later stages study (``extract.experiment_id``, or the smallest id in the cache)."""
    from meiscope.responses import study_session

    return study_session(layout.cache_dir, params.extract, recording_of(params).studied_sessions(layout.cache_dir))


def _refuse_foreign_sessions(recording: Recording, folder: Path) -> None:
    """Stop when the synthetic cache holds an NWB that ``meiscope synthesize`` did not write."""
    from meiscope.truth import is_synthetic

    foreign = [recording.session_file(folder, e) for e in recording.find_sessions(folder)
               if not is_synthetic(folder, e)]
    if foreign:
        raise MeiscopeError(f"{foreign[0]}: not written by `meiscope synthesize` (it has no ground truth); meiscope "
                            f"never deletes files it did not write: move real Allen sessions to data.allen_dir "
                            "(data.neuropixels_dir for Neuropixels)")


def _remove_other_synthetic_sessions(recording: Recording, folder: Path, keep: list[int]) -> None:
    """Synthetic sessions of an earlier config (meiscope's own files) would otherwise be extracted too."""
    from meiscope.truth import is_synthetic

    for experiment_id in recording.find_sessions(folder):
        if experiment_id not in keep and is_synthetic(folder, experiment_id):
            recording.session_file(folder, experiment_id).unlink()
            for stale in (folder / "ground_truth").glob(f"{experiment_id}.*"):
                stale.unlink()


def download(params: Params, root: Path) -> list[int]:
    """Download the Allen sessions that ``params.allen`` (two-photon) or ``params.neuropixels`` select (lazily)."""
    return recording_of(params).download(params, Path(root) / params.data.download_folder)


def ensure_data(params: Params, root: Path) -> None:
    """Make the raw data exist for ``params.data.source``; leave matching synthetic data alone."""
    layout = Layout.from_params(params, root)
    if params.data.source == "allen":
        download(params, root)
        return
    recording = recording_of(params)
    stamp = layout.cache_dir / SYNTHETIC_STAMP
    if stamp.is_file() and json.loads(stamp.read_text()) == json.loads(json.dumps(recording.synthetic_stamp(params))) \
            and recording.find_sessions(layout.cache_dir) == recording.synthetic_ids(params):
        log.info("synthetic data in %s already matches params.yaml", layout.cache_dir)
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
    layout = Layout.from_params(params, root)
    study_id = study_session_id(params, layout)
    return _extract_to(params, root, study_id, layout.dataset(study_id), names_study=True)


def extract_session(params: Params, root: Path, experiment_id: int) -> Path:
    """Build the dataset file of one session of ``sessions.shared`` (``results/sessions/<id>/responses``).

    The DVC stage ``extract-session@<id>``: one per listed session, so adding a session adds a stage
    and reruns nothing that was extracted before. Same extraction (``extract`` params) as the studied session.
    """
    layout = Layout.from_params(params, root)
    _check_shared_session(params, layout, experiment_id)
    return _extract_to(params, root, experiment_id, layout.session_dataset(experiment_id), names_study=False)


def _extract_to(params: Params, root: Path, experiment_id: int, dataset_path: Path, names_study: bool) -> Path:
    """Extract one session into ``dataset_path`` (its folder swapped in whole); ``names_study`` adds study.json."""
    from meiscope import truth
    from meiscope.atomic import atomic_dir
    from meiscope.tracking import start_run

    layout = Layout.from_params(params, root)
    tags = None if names_study else {"session": str(experiment_id)}
    with start_run(params, "extract", root, sections=("data", "extract"), tags=tags) as mlf, \
            atomic_dir(dataset_path.parent) as tmp:
        source = "synthetic" if truth.is_synthetic(layout.cache_dir, experiment_id) else "allen"
        ds = recording_of(params).extract(params, layout.cache_dir, experiment_id, source, tmp / dataset_path.name)
        if names_study:
            write_json(tmp / layout.study_file.name, {"experiment_id": experiment_id})
        summary = {"n_cells": ds.n_neurons, "n_images": ds.n_images, "n_trials": len(ds.trial_image),
                   "n_dropped_nan_cells": int(ds.dropped_cell_ids.size)}
        log.info("experiment %d: %d cells, %d images, %d trials", experiment_id, ds.n_neurons, ds.n_images,
                 len(ds.trial_image))
        if mlf is not None:
            mlf.log_metrics(summary)
    return dataset_path


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
    layout = Layout.from_params(params, root)
    return _rank_into(params, root, load_study_dataset(layout), layout.ranking, layout.metrics_file("ranking"))


def rank_session(params: Params, root: Path, experiment_id: int) -> dict:
    """Rank the cells of one session of ``sessions.shared`` on their own (``results/sessions/<id>/ranking``).

    The DVC stage ``rank-session@<id>``; its metrics go to ``ranking/metrics.json`` in that folder.
    """
    from meiscope.dataset import ResponseDataset

    layout = Layout.from_params(params, root)
    _check_shared_session(params, layout, experiment_id)
    path = layout.session_dataset(experiment_id)
    if not path.is_file():
        raise MeiscopeError(f"{path}: missing (run `meiscope extract --session {experiment_id}` first)")
    out_dir = layout.session_ranking(experiment_id)
    return _rank_into(params, root, ResponseDataset.load(path), out_dir, out_dir / SESSION_RANK_METRICS,
                      tags={"session": str(experiment_id)})


def _rank_into(params: Params, root: Path, ds: Any, out_dir: Path, metrics_path: Path,
               tags: dict[str, str] | None = None) -> dict:
    """Rank ``ds``'s cells into ``out_dir``; score the selection against the truth when synthetic."""
    from meiscope import ranking, truth
    from meiscope.tracking import start_run

    layout = Layout.from_params(params, root)
    population = truth.load_population(layout.cache_dir, ds.experiment_id)
    responsive = truth.responsive_ids(population) if population is not None else None
    allen_metrics = recording_of(params).allen_metrics(layout.cache_dir, ds.experiment_id)
    with start_run(params, "rank", root, sections=("rank",), tags=tags) as mlf:
        metrics = ranking.run_rank(ds, params.rank, out_dir, metrics_path,
                                   allen_metrics=allen_metrics, truth_responsive_ids=responsive)
        if mlf is not None:
            mlf.log_metrics({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))})
            mlf.log_artifacts(str(out_dir), artifact_path="ranking")
    return metrics


# --------------------------------------------------------------------------------------
# sessions: many sessions, one core
# --------------------------------------------------------------------------------------
def sessions(params: Params, root: Path) -> dict:
    """Name the sessions that share the model's core: the studied one and ``sessions.shared``.

    Checks every listed session before any work on it (in the cache, not the studied one) and
    writes ``results/sessions/index.json``. ``train`` depends on the folder ``results/sessions``
    (DVC cannot list the per-session outputs in its deps), and this file makes that folder exist
    when no other session is listed.
    """
    layout = Layout.from_params(params, root)
    study_id = study_session_id(params, layout)
    in_cache = sessions_in_cache(params, layout.cache_dir)
    for experiment_id in params.sessions.shared:
        _check_shared_session(params, layout, experiment_id, study_id)
        if experiment_id not in in_cache:
            raise MeiscopeError(f"sessions.shared lists {experiment_id}, which has no NWB file in {layout.cache_dir} "
                                f"(sessions there: {in_cache})")
    write_json(layout.sessions_index, {"study": study_id, "shared": list(params.sessions.shared)})
    return {"study": study_id, "shared": list(params.sessions.shared), "in_cache": in_cache}


def _check_shared_session(params: Params, layout: Layout, experiment_id: int, study_id: int | None = None) -> None:
    """Refuse a session that ``sessions.shared`` does not list, or that is the studied session."""
    if experiment_id not in params.sessions.shared:
        raise MeiscopeError(f"session {experiment_id} is not in sessions.shared {params.sessions.shared} "
                            "(params.yaml): list it there first")
    if study_id is None:
        study_id = study_session_id(params, layout)
    if experiment_id == study_id:
        raise MeiscopeError(f"sessions.shared lists {experiment_id}, the studied session (extract.experiment_id, "
                            "or the smallest id in the cache): list only the other sessions")


def shared_session_datasets(params: Params, layout: Layout, study_id: int) -> list[Any]:
    """The sessions of ``sessions.shared``, each restricted to the cells its own ranking selected (rank order)."""
    from meiscope.dataset import ResponseDataset
    from meiscope.ranking import RANKING_FILE, load_selected

    datasets = []
    for experiment_id in params.sessions.shared:
        _check_shared_session(params, layout, experiment_id, study_id)
        path, ranking = layout.session_dataset(experiment_id), layout.session_ranking(experiment_id)
        if not path.is_file() or not (ranking / RANKING_FILE).is_file():
            missing = "ranking" if path.is_file() else "dataset"
            raise MeiscopeError(f"session {experiment_id} of sessions.shared has no {missing} yet: run `meiscope "
                                f"extract --session {experiment_id}` and `meiscope rank --session {experiment_id}` "
                                "(or `dvc repro`)")
        datasets.append(ResponseDataset.load(path).select_neurons(load_selected(ranking)))
    return datasets


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

    from meiscope.container.responses import container_path

    layout = Layout.from_params(params, root)
    ds = _selected_dataset(layout)
    extra = recording_of(params).training_extras(layout.dataset(ds.experiment_id), ds.cell_ids)
    device = device or params.train.device
    with start_run(params, "tune", root, sections=("tune", "model", "train")) as mlf:
        tmp_dataset = layout.tune / "selected.npz"
        ds.save(tmp_dataset)
        data_hash = file_hash(tmp_dataset)
        if extra is not None:  # the workers read the container's stimuli from beside the dataset
            extra.save(container_path(tmp_dataset))
            data_hash += file_hash(container_path(tmp_dataset))
        cfg = tuning.keyed_study(params.tune, params.model, params.train, data_hash)
        log.info("tune: study %s in %s", cfg.study_name, storage or cfg.storage or cfg.journal_file)
        if mlf is not None:  # the study's one parent run: this run, unless another process set one
            parent_id = _tune_parent_run(mlf, cfg, root, storage)
        try:  # the workers read the selected neurons from this file
            study, new = tuning.run_study(tmp_dataset, cfg, params.model, params.train, device, root,
                                          storage_url=storage, workers=workers or params.tune.workers,
                                          n_trials=n_trials, progress=True)
        finally:
            tmp_dataset.unlink()
            container_path(tmp_dataset).unlink(missing_ok=True)
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


def _tune_parent_run(mlf: Any, cfg: Any, root: Path, storage: str | None) -> str:
    """The MLflow run the study's trials nest under, on every host (see :mod:`meiscope.shared_study`)."""
    from meiscope import shared_study, tuning
    from meiscope.tracking import run_exists

    own = mlf.active_run().info.run_id
    study = tuning.open_study(cfg, root, storage)
    with tuning.study_lock(cfg, root, storage):
        parent = shared_study.parent_run(study, own, run_exists)
    mlf.set_tags({"optuna_study": cfg.study_name, "optuna_parent_run_id": parent})
    return parent


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
    """Train the ensemble on the selected neurons and evaluate it (and the LN baseline) on test images.

    With ``sessions.shared``, every member's core is trained with those sessions' selected cells too
    (one readout per session); the ensemble written is the studied session's, as without them.
    """
    from meiscope import truth
    from meiscope.config import flat_dict
    from meiscope.tracking import file_hash, start_run
    from meiscope.train import run_train

    layout = Layout.from_params(params, root)
    ds = _selected_dataset(layout)
    others = shared_session_datasets(params, layout, ds.experiment_id)  # their readouts share the core
    extra = recording_of(params).training_extras(layout.dataset(ds.experiment_id), ds.cell_ids)
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
    if others:
        tags["shared_sessions"] = ",".join(str(o.experiment_id) for o in others)
    with start_run(params, "train", root, sections=("train",), tags=tags) as mlf:
        if mlf is not None:
            mlf.log_params({k: str(v) for k, v in flat_dict(model_cfg, "model.").items()})
            mlf.log_params({"effective.lr": train_cfg.lr, "effective.batch_size": train_cfg.batch_size})
        metrics = run_train(ds, model_cfg, train_cfg, layout.ensemble, layout.train, layout.metrics_file("train"),
                            device=device or train_cfg.device, resume=resume, truth=truth_fn, log=mlf,
                            fresh_images=fresh, kinds=kinds, other_sessions=others, extra=extra)
        if mlf is not None:
            from meiscope.tracking import log_ensemble, log_training_data

            log_training_data(mlf, ds, layout.dataset(ds.experiment_id))
            log_ensemble(mlf, layout.ensemble, registered_name=f"{params.tracking.experiment}-ensemble")
    return metrics
