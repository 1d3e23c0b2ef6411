"""Stage ``data``: the raw sessions, synthesized (``data.source: synthetic``) or downloaded (``allen``).

Outside ``dvc repro``: the raw data folder is versioned by ``data.dvc``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from meiscope.atomic import write_json
from meiscope.config import Params
from meiscope.errors import MeiscopeError
from meiscope.paths import Layout
from meiscope.recordings import Recording, recording_of

log = logging.getLogger(__name__)

SYNTHETIC_STAMP = "synthetic_params.json"


def run(params: Params, root: Path) -> None:
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


def download(params: Params, root: Path) -> list[int]:
    """Download the Allen sessions that ``params.allen`` (two-photon) or ``params.neuropixels`` select (lazily)."""
    return recording_of(params).download(params, Path(root) / params.data.download_folder)


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
