"""What the stages share about the study: the studied session, its selected neurons, the sessions that
share its core, and the architecture that ``tune`` chose.

Every function here reads stage outputs under :class:`~meiscope.paths.Layout`; none writes.
"""

from __future__ import annotations

import json
from typing import Any

from meiscope.config import Params
from meiscope.errors import MeiscopeError
from meiscope.paths import Layout
from meiscope.recordings import recording_of


def sessions_in_cache(params: Params, layout: Layout) -> list[int]:
    """Session ids whose NWB file is in the cache of ``data.recording``."""
    return recording_of(params).find_sessions(layout.cache_dir)


def study_session_id(params: Params, layout: Layout) -> int:
    """The session the later stages study (``extract.experiment_id``, or the smallest id in the cache)."""
    from meiscope.responses import study_session

    return study_session(layout.cache_dir, params.extract, recording_of(params).studied_sessions(layout.cache_dir))


def load_study_dataset(layout: Layout) -> Any:
    """The dataset of the session the later stages study (named by ``extract``)."""
    from meiscope.dataset import ResponseDataset

    if not layout.study_file.is_file():
        raise MeiscopeError(f"{layout.study_file}: missing (run `meiscope extract` first)")
    experiment_id = int(json.loads(layout.study_file.read_text())["experiment_id"])
    return ResponseDataset.load(layout.dataset(experiment_id))


def selected_dataset(layout: Layout) -> Any:
    """The studied session restricted to the neurons the rank stage selected (in rank order)."""
    from meiscope.ranking import load_selected

    return load_study_dataset(layout).select_neurons(load_selected(layout.ranking))


def check_shared_session(params: Params, layout: Layout, experiment_id: int, study_id: int | None = None) -> None:
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
        check_shared_session(params, layout, experiment_id, study_id)
        path, ranking = layout.session_dataset(experiment_id), layout.session_ranking(experiment_id)
        if not path.is_file() or not (ranking / RANKING_FILE).is_file():
            missing = "ranking" if path.is_file() else "dataset"
            raise MeiscopeError(f"session {experiment_id} of sessions.shared has no {missing} yet: run `meiscope "
                                f"extract --session {experiment_id}` and `meiscope rank --session {experiment_id}` "
                                "(or `dvc repro`)")
        datasets.append(ResponseDataset.load(path).select_neurons(load_selected(ranking)))
    return datasets


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
