"""Stage ``rank`` (and ``rank-session@<id>``): score every cell's reliability, select the most expressive.

The studied session's ranking goes to ``results/ranking`` and ``metrics/ranking.json``; a session of
``sessions.shared`` is ranked on its own into ``results/sessions/<id>/ranking`` (metrics inside it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from meiscope.config import Params
from meiscope.errors import MeiscopeError
from meiscope.paths import Layout
from meiscope.recordings import recording_of
from meiscope.study import check_shared_session, load_study_dataset

SESSION_RANK_METRICS = "metrics.json"  # in results/sessions/<id>/ranking/


def run(params: Params, root: Path, session: int | None = None) -> dict:
    """Rank the studied session's cells (or, with ``session``, that session of ``sessions.shared``)."""
    layout = Layout.from_params(params, root)
    if session is None:
        return _rank_into(params, layout, load_study_dataset(layout), layout.ranking, layout.metrics_file("ranking"))
    from meiscope.dataset import ResponseDataset

    check_shared_session(params, layout, session)
    path = layout.session_dataset(session)
    if not path.is_file():
        raise MeiscopeError(f"{path}: missing (run `meiscope extract --session {session}` first)")
    out_dir = layout.session_ranking(session)
    return _rank_into(params, layout, ResponseDataset.load(path), out_dir, out_dir / SESSION_RANK_METRICS,
                      tags={"session": str(session)})


def _rank_into(params: Params, layout: Layout, ds: Any, out_dir: Path, metrics_path: Path,
               tags: dict[str, str] | None = None) -> dict:
    """Rank ``ds``'s cells into ``out_dir``; score the selection against the truth when synthetic."""
    from meiscope import ranking, truth
    from meiscope.tracking import start_run

    population = truth.load_population(layout.cache_dir, ds.experiment_id)
    responsive = truth.responsive_ids(population) if population is not None else None
    allen_metrics = recording_of(params).allen_metrics(layout.cache_dir, ds.experiment_id)
    with start_run(params, "rank", layout.root, sections=("rank",), tags=tags) as mlf:
        metrics = ranking.run_rank(ds, params.rank, out_dir, metrics_path,
                                   allen_metrics=allen_metrics, truth_responsive_ids=responsive)
        if mlf is not None:
            mlf.log_metrics({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))})
            mlf.log_artifacts(str(out_dir), artifact_path="ranking")
    return metrics
