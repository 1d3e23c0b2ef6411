"""MLflow helper: one place that sets the store and starts runs with provenance tags.

Every stage calls :func:`start_run`; it imports mlflow lazily (``import mlflow`` costs ~1.5 s).
The store is a sqlite file at the repository root by default (MLflow 3.17 refuses a bare
``./mlruns`` file store); relative sqlite paths are resolved against the repository root so
that runs started from any folder land in one store.
"""

from __future__ import annotations

import contextlib
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
    return absolute_store(USER_TRACKING_URI or cfg.uri, root)


def absolute_store(uri: str, root: Path) -> str:
    """``uri`` with a relative sqlite path made absolute under ``root`` (other URIs as they are)."""
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


# Tracked files the pipeline writes besides the outputs dvc.yaml declares: DVC's lock, the ``.dvc`` files
# `meiscope data` rewrites, and params.yaml, which `dvc exp run -S` edits (its values are the runs' params).
PIPELINE_WRITTEN = ("dvc.lock", "*.dvc", "params.yaml")


def git_dirty(root: Path) -> str:
    """``true`` when the code differs from the commit, ``false`` when only what the pipeline writes does.

    A stage runs after others have rewritten tracked files (``dvc.lock``, ``metrics/*.json``): those do
    not make the code that ran differ from the commit. So files that :func:`pipeline_written` matches are
    left out; any other tracked file that differs (source, docs, ``dvc.yaml`` itself) makes the tree
    dirty. ``unknown`` outside git or without a commit.
    """
    changed = _git_lines(root, "diff", "--name-only", "-z", "HEAD")
    top = _git_lines(root, "rev-parse", "--show-toplevel")
    if changed is None or not top:
        return "unknown"
    top_dir = Path(top[0].strip()).resolve()
    try:
        prefix = Path(root).resolve().relative_to(top_dir).as_posix() + "/"
    except ValueError:  # git found the repository through a link: paths cannot be matched
        return "unknown"
    patterns = [_join("" if prefix == "./" else prefix, p) for p in pipeline_written(root)]
    if prefix != "./":  # a project inside another (a replicate): the outer pipeline's outputs are not code either
        patterns += pipeline_written(top_dir)
    return "true" if any(not _matches(path, patterns) for path in changed) else "false"


