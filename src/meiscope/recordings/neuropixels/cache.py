"""allensdk's Visual Coding - Neuropixels cache layout, and opening it safely.

``EcephysProjectCache`` keeps everything under the folder of its ``manifest.json``::

    manifest.json                          written by allensdk (manifest version 0.3.0), no network
    sessions.csv probes.csv channels.csv units.csv   project tables (index column ``id``)
    session_<sid>/session_<sid>.nwb        one session (NWB 2; 1.7-3.3 GB for real sessions)
    natural_scene_templates/natural_scene_<n>.tiff   918 x 1174 uint8 (n = 0..117)
    ground_truth/<sid>.npz, .json          synthetic sessions only (meiscope's own)

Two allensdk traps decide how this module opens the cache (``../shared/docs/allen-neuropixels.md``):

- ``EcephysProjectCache.fixed()`` is broken in 2.16.2 (it reads ``fetch_api.rma_engine`` first),
  so the offline cache is built from ``EcephysProjectFixedApi`` by hand.
- When reading a cached file raises *anything*, allensdk re-fetches it and, if that fails,
  deletes the cached file. So the NWB 2 stack is checked before any file is handed to allensdk,
  and sessions are opened only after :func:`check_session_file`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from meiscope.errors import MeiscopeError

TABLES = ("sessions", "probes", "channels", "units")
MANIFEST_VERSION = "0.3.0"
# hdmf >= 4 (e.g. 6.2) cannot build an NWBFile under pynwb 2.8.x: "Can't instantiate abstract class NWBFile"
HDMF_MAJOR = 3
# Top-level groups every Neuropixels session NWB 2 file has (Allen's and the synthetic ones)
NWB_GROUPS = ("general", "intervals", "units")


class NeuropixelsError(MeiscopeError):
    """A Neuropixels cache, session file or the NWB 2 software stack is unusable."""


def session_nwb(cache_dir: Path, session_id: int) -> Path:
    """Where allensdk's cache keeps the NWB file of ``session_id``."""
    return Path(cache_dir) / f"session_{session_id}" / f"session_{session_id}.nwb"


def table_csv(cache_dir: Path, name: str) -> Path:
    """``sessions.csv``, ``probes.csv``, ``channels.csv`` or ``units.csv`` of the cache."""
    return Path(cache_dir) / f"{name}.csv"


def scene_template_file(cache_dir: Path, index: int) -> Path:
    """allensdk's cached natural-scene template ``index`` (a 918 x 1174 uint8 TIFF)."""
    return Path(cache_dir) / "natural_scene_templates" / f"natural_scene_{index}.tiff"


def find_sessions(cache_dir: Path) -> list[int]:
    """Session ids with an NWB file in the cache, sorted."""
    found = []
    for path in Path(cache_dir).glob("session_*/session_*.nwb"):
        stem = path.stem.removeprefix("session_")
        if stem.isdigit() and path.parent.name == f"session_{stem}":
            found.append(int(stem))
    return sorted(found)


def check_nwb_stack() -> None:
    """Refuse an hdmf/pynwb pair that cannot read NWB 2 (before allensdk deletes files over it)."""
    import hdmf
    import pynwb

    major = int(str(hdmf.__version__).split(".")[0])
    if major != HDMF_MAJOR or not str(pynwb.__version__).startswith("2."):
        raise NeuropixelsError(
            f"hdmf {hdmf.__version__} with pynwb {pynwb.__version__} cannot read Neuropixels NWB files: install the "
            "tested pair (pip install -c requirements.lock 'hdmf>=3.14.5,<4' pynwb==2.8.3, then reinstall pynwb)")


def check_session_file(path: Path) -> None:
    """A one-line :class:`NeuropixelsError` unless ``path`` is a readable HDF5 file."""
    import h5py

    if not path.is_file():
        raise NeuropixelsError(f"{path}: no such session file (run `meiscope synthesize` or `meiscope download`)")
    try:
        with h5py.File(path, "r"):
            pass
    except OSError as err:
        raise NeuropixelsError(f"{path}: not a readable NWB (HDF5) file, corrupt or truncated ({err})") from None


def _refuse_network(*_args: Any, **_kwargs: Any) -> None:
    raise NeuropixelsError("the offline Neuropixels cache cannot download anything")


def open_cache(cache_dir: Path, offline: bool) -> Any:
    """``EcephysProjectCache`` with its manifest at ``cache_dir/manifest.json``.

    Args:
        offline: read only what is cached (``EcephysProjectFixedApi``: every fetch fails), or fetch
            missing files from the Allen warehouse (``from_warehouse``; the constructor itself makes
            no network call).
    """
    check_nwb_stack()
    # allensdk logs one INFO line per cached table it reads (over a hundred per extract)
    logging.getLogger("call_caching").setLevel(logging.WARNING)
    from allensdk.brain_observatory.ecephys.ecephys_project_api import EcephysProjectFixedApi
    from allensdk.brain_observatory.ecephys.ecephys_project_cache import EcephysProjectCache

    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    manifest = cache_dir / "manifest.json"
    from meiscope.recordings.downloads import check_manifest

    check_manifest(manifest)
    try:
        if offline:
            return EcephysProjectCache(fetch_api=EcephysProjectFixedApi(), stream_writer=_refuse_network,
                                       manifest=str(manifest))
        return EcephysProjectCache.from_warehouse(manifest=str(manifest))
    except Exception as err:  # outdated manifest version, unparsable JSON, unwritable folder
        raise NeuropixelsError(f"{manifest}: unusable allensdk manifest ({type(err).__name__}: {err}); "
                               "delete it and run the command again") from None
