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
  deletes the cached file (offline: a 1.7-3.3 GB download lost). So the NWB 2 stack is checked
  before any file is handed to allensdk, and every session file is first read the way allensdk reads
  it (:func:`nwb_problem`: h5py, then pynwb with allensdk's NWB extension, then the integer session
  id allensdk's cache parses); a file that fails is reported in one line, never deleted or modified.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Optional

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


def nwb_problem(path: Path) -> Optional[str]:
    """Why allensdk could not open ``path`` as a Neuropixels session, in a few words, or None.

    Reads the file the way ``EcephysProjectCache.get_session_data`` does inside its re-fetch-or-delete
    wrapper, cheapest first, and never writes to it:

    1. :func:`~meiscope.recordings.downloads.hdf5_problem`: a whole HDF5 file with the top-level
       groups :data:`NWB_GROUPS` and no dataset past its end (a truncated download);
    2. pynwb's ``NWBHDF5IO(..., load_namespaces=True).read()`` with allensdk's ``ndx-aibs-ecephys``
       extension registered (what ``NwbApi.nwbfile`` does): HDF5 that is not NWB fails here;
    3. an integer ``identifier`` (allensdk's cache parses it as the session id), a units table and at
       least one ``<stimulus>_presentations`` interval table (what the extract stage reads).
    """
    from meiscope.recordings.downloads import hdf5_problem, reason

    problem = hdf5_problem(path, NWB_GROUPS)
    if problem is not None:
        return problem
    check_nwb_stack()
    import pynwb

    import allensdk.brain_observatory.ecephys.nwb  # noqa: F401  registers ndx-aibs-ecephys, as allensdk does

    try:
        with warnings.catch_warnings():  # pynwb warns about cached namespace versions of Allen's files
            warnings.simplefilter("ignore")
            with pynwb.NWBHDF5IO(str(path), "r", load_namespaces=True) as io:
                nwbfile = io.read()
                identifier, has_units = str(nwbfile.identifier), nwbfile.units is not None
                intervals = list(nwbfile.intervals or {})
    except Exception as err:  # hdmf raises many kinds of errors on files that are HDF5 but not NWB
        return f"pynwb cannot read it as NWB: {reason(err)}"
    try:
        int(identifier)
    except ValueError:
        return f"its identifier {identifier!r} is not an integer session id (allensdk needs one)"
    if not has_units:
        return "no units table"
    if not any(name.endswith("_presentations") for name in intervals):
        return "no <stimulus>_presentations interval table"
    return None


def check_session_file(path: Path) -> None:
    """A one-line :class:`NeuropixelsError` unless allensdk can open ``path`` (:func:`nwb_problem`).

    Call it before any allensdk call that opens the file: allensdk deletes a cached file it cannot
    read. The file is left exactly as it is.
    """
    if not path.is_file():
        raise NeuropixelsError(f"{path}: no such session file (run `meiscope synthesize` or `meiscope download`)")
    problem = nwb_problem(path)
    if problem is not None:
        raise NeuropixelsError(damaged_session_message(path, problem))


def damaged_session_message(path: Path, problem: str) -> str:
    """The one line for a session file that fails :func:`nwb_problem` (the file is kept)."""
    return (f"{path}: not a readable Neuropixels session NWB ({problem}); meiscope leaves it untouched: "
            "move it away or delete it, then run `meiscope download` (or `meiscope synthesize`) again")


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
