"""Data source A: download real Allen Brain Observatory natural-scenes sessions (`meiscope download`).

Everything lands in allensdk's own cache layout under ``cache_dir`` (the manifest's folder)::

    manifest.json                      written by BrainObservatoryCache, no network
    ophys_experiments.json             experiment list (cached by allensdk)
    cell_specimens.json                cell metrics of all ~63k cells (~460 MB, cached by allensdk)
    ophys_experiment_data/<id>.nwb     one session, ~275 MB (streamed by allensdk)
    cell_metrics/<id>.csv              ours: the metrics rows of that session's cells

A second run with everything cached needs no network at all: the experiment list is read
through allensdk's lazy cache directly (``BrainObservatoryCache.get_ophys_experiments`` always
makes one extra uncached API call for eye-tracking files, which we do not need), complete NWB
files are kept, and cell metrics files are only written when missing.

Guarding against half-written files: allensdk streams an NWB straight onto its final path and
deletes it again on ``Exception`` only, so Ctrl-C (``KeyboardInterrupt``) or a kill would leave
a truncated file that the next run would take as complete. We therefore (1) delete a file created
by a failed or interrupted call ourselves, (2) check every NWB opens with h5py after download and
(3) check an existing NWB opens with h5py before reuse, removing and re-fetching it if not
(HDF5 stores the file's length in its superblock, so h5py refuses a truncated file; the session's
top-level groups must be there and every dataset's bytes inside the file, see
:func:`meiscope.recordings.downloads.hdf5_problem`). allensdk's
JSON caches are written in place too; a cached JSON that no longer parses is removed and fetched
once more.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Optional

import pandas as pd
from tqdm import tqdm

from meiscope.atomic import atomic_path
from meiscope.recordings.two_photon.settings import AllenConfig
from meiscope.recordings.downloads import (API_HOST, OFFLINE_HINT, DownloadError, GrowthBar, SelectionError,
                                           check_manifest, hdf5_problem, read_metrics_csv, reason, remove)
from meiscope.recordings.downloads import is_readable_hdf5  # noqa: F401 (re-exported: tests import it here)

log = logging.getLogger(__name__)

SESSION_TYPE = "three_session_B"  # the only session type with natural scenes
STIMULUS = "natural_scenes"
# Natural-scenes columns the ranking stage joins; written (as NaN) even when Allen lists no value.
NS_COLUMNS = ("p_ns", "reliability_ns", "peak_dff_ns", "image_sel_ns", "pref_image_ns")
# Top-level groups every Brain Observatory NWB 1 session has (Allen's and the synthetic ones)
NWB_GROUPS = ("general", "processing")


# --------------------------------------------------------------------------------------
# paths
# --------------------------------------------------------------------------------------
def nwb_file(cache_dir: Path, experiment_id: int) -> Path:
    """``cache_dir/ophys_experiment_data/<id>.nwb`` (allensdk's manifest layout)."""
    return Path(cache_dir) / "ophys_experiment_data" / f"{int(experiment_id)}.nwb"


def cell_metrics_file(cache_dir: Path, experiment_id: int) -> Path:
    """``cache_dir/cell_metrics/<id>.csv``: Allen's metrics of the session's cells."""
    return Path(cache_dir) / "cell_metrics" / f"{int(experiment_id)}.csv"


# --------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------
def _unreachable(what: str, err: BaseException) -> DownloadError:
    return DownloadError(f"could not reach the Allen Brain Observatory API ({API_HOST}) to {what}: "
                         f"{reason(err)}. {OFFLINE_HINT}")


def _cached_fetch(path: Path, what: str, fetch: Callable[[], Any]) -> Any:
    """Run an allensdk lazy-cache call that reads or creates the JSON file ``path``.

    A file this call created is removed again if the call fails or is interrupted (allensdk
    writes in place). A pre-existing file that no longer parses is removed and fetched once more.
    """
    existed = path.exists()
    try:
        data = fetch()
    except BaseException as err:
        if not existed:
            remove(path)
        if not isinstance(err, Exception):
            raise  # KeyboardInterrupt / SystemExit: the partial file is gone, let it through
        if existed and isinstance(err, ValueError):  # JSONDecodeError: a truncated cache file
            log.warning("%s does not parse (%s); fetching it again", path, reason(err))
            remove(path)
            return _cached_fetch(path, what, fetch)
        raise _unreachable(what, err) from None
    if not isinstance(data, list):  # the API's error envelope ('msg' is a string) got cached
        remove(path)
        raise _unreachable(what, ValueError(f"unexpected answer {str(data)[:120]!r}"))
    return data


# --------------------------------------------------------------------------------------
# selection
# --------------------------------------------------------------------------------------
def open_cache(cache_dir: Path) -> Any:
    """``BrainObservatoryCache`` with its manifest at ``cache_dir/manifest.json`` (no network)."""
    # allensdk costs ~3 s to import: only the download stage pays for it
    from allensdk.core.brain_observatory_cache import BrainObservatoryCache

    manifest = Path(cache_dir) / "manifest.json"
    check_manifest(manifest)
    try:
        return BrainObservatoryCache(manifest_file=str(manifest))
    except Exception as err:  # outdated manifest version, unparsable JSON, unwritable folder
        raise DownloadError(f"{manifest}: unusable allensdk manifest ({reason(err)}); "
                            "delete it and run `meiscope download` again") from None


def _experiment_list(boc: Any) -> list[dict]:
    """Every ophys experiment (allensdk's full dicts), from the cache or fetched once."""
    from allensdk.api.warehouse_cache.cache import Cache

    path = Path(boc.get_cache_path(None, boc.EXPERIMENTS_KEY))
    # The cached list, without boc.get_ophys_experiments' uncached eye-tracking query
    return _cached_fetch(path, "list experiments", lambda: boc.api.get_ophys_experiments(
        path=str(path), strategy="lazy", **Cache.cache_json()))


def select_experiments(boc: Any, cfg: AllenConfig) -> list[dict]:
    """Natural-scenes experiments (session ``three_session_B``) chosen by ``cfg``, sorted by id.

    ``cfg.experiment_ids``, when given, win: exactly those experiments are returned (filters and
    ``max_experiments`` are ignored; an id that is not a natural-scenes experiment of a passing
    container is a :class:`SelectionError`). Otherwise the filters apply (empty lists mean "any"):
    ``targeted_structures``, ``cre_lines``, and ``imaging_depth_min <= depth <= imaging_depth_max``
    (micrometres), and the ``max_experiments`` smallest ids are kept.

    Returns allensdk's simplified experiment dicts (``id``, ``imaging_depth``,
    ``targeted_structure``, ``cre_line``, ``experiment_container_id``, ``session_type``, ...).
    Raises :class:`DownloadError` if the experiment list is not cached and the API is unreachable.
    """
    experiments = _experiment_list(boc)
    explicit = sorted({int(i) for i in cfg.experiment_ids})
    # allensdk refuses bare strings: every filter goes in as a list (or None = no filter)
    selected = boc.api.filter_ophys_experiments(
        experiments,
        ids=explicit or None,
        targeted_structures=None if explicit or not cfg.targeted_structures else list(cfg.targeted_structures),
        cre_lines=None if explicit or not cfg.cre_lines else list(cfg.cre_lines),
        stimuli=[STIMULUS],
        session_types=[SESSION_TYPE],
        simple=True,
    )
    selected = sorted(selected, key=lambda e: e["id"])
    if explicit:
        missing = sorted(set(explicit) - {e["id"] for e in selected})
        if missing:
            raise SelectionError(f"params: 'allen.experiment_ids' {missing} are not natural-scenes "
                                 f"({SESSION_TYPE}) experiments of passing containers")
        return selected
    selected = [e for e in selected
                if cfg.imaging_depth_min <= e["imaging_depth"] <= cfg.imaging_depth_max]
    if not selected:
        raise SelectionError(
            f"params: 'allen' selects no natural-scenes ({SESSION_TYPE}) experiment "
            f"(targeted_structures={list(cfg.targeted_structures)}, cre_lines={list(cfg.cre_lines)}, "
            f"imaging depth {cfg.imaging_depth_min}-{cfg.imaging_depth_max} um)")
    return selected[:cfg.max_experiments]


# --------------------------------------------------------------------------------------
# download
# --------------------------------------------------------------------------------------
def _fetch_nwb(boc: Any, experiment_id: int, progress: bool) -> Any:
    """``boc.get_ophys_experiment_data(id)``, never leaving a partial NWB at the final path.

    Returns the ``BrainObservatoryNwbDataSet``.
    """
    path = Path(boc.get_cache_path(None, boc.EXPERIMENT_DATA_KEY, experiment_id))
    problem = hdf5_problem(path, NWB_GROUPS) if path.exists() else None
    if problem is not None:
        log.warning("%s: truncated or damaged (%s; an interrupted download?); fetching it again", path, problem)
        remove(path)
    existed = path.exists()
    if not existed:
        log.info("downloading experiment %d into %s (~275 MB)", experiment_id, path)
    try:
        with GrowthBar(path, f"NWB {experiment_id}", progress and not existed):
            data = boc.get_ophys_experiment_data(experiment_id)
    except BaseException as err:
        if not existed:
            remove(path)  # allensdk keeps it on KeyboardInterrupt, or if opening it failed
        if not isinstance(err, Exception):
            raise
        if existed:  # nothing was fetched: the kept file is readable HDF5 but not a session
            raise DownloadError(f"{path}: not a Brain Observatory NWB file ({reason(err)}); "
                                "delete it and run `meiscope download` again") from None
        raise _unreachable(f"download the NWB file of experiment {experiment_id}", err) from None
    problem = hdf5_problem(path, NWB_GROUPS)
    if problem is not None:  # e.g. the server closed the stream early without an error
        remove(path)
        raise DownloadError(f"{path}: the downloaded NWB file is truncated or damaged ({problem}) and "
                            "was removed; run `meiscope download` again")
    return data


def _session_metrics(experiment: dict, cell_ids: list[int], rows: list[dict]) -> pd.DataFrame:
    """Metrics rows of one session's cells, in the NWB's cell order.

    ``cell_ids`` are the session's cell specimen ids as stored in its NWB (the row order of its
    traces); ``rows`` are ``get_cell_specimens`` records of its container. A container holds the
    cells of sessions A, B and C, so only the NWB says which cells this session has; a cell
    without a metrics row keeps NaN metrics.
    """
    table = pd.DataFrame(rows)
    if table.empty:
        table = pd.DataFrame({"cell_specimen_id": pd.Series(dtype="int64")})
    table = table.drop_duplicates("cell_specimen_id").set_index("cell_specimen_id")
    table = table.reindex(pd.Index(cell_ids, name="cell_specimen_id")).reset_index()
    for column in NS_COLUMNS:
        if column not in table.columns:
            table[column] = float("nan")
    table.insert(1, "ophys_experiment_id", int(experiment["id"]))
    table.insert(2, "nwb_index", range(len(cell_ids)))
    table["experiment_container_id"] = int(experiment["experiment_container_id"])
    return table


def download_experiments(cfg: AllenConfig, cache_dir: Path, progress: bool = True) -> list[int]:
    """Fetch the NWB files and cell metrics of the experiments ``cfg`` selects; return their ids.

    Writes ``cache_dir/ophys_experiment_data/<id>.nwb`` (allensdk's lazy download: a complete
    file is kept, a truncated one is fetched again) and ``cache_dir/cell_metrics/<id>.csv``
    (one row per cell of the session in NWB order: ``cell_specimen_id``, ``ophys_experiment_id``,
    ``nwb_index``, ``p_ns``, ``reliability_ns``, ``peak_dff_ns``, ``image_sel_ns``,
    ``pref_image_ns``, ``area``, ``imaging_depth``, ... as listed by ``get_cell_specimens``).

    Which cells belong to a session: the cell specimen ids stored in its NWB (exact, and the
    order of its traces), joined with ``get_cell_specimens(experiment_container_ids=[container])``
    for the metrics. The cell table (~460 MB) is fetched once, only if some metrics file is missing.

    Raises :class:`DownloadError` (one line) when the API cannot be reached or a file is unusable,
    :class:`SelectionError` when ``cfg`` selects nothing.
    """
    cache_dir = Path(cache_dir)
    boc = open_cache(cache_dir)
    experiments = select_experiments(boc, cfg)
    log.info("selected %d natural-scenes experiment(s): %s", len(experiments), [e["id"] for e in experiments])

    cell_ids: dict[int, list[int]] = {}
    for experiment in tqdm(experiments, desc="experiments", unit="exp", disable=not progress):
        data = _fetch_nwb(boc, experiment["id"], progress)
        cell_ids[experiment["id"]] = [int(c) for c in data.get_cell_specimen_ids()]

    todo = [e for e in experiments if not cell_metrics_file(cache_dir, e["id"]).exists()]
    if todo:
        containers = sorted({int(e["experiment_container_id"]) for e in todo})
        table_path = Path(boc.get_cache_path(None, boc.CELL_SPECIMENS_KEY))
        rows = _cached_fetch(table_path, "fetch the cell metrics table (cell_specimens.json)",
                             # simple=False: keeps the thumbnail columns but needs no second
                             # (stimulus_mappings) request that could fail after the big one
                             lambda: boc.get_cell_specimens(experiment_container_ids=containers,
                                                            simple=False))
        for experiment in todo:
            mine = [r for r in rows if r["experiment_container_id"] == experiment["experiment_container_id"]]
            table = _session_metrics(experiment, cell_ids[experiment["id"]], mine)
            n_missing = int(table["p_ns"].isna().sum())
            if n_missing:
                log.info("experiment %d: %d of %d cells have no Allen natural-scenes metrics",
                         experiment["id"], n_missing, len(table))
            with atomic_path(cell_metrics_file(cache_dir, experiment["id"]), suffix=".csv") as tmp:
                table.to_csv(tmp, index=False)
    return [int(e["id"]) for e in experiments]


def download_containers(cfg: AllenConfig, sessions: list[str], cache_dir: Path, progress: bool = True) -> list[int]:
    """The natural-scenes experiments ``cfg`` selects (:func:`download_experiments`) and the other
    sessions (``sessions``: letters A, B, C; C includes C2) of their experiment containers.

    Returns every experiment id fetched, sorted. The cells of a container keep their
    ``cell_specimen_id`` in every session (Allen's matching); the NWB files carry them.
    """
    studied = download_experiments(cfg, cache_dir, progress)
    boc = open_cache(cache_dir)
    experiments = _experiment_list(boc)
    container_of = {int(e["id"]): int(e["experiment_container_id"]) for e in experiments}
    wanted = {container_of[i] for i in studied if i in container_of}
    siblings = sorted(int(e["id"]) for e in experiments
                      if container_of[int(e["id"])] in wanted and int(e["id"]) not in studied
                      and _session_letter(e) in sessions)
    for experiment_id in tqdm(siblings, desc="container sessions", unit="exp", disable=not progress):
        _fetch_nwb(boc, experiment_id, progress)
    return sorted([*studied, *siblings])


def _session_letter(experiment: dict) -> str:
    """``A``, ``B`` or ``C`` (C2 counts as C) of an experiment dict's session type."""
    session_type = str(experiment.get("stimulus_name") or experiment.get("session_type") or "")
    return session_type.replace("three_session_", "")[:1]


def load_cell_metrics(cache_dir: Path, experiment_id: int) -> Optional[pd.DataFrame]:
    """``cache_dir/cell_metrics/<id>.csv`` as a DataFrame (one row per cell), or None if absent."""
    return read_metrics_csv(cell_metrics_file(cache_dir, experiment_id), "cell metrics")
