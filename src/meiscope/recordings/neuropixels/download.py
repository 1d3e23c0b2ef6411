"""`meiscope download` for Neuropixels: real Allen Visual Coding - Neuropixels sessions into allensdk's cache.

Everything lands in allensdk's ``EcephysProjectCache`` layout under ``cache_dir`` (see
:mod:`meiscope.recordings.neuropixels.cache`)::

    manifest.json                                    written by allensdk, no network
    sessions.csv probes.csv channels.csv units.csv   project tables, ~58 MB together (allensdk's lazy cache)
    session_<sid>/session_<sid>.nwb                  one session, 1.7-3.3 GB (streamed by allensdk's engine)
    natural_scene_templates/natural_scene_<n>.tiff   the 118 images, ~1 MB each (918 x 1174 uint8)
    session_<sid>/session_<sid>_analysis_metrics.csv Allen's per-unit analysis metrics (allensdk's own cache file)
    unit_metrics/<sid>.csv                           ours: every unit of the session with Allen's quality metrics

allensdk's engine gives up on any download that takes longer than its timeout (20 minutes in
total, too short for 3 GB on a slow line); it is raised to 6 hours here.

A second run with everything cached makes no network call at all: the tables are read through
allensdk's lazy cache, and an NWB or template file that reads cleanly is kept as it is.

Session files are never opened as sessions here (that takes minutes on real files); each is read the
way allensdk reads it (:func:`~meiscope.recordings.neuropixels.cache.nwb_problem`: h5py, then pynwb,
then the integer session id) before allensdk can touch it. This sidesteps an allensdk trap: when
reading a cached file raises, allensdk fetches it again and, if that fails, deletes it.

Guarding against half-written files: allensdk streams a file straight onto its final path and
deletes it again on ``Exception`` only, so Ctrl-C (``KeyboardInterrupt``) or a kill would leave a
truncated file behind. NWB files and scene templates are therefore streamed into a hidden temporary
file beside the final path and renamed only once they read cleanly (a leftover temporary file of a
killed run is removed by the next one). A cached session NWB that does not read cleanly is reported
in one line and left as it is (meiscope never deletes a session file: it may be a 3 GB download, or
someone's copy); a cached scene template that does not read is fetched again (1 MB). The four tables are written by allensdk in place after the
whole table has arrived; a table file created by a failed or interrupted call is removed again.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional

import pandas as pd
from tqdm import tqdm

from meiscope.atomic import atomic_path
from meiscope.recordings.downloads import (API_HOST, OFFLINE_HINT, DownloadError, GrowthBar, SelectionError,
                                           read_metrics_csv, reason, remove)
from meiscope.recordings.neuropixels.settings import NeuropixelsConfig
from meiscope.recordings.neuropixels.cache import (TABLES, damaged_session_message, nwb_problem, open_cache,
                                                   scene_template_file, session_nwb, table_csv)

log = logging.getLogger(__name__)

N_SCENES = 118  # natural-scene templates 0..117
NWB_SIZE = "1.7-3.3 GB"  # Allen's session NWB files (the 58 sessions: 146.5 GB)
# allensdk's engine aborts any download that takes longer than its timeout in total (from_warehouse:
# 1200 s, i.e. a 3.3 GB file needs > 2.8 MB/s); allow 6 h (~150 kB/s). RMA queries do not use it.
STREAM_TIMEOUT_S = 6 * 3600
# Columns of unit_metrics/<sid>.csv after unit_id, when units.csv has them.
UNIT_COLUMNS = ("ecephys_session_id", "ecephys_structure_acronym", "quality", "amplitude_cutoff",
                "presence_ratio", "isi_violations", "snr", "firing_rate")


# --------------------------------------------------------------------------------------
# paths and errors
# --------------------------------------------------------------------------------------
def unit_metrics_file(cache_dir: Path, session_id: int) -> Path:
    """``cache_dir/unit_metrics/<sid>.csv``: every unit of the session with Allen's quality metrics."""
    return Path(cache_dir) / "unit_metrics" / f"{int(session_id)}.csv"


