"""Stage ``sessions``: name the sessions that share the model's core (the studied one and ``sessions.shared``).

``train`` depends on the folder ``results/sessions`` (DVC cannot list the per-session outputs in its
deps); the index written here makes that folder exist when no other session is listed.
"""

from __future__ import annotations

from pathlib import Path

from meiscope.atomic import write_json
from meiscope.config import Params
from meiscope.errors import MeiscopeError
from meiscope.paths import Layout
from meiscope.study import check_shared_session, sessions_in_cache, study_session_id


def run(params: Params, root: Path) -> dict:
    """Check every listed session before any work on it and write ``results/sessions/index.json``."""
    layout = Layout.from_params(params, root)
    study_id = study_session_id(params, layout)
    in_cache = sessions_in_cache(params, layout)
    for experiment_id in params.sessions.shared:
        check_shared_session(params, layout, experiment_id, study_id)
        if experiment_id not in in_cache:
            raise MeiscopeError(f"sessions.shared lists {experiment_id}, which has no NWB file in {layout.cache_dir} "
                                f"(sessions there: {in_cache})")
    write_json(layout.sessions_index, {"study": study_id, "shared": list(params.sessions.shared)})
    return {"study": study_id, "shared": list(params.sessions.shared), "in_cache": in_cache}
