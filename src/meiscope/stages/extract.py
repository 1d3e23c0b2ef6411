"""Stage ``extract`` (and ``extract-session@<id>``): per-trial responses and model-space images of one session.

The studied session goes to ``results/responses`` (with ``study.json`` naming it); a session of
``sessions.shared`` to ``results/sessions/<id>/responses``. Outputs are written beside the previous
ones and swapped in only when complete, so a corrupt or swapped NWB never costs the last good extract.
"""

from __future__ import annotations

import logging
from pathlib import Path

from meiscope.atomic import write_json
from meiscope.config import Params
from meiscope.paths import Layout
from meiscope.recordings import recording_of
from meiscope.study import check_shared_session, study_session_id

log = logging.getLogger(__name__)


def run(params: Params, root: Path, session: int | None = None) -> Path:
    """Extract the studied session (or, with ``session``, that session of ``sessions.shared``); the dataset file."""
    layout = Layout.from_params(params, root)
    if session is not None:
        check_shared_session(params, layout, session)
        return _extract_to(params, layout, session, layout.session_dataset(session), names_study=False)
    study_id = study_session_id(params, layout)
    return _extract_to(params, layout, study_id, layout.dataset(study_id), names_study=True)


def _extract_to(params: Params, layout: Layout, experiment_id: int, dataset_path: Path, names_study: bool) -> Path:
    """Extract one session into ``dataset_path`` (its folder swapped in whole); ``names_study`` adds study.json."""
    from meiscope import truth
    from meiscope.atomic import atomic_dir
    from meiscope.tracking import start_run

    tags = None if names_study else {"session": str(experiment_id)}
    with start_run(params, "extract", layout.root, sections=("data", "extract"), tags=tags) as mlf, \
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