def _failed(what: str, err: BaseException) -> DownloadError:
    return DownloadError(f"could not fetch {what} from the Allen Brain Observatory API ({API_HOST}): "
                         f"{reason(err)}. {OFFLINE_HINT}")


# --------------------------------------------------------------------------------------
# session table and selection
# --------------------------------------------------------------------------------------
def session_table(cache: Any, cache_dir: Path) -> pd.DataFrame:
    """allensdk's session table (one row per session, index = session id).

    The four project CSVs are fetched once (~58 MB) and read from the cache afterwards. A table file
    this call created is removed again if the call fails or is interrupted.
    """
    paths = [table_csv(cache_dir, name) for name in TABLES]
    new = [path for path in paths if not path.exists()]
    try:
        return cache.get_session_table()
    except BaseException as err:
        for path in new:
            remove(path)
        if not isinstance(err, Exception):
            raise  # KeyboardInterrupt / SystemExit: the files it started are gone
        if new or not all(path.exists() for path in paths):  # (allensdk deletes a cached table it failed to re-fetch)
            raise _failed("the Neuropixels project tables (sessions, probes, channels, units.csv)", err) from None
        raise DownloadError(f"{Path(cache_dir)}: the cached Neuropixels tables are unusable ({reason(err)}); "
                            "delete sessions.csv, probes.csv, channels.csv and units.csv and run "
                            "`meiscope download` again") from None


def _areas(value: Any) -> set[str]:
    """The recorded area acronyms of a session-table cell (allensdk leaves 0 when a session has no channels)."""
    if isinstance(value, str) or not hasattr(value, "__iter__"):
        return set()
    return {str(area) for area in value if isinstance(area, str)}


def select_sessions(table: pd.DataFrame, cfg: NeuropixelsConfig) -> list[int]:
    """Session ids chosen by ``cfg`` from allensdk's session table, sorted.

    ``cfg.session_ids``, when given, win: exactly those sessions are returned (``areas`` and
    ``max_sessions`` are ignored; an id missing from the table or of another ``session_type`` is a
    :class:`SelectionError`). Otherwise: sessions of ``cfg.session_type`` that recorded every area of
    ``cfg.areas``, the ``cfg.max_sessions`` smallest ids.
    """
    types = table["session_type"]
    explicit = sorted({int(i) for i in cfg.session_ids})
    if explicit:
        unknown = [i for i in explicit if i not in table.index]
        other = [i for i in explicit if i in table.index and types.loc[i] != cfg.session_type]
        if unknown or other:
            raise SelectionError(
                f"params: 'neuropixels.session_ids' {unknown + other} are not {cfg.session_type} sessions of the "
                f"Allen Neuropixels session table (unknown: {unknown}, other session_type: {other})")
        return explicit
    wanted = set(cfg.areas)
    chosen = sorted(int(i) for i in table.index
                    if types.loc[i] == cfg.session_type and wanted <= _areas(table.at[i, "ecephys_structure_acronyms"]))
    if not chosen:
        raise SelectionError(f"params: 'neuropixels' selects no session (no session of type {cfg.session_type} "
                             f"records all of neuropixels.areas={list(cfg.areas)})")
    return chosen[:cfg.max_sessions]


# --------------------------------------------------------------------------------------
# files: NWB sessions and scene templates
# --------------------------------------------------------------------------------------
def _scene_problem(path: Path) -> Optional[str]:
    """Why ``path`` does not read as a 2-D image the way allensdk reads scene templates, or None."""
    from allensdk.brain_observatory.ecephys.ecephys_project_cache import read_scene

    try:
        return None if read_scene(str(path)).ndim == 2 else "not a 2-D image"
    except Exception as err:  # SimpleITK raises RuntimeError on a truncated or foreign file
        return reason(err)


def _remove_partials(path: Path) -> None:
    """Remove temporary files a killed download left beside ``path`` (``atomic_path`` names them ``.<name>.*``)."""
    for leftover in path.parent.glob(f".{path.name}.*"):
        log.info("removing %s (left by an interrupted download)", leftover)
        remove(leftover)