def pipeline_written(root: Path) -> list[str]:
    """Path patterns (relative to ``root``; ``*`` for ``${item}``) of the tracked files the pipeline writes.

    Read from ``root``'s ``dvc.yaml``, which ``meiscope dvcfile`` writes from the stage table: every
    output, every folder holding a metrics file (``metrics/``: the replicate summaries live there too)
    and every plot, plus :data:`PIPELINE_WRITTEN`. Reading the generated file, not the table, keeps this
    module free of the stage modules (their code would become every stage's DVC dependency).
    """
    import yaml

    patterns = list(PIPELINE_WRITTEN)
    try:
        spec = yaml.safe_load((Path(root) / "dvc.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return patterns
    for entry in (spec.get("stages") or {}).values():
        entry = entry.get("do", entry) if isinstance(entry, dict) else {}
        for out in (entry.get("outs") or []) + (entry.get("metrics") or []):
            path, options = (out, {}) if isinstance(out, str) else next(iter(out.items()))
            is_metric = out in (entry.get("metrics") or []) or (options or {}).get("cache") is False
            patterns.append(path.rsplit("/", 1)[0] if is_metric and "/" in path else path)
    patterns += [p if isinstance(p, str) else next(iter(p)) for p in spec.get("plots") or []]
    return [p.replace("${item}", "*") for p in dict.fromkeys(patterns)]


def _matches(path: str, patterns: list[str]) -> bool:
    """Whether ``path`` is one of ``patterns``, lies under one, or matches one (``fnmatch``)."""
    from fnmatch import fnmatchcase

    name = path.rsplit("/", 1)[-1]
    return any(path == p or path.startswith(p + "/") or fnmatchcase(path, p) or fnmatchcase(path, p + "/*")
               or (p.startswith("*") and fnmatchcase(name, p)) for p in patterns)  # "*.dvc": in any folder


def _join(prefix: str, pattern: str) -> str:
    """``pattern`` relative to the repository's top level (``prefix``: where ``root`` lies in it)."""
    return pattern if pattern.startswith("*") else prefix + pattern


def _git_lines(root: Path, *args: str) -> list[str] | None:
    """The output of ``git <args>`` in ``root`` split into entries (NUL with ``-z``), None when it fails."""
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode:
        return None
    return [p for p in out.stdout.split("\0" if "-z" in args else "\n") if p.strip()]


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
    from meiscope.digests import file_digest

    return file_digest(path)


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
    own_file = _own_sqlite_file(uri, root)
    store_is_new = own_file is not None and not own_file.exists()  # meiscope creates this store now
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None and location is not None and _own_sqlite_file(uri, root) is not None:
        elsewhere = _local_folder(experiment.artifact_location)
        if elsewhere is not None and elsewhere != Path(root).resolve() / "mlruns":
            _set_aside(client, experiment, elsewhere, root)
            experiment = client.get_experiment_by_name(name)  # None, unless a process beside us made it anew
    if experiment is None:  # a model-training experiment, so the UI opens it on its training runs
        try:
            created = client.create_experiment(name, artifact_location=location,
                                               tags={EXPERIMENT_KIND: MODEL_TRAINING})
            if store_is_new:
                _hide_default_experiment(client)
            return created
        except mlflow.exceptions.MlflowException:  # another host created it a moment ago (shared server)
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if EXPERIMENT_KIND not in experiment.tags:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND, MODEL_TRAINING)
    return experiment.experiment_id


def _hide_default_experiment(client: Any) -> None:
    """Delete the empty ``Default`` experiment (id 0) that MLflow puts in every new store, so that the UI
    lists only meiscope's. Only for a store meiscope has just created: nobody logged to it yet. The
    deletion is MLflow's soft one (``mlflow experiments restore --experiment-id 0`` brings it back)."""
    import mlflow

    try:
        if not client.search_runs(["0"], max_results=1, run_view_type=3):  # 3: ViewType.ALL
            client.delete_experiment("0")
    except mlflow.exceptions.MlflowException as err:  # not fatal: the UI then lists an empty Default
        log.info("kept MLflow's Default experiment: %s", err)


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
            from meiscope.pgpass import redact  # a storage URL in params.yaml may carry a password

            mlflow.log_params({k: redact(str(v))[:500] for k, v in logged.items()})
        yield mlflow
        del run


def log_training_data(mlflow: Any, ds: Any, path: Path) -> None:
    """The train split as the run's dataset input (MLflow's Datasets tab), with the dataset file's digest."""
    import mlflow.data

    train = ds.image_indices("train")
    dataset = mlflow.data.from_numpy(ds.images[train], targets=ds.image_means()[train],
                                     name=f"experiment-{ds.experiment_id}-train", digest=file_hash(path)[:16])
    mlflow.log_input(dataset, context="training")


def log_ensemble(mlflow: Any, ensemble_dir: Path, registered_name: str,
                 crop: "tuple[float, ...] | list[float] | None" = None) -> Any:
    """The trained ensemble as an MLflow LoggedModel, registered as a new version of ``registered_name``.

    Input ``(N, 1, H, W)`` float32 model-space images, output ``(N, n_neurons)`` in normalised units,
    one column per cell (the signature names them ``cell_<id>``). What a user needs to feed it and read
    it travels with it (:func:`model_card`): in the MLmodel file's metadata, as tags of the model
    version and in its description. ``crop``: ``extract.crop``, which gives the degrees per pixel.
    Requirements are given explicitly (inferring them imports and times the whole environment);
    loading it needs meiscope installed (the members are its modules).
    """
    import numpy as np
    import pandas as pd
    import torch
    from mlflow.models import infer_signature

    import mlflow.pytorch
    from meiscope.model.ensemble import load_ensemble

    ensemble = load_ensemble(ensemble_dir, device="cpu")
    card = model_card(ensemble, crop)
    module = ensemble.as_module().eval()
    example = np.zeros((2, 1, *ensemble.image_shape), dtype=np.float32)
    with torch.no_grad():
        output = pd.DataFrame(module(torch.from_numpy(example)).numpy(), columns=card["output_columns"])
    requirements = [f"torch=={torch.__version__.split('+')[0]}", f"numpy=={np.__version__}"]
    info = mlflow.pytorch.log_model(module, name="ensemble", signature=infer_signature(example, output),
                                    pip_requirements=requirements, registered_model_name=registered_name,
                                    await_registration_for=0, serialization_format="pickle", metadata=card)
    if info.registered_model_version is not None:
        describe_version(mlflow.MlflowClient(), registered_name, str(info.registered_model_version), card)
    return info


def model_card(ensemble: Any, crop: "tuple[float, ...] | list[float] | None") -> dict[str, Any]:
    """What the registered ensemble's user needs: cell ids in output order, the pixel normalisation, the
    image geometry (and, given ``crop``, degrees per pixel) and the map from its output to dF/F."""
    height, width = (int(v) for v in ensemble.image_shape)
    card: dict[str, Any] = {
        "cell_ids": [int(c) for c in ensemble.cell_ids],
        "output_columns": [f"cell_{int(c)}" for c in ensemble.cell_ids],
        "image_height": height, "image_width": width,
        "pixel_mean": float(ensemble.pixel_mean), "pixel_std": float(ensemble.pixel_std),
        "input": "(N, 1, image_height, image_width) float32 model-space images: (screen pixels 0-255 - pixel_mean)"
                 " / pixel_std",
        "output": "(N, n_cells) normalised units, one column per cell id; dF/F = output * response_scale + "
                  "response_offset (per cell)",
        "response_scale": [float(v) for v in ensemble.response_scale],
        "response_offset": [float(v) for v in ensemble.response_offset],
        "seeds": [int(s) for s in ensemble.seeds],
    }
    if crop is not None:
        from meiscope.visual_field import VisualField

        deg_h, deg_w = VisualField.from_crop(crop, (height, width)).pixel_size_deg()
        card["degrees_per_pixel"] = [round(float(deg_h), 6), round(float(deg_w), 6)]
    return card


def describe_version(client: Any, name: str, version: str, card: dict[str, Any]) -> None:
    """The model version's description and tags from ``card`` (searchable and shown in the registry UI)."""
    geometry = f"{card['image_height']}x{card['image_width']} px"
    if "degrees_per_pixel" in card:
        geometry += " at {:.3g} x {:.3g} deg/px".format(*card["degrees_per_pixel"])
    description = (f"meiscope CNN ensemble ({len(card['seeds'])} members) predicting {len(card['cell_ids'])} "
                   f"cells. Input: {card['input']}, pixel_mean {card['pixel_mean']:.6g}, pixel_std "
                   f"{card['pixel_std']:.6g}, {geometry}. Output: {card['output']}. Cell ids, scales and "
                   "offsets: the MLmodel metadata (mlflow.models.get_model_info(uri).metadata).")
    client.update_model_version(name, version, description=description)
    tags = {"cell_ids": ",".join(str(c) for c in card["cell_ids"]), "pixel_mean": f"{card['pixel_mean']:.8g}",
            "pixel_std": f"{card['pixel_std']:.8g}", "image_height": str(card["image_height"]),
            "image_width": str(card["image_width"]), "output_units": "normalised (see description)"}
    if "degrees_per_pixel" in card:
        tags["degrees_per_pixel"] = ",".join(f"{v:.6g}" for v in card["degrees_per_pixel"])
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value[:5000])


