"""MLflow helper: one place that sets the store and starts runs with provenance tags.

Every stage calls :func:`start_run`; it imports mlflow lazily (``import mlflow`` costs ~1.5 s).
The store is a sqlite file at the repository root by default (MLflow 3.17 refuses a bare
``./mlruns`` file store); relative sqlite paths are resolved against the repository root so
that runs started from any folder land in one store.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import subprocess
from pathlib import Path
from typing import Any, Iterator

from meiscope.config import Params, TrackingConfig, flat_dict

log = logging.getLogger(__name__)

# MLFLOW_TRACKING_URI as it was when this process started. mlflow.set_tracking_uri() writes the
# variable too, so reading it later would give the store of whichever project logged last.
USER_TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI")


def tracking_uri(cfg: TrackingConfig, root: Path) -> str:
    """The store URI: ``MLFLOW_TRACKING_URI`` when the user set it (e.g. a team's tracking server,
    see `make services`), else ``tracking.uri``, with a relative sqlite path made absolute under ``root``."""
    uri = USER_TRACKING_URI or cfg.uri
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
        return prefix + str((root / uri[len(prefix):]).resolve())
    return uri


def is_server(uri: str) -> bool:
    """True for a tracking server (``http(s)://``), which stores artifacts itself."""
    return uri.startswith(("http://", "https://"))


def run_exists(run_id: str) -> bool:
    """Whether the current tracking store holds run ``run_id`` in the experiment this process logs to.

    With no active run, any experiment of the store counts. Within one, a run of another experiment
    does not: in a copied checkout the runs it inherited were set aside in an experiment of their own
    (:func:`own_experiment`), and the runs of this checkout should not nest under them.
    """
    import mlflow

    try:
        run = mlflow.MlflowClient().get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return False
    active = mlflow.active_run()
    return active is None or run.info.experiment_id == active.info.experiment_id


def git_commit(root: Path) -> str:
    """The current git commit (``unknown`` outside a repository)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def git_dirty(root: Path) -> str:
    """``true`` when tracked files differ from the commit (the code that ran is not the commit), else ``false``."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return "unknown" if out.returncode else ("true" if out.stdout.strip() else "false")


def provenance_tags(stage: str, root: Path) -> dict[str, str]:
    """Tags every run carries: the stage, MLflow's standard git-commit tag, a dirty-tree flag, the
    DVC hash of the data and, under ``dvc exp run``, the DVC experiment's name."""
    commit = git_commit(root)
    tags = {"stage": stage, "git_commit": commit, "mlflow.source.git.commit": commit, "git_dirty": git_dirty(root),
            "data_dvc_md5": dvc_hash(root / "data.dvc")}
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc_experiment"] = os.environ["DVC_EXP_NAME"]
    return tags


def run_name(stage: str, tags: dict[str, str]) -> str:
    """``train 2026-11-27 23:58 f2d0c90`` (``+dirty`` when the tree differs): two runs of a stage differ."""
    import datetime

    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    commit = tags.get("git_commit", "unknown")[:7] + ("+dirty" if tags.get("git_dirty") == "true" else "")
    return f"{stage} {stamp} {commit}"


def dvc_hash(dvc_file: Path) -> str:
    """The md5 recorded in a ``.dvc`` file (or ``missing``)."""
    import yaml

    if not dvc_file.is_file():
        return "missing"
    outs = (yaml.safe_load(dvc_file.read_text()) or {}).get("outs") or [{}]
    return str(outs[0].get("md5", "unknown"))


def file_hash(path: Path) -> str:
    """md5 of a file's bytes (``missing`` if absent): ties a run to the exact stage input."""
    if not path.is_file():
        return "missing"
    return hashlib.md5(path.read_bytes()).hexdigest()


EXPERIMENT_KIND, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"


def own_experiment(uri: str, name: str, root: Path) -> str:
    """The id of experiment ``name``, whose artifacts live in THIS checkout's ``mlruns/``.

    MLflow fixes an experiment's artifact location, as an absolute path, when it creates it (by
    default ``./mlruns`` of whatever folder the process ran in), and its public API cannot move it
    afterwards. So a copy of the repository, store included, would write its artifacts into the
    original's folder, and a run started elsewhere (a test) into the current folder. The experiment
    is therefore created with this root's ``mlruns/``; when this checkout's own sqlite store holds an
    experiment ``name`` that keeps its artifacts in another local folder (a copied or moved
    checkout), that experiment is renamed, with a warning naming where its artifacts live, and a new
    ``name`` is created here. On a tracking server, or a store shared from outside the checkout, the
    experiment is used as it is.
    """
    import mlflow

    # a tracking server keeps the artifacts of every host in its own store
    location = None if is_server(uri) else (Path(root).resolve() / "mlruns").as_uri()
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None and location is not None and _own_sqlite_file(uri, root) is not None:
        elsewhere = _local_folder(experiment.artifact_location)
        if elsewhere is not None and elsewhere != Path(root).resolve() / "mlruns":
            _set_aside(client, experiment, elsewhere, root)
            experiment = client.get_experiment_by_name(name)  # None, unless a process beside us made it anew
    if experiment is None:  # a model-training experiment, so the UI opens it on its training runs
        try:
            return client.create_experiment(name, artifact_location=location, tags={EXPERIMENT_KIND: MODEL_TRAINING})
        except mlflow.exceptions.MlflowException:  # another host created it a moment ago (shared server)
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if EXPERIMENT_KIND not in experiment.tags:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND, MODEL_TRAINING)
    return experiment.experiment_id