def _download(path: Path, fetch: Callable[[], Any], write: Callable[[str, Any], None],
              problem: Callable[[Path], Optional[str]], bar: Optional[str]) -> None:
    """Stream one file into a temporary file beside ``path``; rename it onto ``path`` once it reads cleanly."""
    with atomic_path(path, suffix=f".part{path.suffix}") as tmp:  # removed on any failure, Ctrl-C included
        with GrowthBar(tmp, bar or "", bar is not None):
            write(str(tmp), fetch())
        found = problem(tmp)
        if found is not None:  # e.g. the server closed the stream early without an error
            raise DownloadError(f"the downloaded file does not read cleanly ({found})")


def _fetch_file(path: Path, fetch: Callable[[], Any], write: Callable[[str, Any], None],
                problem: Callable[[Path], Optional[str]], what: str, tries: int, size: str = "",
                bar: Optional[str] = None, keep_damaged: bool = False) -> bool:
    """Make sure ``path`` holds a readable file; return True if it had to be downloaded.

    ``fetch()`` returns allensdk's stream of the file and ``write(tmp, stream)`` saves it (allensdk's
    ``stream_writer``); ``path`` itself is never partial (:func:`_download`). ``problem(path)`` says
    why a file does not read (None: it does). A cached ``path`` that does not read is a one-line
    :class:`DownloadError` with ``keep_damaged`` (it is left as it is), else it is fetched again.
    ``tries`` downloads are attempted. ``size`` (the expected size, logged) and ``bar`` (a label: show
    the growing byte count) are for people.
    """
    if path.exists():
        found = problem(path)
        if found is None:
            return False
        if keep_damaged:
            raise DownloadError(damaged_session_message(path, found))
        log.warning("%s does not read cleanly (%s); fetching it again", path, found)
        remove(path)
    _remove_partials(path)
    log.log(logging.INFO if size else logging.DEBUG, "downloading %s into %s%s", what, path,
            f" (expected size {size})" if size else "")
    for _ in range(tries - 1):
        try:
            _download(path, fetch, write, problem, bar)
            return True
        except Exception as err:
            log.warning("could not fetch %s (%s); trying again", what, reason(err))
    try:
        _download(path, fetch, write, problem, bar)
    except Exception as err:
        raise _failed(what, err) from None
    return True


def fetch_session_nwb(cache: Any, cache_dir: Path, session_id: int, progress: bool = True) -> Path:
    """``session_<sid>/session_<sid>.nwb`` in the cache, downloaded if missing (not opened as a session).

    A cached file that allensdk could not open (:func:`~meiscope.recordings.neuropixels.cache.nwb_problem`)
    is a one-line :class:`DownloadError` naming it and what is wrong; it is never deleted or modified.
    """
    path = session_nwb(cache_dir, session_id)
    _fetch_file(path, partial(cache.fetch_api.get_session_data, session_id), cache.stream_writer, nwb_problem,
                f"the NWB file of session {session_id}", cache.fetch_tries, size=NWB_SIZE,
                bar=f"NWB {session_id}" if progress else None, keep_damaged=True)
    return path


def fetch_scene_templates(cache: Any, cache_dir: Path, progress: bool = True) -> list[Path]:
    """The 118 natural-scene templates in the cache, each downloaded if missing or unreadable."""
    paths = []
    for number in tqdm(range(N_SCENES), desc="scene templates", unit="img", disable=not progress):
        path = scene_template_file(cache_dir, number)
        _fetch_file(path, partial(cache.fetch_api.get_natural_scene_template, number=number), cache.stream_writer,
                    _scene_problem, f"natural-scene template {number}", cache.fetch_tries)
        paths.append(path)
    return paths