def load_registered_model(model_uri: str, tracking_uri: str | None = None) -> Any:
    """Load a registered ensemble (``models:/meiscope-ensemble/<version>``) without writing into its store.

    MLflow writes a ``registered_model_meta`` file into the folder it loads a model from, and for a
    local artifact store that folder is the model's own artifacts: in a copied checkout, the
    original's ``mlruns/``. Loading through a temporary folder keeps every store as it was.
    """
    import tempfile

    import mlflow
    import mlflow.pytorch

    if tracking_uri is not None:
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
    with tempfile.TemporaryDirectory(prefix="meiscope-model-") as folder:
        return mlflow.pytorch.load_model(model_uri, dst_path=folder)


# The MLflow UI's runs table of an experiment. MLflow 3.17's UI picks its GenAI or model-training view
# from the `workflowType` URL parameter (else from the browser's last choice), not from the experiment's
# tags, and drops every other parameter when it redirects a bare experiment link to a tab: so the link
# names the runs tab and the view itself. `searchFilter` is the runs table's filter box.
UI_RUNS_LINK = "http://{host}:{port}/#/experiments/{experiment_id}/runs?{query}"


def ui_link(experiment_id: str, port: int = 5000, stage: str | None = "train", host: str = "127.0.0.1") -> str:
    """The link that opens ``experiment_id``'s runs (of ``stage``; every run with None) in the MLflow UI."""
    from urllib.parse import quote, urlencode

    query = {"workflowType": "machine_learning"}
    if stage:
        query["searchFilter"] = f'tags.stage = "{stage}"'
    return UI_RUNS_LINK.format(host=host, port=int(port), experiment_id=experiment_id,
                               query=urlencode(query, quote_via=quote))


def main(argv: "list[str] | None" = None) -> int:
    """``python -m meiscope.tracking [--store URI] [--port N]``: print the MLflow UI links of this checkout's
    experiment (``make mlflow-ui``), creating the experiment in the store if needed so that the id exists."""
    import argparse

    from meiscope.config import load_params
    from meiscope.errors import MeiscopeError

    parser = argparse.ArgumentParser(prog="python -m meiscope.tracking", description=main.__doc__)
    parser.add_argument("--store", help="the store the UI serves (default: params.yaml's tracking.uri)")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    root = Path.cwd()
    try:
        cfg = load_params(args.params).tracking
    except MeiscopeError as err:
        print(f"error: {err}")
        return 1
    store = absolute_store(args.store or cfg.uri, root)  # the store the UI serves, whatever the environment says
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    experiment_id = own_experiment(store, cfg.experiment, root)
    print(f"MLflow UI, training runs:  {ui_link(experiment_id, args.port)}\n"
          f"every stage's runs:        {ui_link(experiment_id, args.port, stage=None)}\n"
          "(starting the server takes about 15 s; open the links once it says it is listening)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
