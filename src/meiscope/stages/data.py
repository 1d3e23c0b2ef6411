"""Stage ``data``: the raw sessions, synthesized (``data.source: synthetic``) or downloaded (``allen``).

Outside ``dvc repro``: the raw data folder is versioned by ``data.dvc``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

from meiscope.atomic import write_json
from meiscope.config import Params
from meiscope.errors import MeiscopeError
from meiscope.paths import Layout
from meiscope.recordings import Recording, recording_of

log = logging.getLogger(__name__)

SYNTHETIC_STAMP = "synthetic_params.json"
MANIFEST = "manifest.json"  # allensdk's cache manifest


def run(params: Params, root: Path) -> None:
    """Make the raw data exist for ``params.data.source``; leave matching synthetic data alone.

    Synthetic data "match" only when the stamp records the same params and every session file and
    ground truth is whole (:func:`check_synthetic_files`); a damaged one is a one-line error.
    """
    layout = Layout.from_params(params, root)
    if params.data.source == "allen":
        download(params, root)
        return
    recording = recording_of(params)
    stamp = read_stamp(layout.cache_dir / SYNTHETIC_STAMP)
    if stamp == _plain(recording.synthetic_stamp(params)) \
            and recording.find_sessions(layout.cache_dir) == recording.synthetic_ids(params):
        check_synthetic_files(recording, layout.cache_dir, recording.synthetic_ids(params))
        log.info("synthetic data in %s already matches params.yaml", layout.cache_dir)
        return
    synthesize(params, root)


def synthesize(params: Params, root: Path) -> list[int]:
    """Write the synthetic sessions of ``data.recording`` into its synthetic folder, replacing earlier ones.

    Only sessions meiscope wrote (they have a ground truth) are ever replaced or removed; a session
    file of any other origin in that folder, or a ``manifest.json`` that is not allensdk's, stops the
    command before anything is written.
    """
    from meiscope.recordings.downloads import check_manifest

    recording = recording_of(params)
    folder = Path(root) / params.data.synthetic_folder
    check_manifest(folder / MANIFEST)
    _refuse_foreign_sessions(recording, folder)
    ids = recording.synthesize(params, folder)
    _remove_other_synthetic_sessions(recording, folder, keep=ids)
    write_json(folder / SYNTHETIC_STAMP, recording.synthetic_stamp(params))
    log.info("wrote %d synthetic session(s) to %s: %s", len(ids), folder, ids)
    return ids


def read_stamp(path: Path) -> Optional[dict]:
    """The stamp ``meiscope synthesize`` wrote, or None if there is none; a damaged one is a one-line error."""
    if not path.is_file():
        return None
    try:
        stamp = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise MeiscopeError(f"{path}: unreadable stamp of `meiscope synthesize` ({type(err).__name__}: "
                            f"{' '.join(str(err).split())}): delete it and rerun `meiscope data`") from None
    if not isinstance(stamp, dict):
        raise MeiscopeError(f"{path}: not a stamp of `meiscope synthesize` (a JSON {type(stamp).__name__}, "
                            "expected an object): delete it and rerun `meiscope data`")
    return stamp


def check_synthetic_files(recording: Recording, folder: Path, ids: list[int]) -> None:
    """Refuse a session file or ground truth of ``ids`` in ``folder`` that is cut short or damaged.

    The checks read structure, not hashes (a record of hashes would change the bytes of ``data/``, which
    ``data.dvc`` pins): an NWB must be a whole HDF5 file (HDF5 keeps the file's length in its superblock)
    with every dataset's bytes inside it; a ground-truth ``.npz`` must pass zip's CRC check and a
    ``.json`` must parse.
    """
    from meiscope.recordings.downloads import damaged, hdf5_problem

    for experiment_id in ids:
        path = recording.session_file(folder, experiment_id)
        problem = hdf5_problem(path, ("general",))
        if problem is not None:
            raise damaged(path, problem)
        for truth in sorted((Path(folder) / "ground_truth").glob(f"{experiment_id}.*")):
            problem = _truth_problem(truth)
            if problem is not None:
                raise damaged(truth, problem)


def _truth_problem(path: Path) -> Optional[str]:
    """Why a ground-truth file does not read back whole, or None."""
    import zipfile

    try:
        if path.suffix == ".npz":
            with zipfile.ZipFile(path) as zf:
                bad = zf.testzip()
            return None if bad is None else f"member {bad} fails its CRC check"
        if path.suffix == ".json":
            json.loads(path.read_text())
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        return f"{type(err).__name__}: {' '.join(str(err).split())}"
    return None


def _plain(value: dict) -> dict:
    """``value`` as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(value))


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