# --------------------------------------------------------------------------------------
# unit metrics
# --------------------------------------------------------------------------------------
def all_units(cache_dir: Path) -> pd.DataFrame:
    """Every unit of the project, unfiltered: ``units.csv`` joined with its channel's area and session.

    Not ``cache.get_units()``: even with every filter disabled (``None`` becomes +-inf) it compares the
    metrics with the thresholds, which drops units whose metric is NaN; ``filter_by_validity=False``
    and ``filter_out_of_brain_units=False`` would still be needed for noise and out-of-brain units.
    Index ``unit_id``; out-of-brain units have a NaN ``ecephys_structure_acronym``.
    """
    units = pd.read_csv(table_csv(cache_dir, "units"), index_col="id")
    channels = pd.read_csv(table_csv(cache_dir, "channels"), index_col="id",
                           usecols=["id", "ecephys_probe_id", "ecephys_structure_acronym"])
    probes = pd.read_csv(table_csv(cache_dir, "probes"), index_col="id", usecols=["id", "ecephys_session_id"])
    channels = channels.join(probes, on="ecephys_probe_id", how="inner")
    units = units.drop(columns=[c for c in channels.columns if c in units.columns])
    units = units.join(channels, on="ecephys_channel_id", how="inner")
    units.index.name = "unit_id"
    return units


def _write_unit_metrics(cache_dir: Path, session_ids: list[int]) -> None:
    """Write ``unit_metrics/<sid>.csv`` for the sessions that have none yet (no network)."""
    todo = [sid for sid in session_ids if not unit_metrics_file(cache_dir, sid).exists()]
    if not todo:
        return
    units = all_units(cache_dir)
    columns = [c for c in UNIT_COLUMNS if c in units.columns]
    for sid in todo:
        table = units.loc[units["ecephys_session_id"] == sid, columns].sort_index().reset_index()
        log.info("session %d: %d units in Allen's table (unfiltered)", sid, len(table))
        with atomic_path(unit_metrics_file(cache_dir, sid), suffix=".csv") as tmp:
            table.to_csv(tmp, index=False)


def load_unit_metrics(cache_dir: Path, session_id: int) -> Optional[pd.DataFrame]:
    """``cache_dir/unit_metrics/<sid>.csv`` as a DataFrame (one row per unit), or None if absent."""
    return read_metrics_csv(unit_metrics_file(cache_dir, session_id), "unit metrics")


# --------------------------------------------------------------------------------------
# the stage
# --------------------------------------------------------------------------------------
def download_sessions(cfg: NeuropixelsConfig, cache_dir: Path, progress: bool = True) -> list[int]:
    """Fetch the sessions ``cfg`` selects, the scene templates and the unit metrics; return the session ids.

    1. The project tables (``get_session_table``; fetched once, ~58 MB).
    2. Selection (:func:`select_sessions`).
    3. Each session's NWB (1.7-3.3 GB; kept if it is readable HDF5, fetched again if not).
    4. The 118 natural-scene templates.
    5. ``unit_metrics/<sid>.csv`` per session (written when missing): one row per unit of the session,
       unfiltered, with ``unit_id`` and :data:`UNIT_COLUMNS`; the extract stage applies ``cfg``'s unit
       filters itself.
    6. Allen's unit analysis metrics per session (:mod:`.unit_metrics`; fetched when missing).

    Raises :class:`DownloadError` (one line) when the API cannot be reached or a file is unusable,
    :class:`SelectionError` when ``cfg`` selects nothing or an unknown session.
    """
    cache_dir = Path(cache_dir)
    cache = open_cache(cache_dir, offline=False)  # NeuropixelsError: unusable manifest or NWB stack
    engine = cache.fetch_api.rma_engine
    engine.timeout = max(engine.timeout, STREAM_TIMEOUT_S)
    table = session_table(cache, cache_dir)
    session_ids = select_sessions(table, cfg)
    log.info("selected %d %s session(s): %s", len(session_ids), cfg.session_type, session_ids)
    for sid in tqdm(session_ids, desc="sessions", unit="session", disable=not progress):
        fetch_session_nwb(cache, cache_dir, sid, progress)
    fetch_scene_templates(cache, cache_dir, progress)
    _write_unit_metrics(cache_dir, session_ids)
    from meiscope.recordings.neuropixels.unit_metrics import fetch_analysis_metrics

    for sid in session_ids:
        fetch_analysis_metrics(cache, cache_dir, sid)
    return session_ids
