"""Stage ``tune``: the Optuna search over the model architecture; writes the winner for ``train``.

The study lives in Optuna storage (a local journal file, or a PostgreSQL server shared by hosts);
each trial is an MLflow run nested under the study's one parent run.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from meiscope.atomic import write_json
from meiscope.config import Params
from meiscope.errors import MeiscopeError
from meiscope.paths import Layout
from meiscope.recordings import recording_of
from meiscope.study import selected_dataset

log = logging.getLogger(__name__)


def run(params: Params, root: Path, device: str | None = None, workers: int | None = None,
        storage: str | None = None, n_trials: int | None = None) -> dict:
    """Run (or resume) the architecture search on the selected neurons and write ``best_model.yaml``."""
    import optuna

    from meiscope import tuning
    from meiscope.model.source_protocol import SavedSource
    from meiscope.pgpass import redact
    from meiscope.tracking import file_hash, start_run

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # trials show in the progress bar, MLflow, the dashboard
    layout = Layout.from_params(params, root)
    ds = selected_dataset(layout)
    recording = recording_of(params)
    extra = recording.training_extras(layout.dataset(ds.experiment_id), ds.cell_ids)
    device = device or params.train.device
    with start_run(params, "tune", root, sections=("tune", "model", "train")) as mlf:
        tmp_dataset = layout.tune / "selected.npz"
        ds.save(tmp_dataset)
        data_hash = file_hash(tmp_dataset)
        saved = None
        if extra is not None:  # the workers read them back from where the recording keeps them, beside the dataset
            saved = SavedSource.write(extra, recording.training_extras_path(tmp_dataset))
            data_hash += file_hash(saved.path)
        cfg = tuning.keyed_study(params.tune, params.model, params.train, data_hash)
        log.info("tune: study %s in %s", cfg.study_name, redact(storage or cfg.storage or cfg.journal_file))
        if mlf is not None:  # the study's one parent run: this run, unless another process set one
            parent_id = _parent_run(mlf, cfg, root, storage)
        try:  # the workers read the selected neurons from this file
            study, new = tuning.run_study(tmp_dataset, cfg, params.model, params.train, device, root,
                                          storage_url=storage, workers=workers or params.tune.workers,
                                          n_trials=n_trials, progress=True, extras=saved)
        finally:
            tmp_dataset.unlink()
            if saved is not None:
                saved.path.unlink(missing_ok=True)
        summary, figures = _write_outputs(params, layout, study, cfg)
        if mlf is not None:
            tuning.log_trials(mlf, study, new, parent_id, cfg)
            mlf.log_metrics({k: float(v) for k, v in summary.items() if isinstance(v, (int, float))})
            for fig in figures:
                mlf.log_artifact(str(fig), artifact_path="figures")
            mlf.log_artifact(str(layout.tune / "best_model.yaml"))
    return summary


def _write_outputs(params: Params, layout: Layout, study: Any, cfg: Any) -> tuple[dict, list[Path]]:
    """Write the winner (``best_model.yaml``), the study's figures and history and ``metrics/tune.json``;
    return the summary and the figures written."""
    import yaml

    from meiscope import tuning
    from meiscope.atomic import write_text

    summary = tuning.summarise(study, cfg)
    if summary["n_complete"] == 0:
        raise MeiscopeError(f"tune: none of the {summary['n_trials']} trials completed; "
                            "see the fail_reason tags in MLflow or shrink tune.space")
    best = tuning.best_setup(study, params.model, params.tune.space)
    write_text(layout.tune / "best_model.yaml", yaml.safe_dump(best, sort_keys=True))
    figures = tuning.plot_study(study, layout.tune)
    tuning.write_history(study, layout.tune / "history.csv")
    write_json(layout.metrics_file("tune"), summary)
    return summary, figures


def _parent_run(mlf: Any, cfg: Any, root: Path, storage: str | None) -> str:
    """The MLflow run the study's trials nest under, on every host (see :mod:`meiscope.shared_study`)."""
    from meiscope import shared_study, tuning
    from meiscope.tracking import run_exists

    own = mlf.active_run().info.run_id
    study = tuning.open_study(cfg, root, storage)
    with tuning.study_lock(cfg, root, storage):
        parent = shared_study.parent_run(study, own, run_exists)
    mlf.set_tags({"optuna_study": cfg.study_name, "optuna_parent_run_id": parent})
    return parent