def _set_aside(client: Any, experiment: Any, elsewhere: Path, root: Path) -> None:
    """Rename an experiment whose artifacts live outside ``root``, so that ``root`` gets one of its own.

    Its runs stay readable under the new name (which says where their artifacts are). Two processes of
    one checkout may both try: the second one's rename fails, and finding the name taken by another
    experiment (or by none) is all it needed.
    """
    import mlflow

    aside = f"{experiment.name} (experiment {experiment.experiment_id}, artifacts in {elsewhere})"
    try:
        client.rename_experiment(experiment.experiment_id, aside)
    except mlflow.exceptions.MlflowException:
        current = client.get_experiment_by_name(experiment.name)
        if current is not None and current.experiment_id == experiment.experiment_id:
            raise
        return
    log.warning("MLflow experiment '%s' keeps its artifacts in %s, outside %s (a copied or moved checkout?): "
                "renamed it '%s'; this checkout logs to a new '%s'", experiment.name, elsewhere,
                Path(root).resolve(), aside, experiment.name)


def _local_folder(artifact_location: str | None) -> Path | None:
    """The local folder of an artifact location (``file://`` URI or plain path), else None (remote)."""
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    if not artifact_location:
        return None
    parsed = urlparse(artifact_location)
    if parsed.scheme == "file":
        return Path(url2pathname(parsed.path)).resolve()
    if parsed.scheme == "":  # MLflow makes local locations absolute; a relative one is relative to the cwd
        return Path(artifact_location).resolve()
    return None


def _own_sqlite_file(uri: str, root: Path) -> Path | None:
    """The store's file when it is an sqlite file inside ``root`` (a checkout's own store), else None."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return None
    path = Path(uri[len(prefix):]).resolve()
    return path if Path(root).resolve() in path.parents else None


@contextlib.contextmanager
def start_run(params: Params, stage: str, root: Path, sections: tuple[str, ...] = (),
              tags: dict[str, str] | None = None, nested: bool = False) -> Iterator[Any]:
    """Start an MLflow run for ``stage`` that logs the given params sections and provenance.

    Yields the ``mlflow`` module (or ``None`` when tracking is disabled) so a stage can log
    metrics and artifacts without importing mlflow itself.
    """
    if not params.tracking.enabled:
        yield None
        return
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    import mlflow

    all_tags = {**provenance_tags(stage, root), **(tags or {})}
    launched = os.environ.get("MLFLOW_RUN_ID") and not nested and mlflow.active_run() is None
    if launched:
        # `mlflow run` created the run (in its store and experiment) and passes it down: log into it
        run_context = mlflow.start_run(run_id=os.environ["MLFLOW_RUN_ID"])
    else:
        uri = tracking_uri(params.tracking, root)
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment(experiment_id=own_experiment(uri, params.tracking.experiment, root))
        run_context = mlflow.start_run(run_name=run_name(stage, all_tags), nested=nested, tags=all_tags)
    with run_context as run:
        if launched:
            mlflow.set_tags(all_tags)
        logged: dict[str, Any] = {}
        for name in sections:
            logged.update(flat_dict(getattr(params, name), f"{name}."))
        if logged:
            mlflow.log_params({k: str(v)[:500] for k, v in logged.items()})
        yield mlflow
        del run


def log_training_data(mlflow: Any, ds: Any, path: Path) -> None:
    """The train split as the run's dataset input (MLflow's Datasets tab), with the dataset file's digest."""
    import mlflow.data

    train = ds.image_indices("train")
    dataset = mlflow.data.from_numpy(ds.images[train], targets=ds.image_means()[train],
                                     name=f"experiment-{ds.experiment_id}-train", digest=file_hash(path)[:16])
    mlflow.log_input(dataset, context="training")


def log_ensemble(mlflow: Any, ensemble_dir: Path, registered_name: str) -> Any:
    """The trained ensemble as an MLflow LoggedModel, registered as a new version of ``registered_name``.

    Input ``(N, 1, H, W)`` float32 model-space images, output ``(N, n_neurons)`` (normalised units,
    ``ensemble.json`` maps them to dF/F). Requirements are given explicitly (inferring them imports
    and times the whole environment); loading it needs meiscope installed (the members are its modules).
    """
    import numpy as np
    import torch
    from mlflow.models import infer_signature

    import mlflow.pytorch
    from meiscope.model.ensemble import load_ensemble

    ensemble = load_ensemble(ensemble_dir, device="cpu")
    module = ensemble.as_module().eval()
    example = np.zeros((2, 1, *ensemble.image_shape), dtype=np.float32)
    with torch.no_grad():
        output = module(torch.from_numpy(example)).numpy()
    requirements = [f"torch=={torch.__version__.split('+')[0]}", f"numpy=={np.__version__}"]
    return mlflow.pytorch.log_model(module, name="ensemble", signature=infer_signature(example, output),
                                    pip_requirements=requirements, registered_model_name=registered_name,
                                    await_registration_for=0, serialization_format="pickle")
