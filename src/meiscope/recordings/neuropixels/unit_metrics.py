"""Allen's own per-unit analysis metrics of a Neuropixels session, set beside meiscope's figures.

Allen published, for every unit of Visual Coding - Neuropixels, metrics of its responses to each
stimulus (``EcephysProjectCache.get_unit_analysis_metrics_for_session``). meiscope keeps six of them
(:data:`ANALYSIS_COLUMNS`):

- ``p_value_rf``: the receptive-field map's shuffle chi-square p-value (Gabor patches; NaN below 10 spikes);
- ``azimuth_rf`` / ``elevation_rf``: the map's centre of mass in gaze-centred degrees
  (allensdk's ``convert_azimuth_to_degrees`` / ``convert_elevation_to_degrees``: screen
  ``x_position + 50``, ``y_position + 10``, y up);
- ``pref_image_ns``: the preferred natural scene, as a **stimulus condition id** of the session
  (allensdk numbers conditions in order of first appearance over all stimuli: 4908-5026 for the
  scenes of session 798911424), not an image index. :func:`scene_frames` maps it to the image
  (``frame`` = ``natural_scene_<frame>.tiff``) through the session's own ``stimulus_conditions``
  table: in the table the rank stage joins, ``pref_image_ns`` is that image and Allen's condition id
  is kept as ``pref_image_ns_condition``;
- ``image_selectivity_ns``: Quian Quiroga et al. 2007's selectivity of the mean responses to the 118 scenes;
- ``g_osi_sg``: global orientation selectivity (circular variance) to static gratings at the
  preferred spatial frequency and phase.

Where the files lie (allensdk's cache layout, beside the session's NWB)::

    session_<sid>/session_<sid>_analysis_metrics.csv   allensdk's own cache file (index ecephys_unit_id)

Real sessions: ``meiscope download`` fetches it through allensdk (:func:`fetch_analysis_metrics`).
Synthetic sessions: ``meiscope synthesize`` computes it from the simulated spikes the way Allen's
analyses do (:func:`write_synthetic_analysis_metrics`), with allensdk's own functions, so the
offline default path reads the same file through the same code. allensdk deletes a cached metrics
file it cannot read, so a cached one is read here first and a broken one is reported, not deleted.
"""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import pandas as pd

from meiscope.atomic import atomic_path
from meiscope.recordings.downloads import API_HOST, OFFLINE_HINT, DownloadError, reason
from meiscope.recordings.neuropixels.cache import NeuropixelsError, check_session_file, session_nwb

log = logging.getLogger(__name__)

ANALYSIS_COLUMNS = ("p_value_rf", "azimuth_rf", "elevation_rf", "pref_image_ns", "image_selectivity_ns", "g_osi_sg")
PREF_CONDITION = "pref_image_ns_condition"  # Allen's own pref_image_ns: a stimulus condition id
# Allen's metrics whose median over units means nothing (a p-value, a position, an image label): the
# rank stage summarises them otherwise (fraction significant, agreement with meiscope's preferred image)
NOT_MEDIANS = ("p_value_rf", "azimuth_rf", "elevation_rf", "pref_image_ns", PREF_CONDITION)
INDEX = "ecephys_unit_id"  # the index column allensdk writes and reads
SCENE_STIMULI = ("natural_scenes", "Natural_Images", "Natural Images")  # allensdk's names of the stimulus
# the RF analysis's mask threshold, spike floor and gaze-centred frame are gabor_check's (Allen's definitions)
PRESENTATION_S = 0.25  # count window of every static BO1.1 stimulus (allensdk's trial duration)


# --------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------
def analysis_metrics_file(cache_dir: Path, session_id: int) -> Path:
    """allensdk's cache file of the session's unit analysis metrics (``session_analysis_metrics``)."""
    sid = int(session_id)
    return Path(cache_dir) / f"session_{sid}" / f"session_{sid}_analysis_metrics.csv"


def read_analysis_metrics(path: Path) -> pd.DataFrame:
    """The metrics table at ``path`` as allensdk reads it (index ``ecephys_unit_id``); one-line error if broken.

    Only :data:`ANALYSIS_COLUMNS` that the table has are required to be there; it must have at least one.
    """
    try:
        table = pd.read_csv(path, index_col=INDEX)
    except (ValueError, OSError) as err:  # EmptyDataError / ParserError / a missing index column
        raise DownloadError(f"{path}: unreadable unit analysis metrics ({reason(err)}); meiscope leaves it "
                            "untouched: move it away or delete it, then run `meiscope download` again") from None
    if not any(c in table.columns for c in ANALYSIS_COLUMNS) or table.index.has_duplicates:
        raise DownloadError(f"{path}: not Allen's unit analysis metrics (no column of {list(ANALYSIS_COLUMNS)}, "
                            "or a unit listed twice); move it away, then run `meiscope download` again")
    return table


def fetch_analysis_metrics(cache: Any, cache_dir: Path, session_id: int) -> Path:
    """``session_<sid>_analysis_metrics.csv`` in the cache, fetched through allensdk if missing.

    Uses ``cache.get_unit_analysis_metrics_for_session(sid, annotate=False)`` (allensdk writes the
    file). A cached file is read first (:func:`read_analysis_metrics`): allensdk would delete one it
    cannot read.

    Raises:
        DownloadError: the API cannot be reached, or the cached file is unreadable (it is kept).
    """
    path = analysis_metrics_file(cache_dir, session_id)
    if path.exists():
        read_analysis_metrics(path)
        return path
    try:
        cache.get_unit_analysis_metrics_for_session(int(session_id), annotate=False)
    except Exception as err:  # allensdk removes the file it started
        raise DownloadError(f"could not fetch the unit analysis metrics of session {session_id} from the Allen "
                            f"Brain Observatory API ({API_HOST}): {reason(err)}. {OFFLINE_HINT}") from None
    read_analysis_metrics(path)
    return path


# --------------------------------------------------------------------------------------
# pref_image_ns: condition id -> image
# --------------------------------------------------------------------------------------
def scene_frames(conditions: pd.DataFrame) -> pd.Series:
    """``stimulus_condition_id -> frame`` (int; -1 = the blank) of the natural-scene conditions.

    Args:
        conditions: a session's ``stimulus_conditions`` (allensdk: index ``stimulus_condition_id``,
            columns ``stimulus_name``, ``frame``, ...; values may be strings, 'null' where not applicable).
    """
    if "stimulus_name" not in conditions.columns or "frame" not in conditions.columns:
        raise NeuropixelsError("the session's stimulus_conditions table has no stimulus_name / frame column")
    scenes = conditions[conditions["stimulus_name"].isin(SCENE_STIMULI)]
    frame = pd.to_numeric(scenes["frame"], errors="coerce")
    frame = frame[frame.notna()]
    return pd.Series(frame.to_numpy(dtype=float).astype(np.int64), index=frame.index.astype(np.int64),
                     name="frame")


@contextmanager
def read_session(nwb_path: Path, unfiltered: bool = False) -> Iterator[Any]:
    """allensdk's ``EcephysSession`` of ``nwb_path``, from one pynwb reading of the file (pre-read first).

    allensdk's own ``from_nwb_path`` reads the whole file again for each table it builds (about 2 s
    each on a small file); here the file is read once and closed on exit. ``unfiltered``: every unit,
    unit filters off (Allen computed metrics for all units). The file is only read.
    """
    import pynwb
    from allensdk.brain_observatory.ecephys.ecephys_session import EcephysSession
    from allensdk.brain_observatory.ecephys.ecephys_session_api import EcephysNwbSessionApi

    check_session_file(nwb_path)  # registers allensdk's NWB extension on the way
    filters = ({"amplitude_cutoff_maximum": np.inf, "presence_ratio_minimum": -np.inf,
                "isi_violations_maximum": np.inf, "filter_by_validity": False, "filter_out_of_brain_units": False}
               if unfiltered else {})
    with warnings.catch_warnings(), pynwb.NWBHDF5IO(str(nwb_path), "r", load_namespaces=True) as io:
        warnings.simplefilter("ignore")  # pynwb's notes on cached namespace versions
        yield EcephysSession(api=EcephysNwbSessionApi.from_nwbfile(io.read(), **filters))


def session_conditions(nwb_path: Path) -> pd.DataFrame:
    """allensdk's ``stimulus_conditions`` of the session at ``nwb_path`` (the file is only read)."""
    try:
        with read_session(nwb_path) as session:
            return session.stimulus_conditions
    except NeuropixelsError:
        raise
    except Exception as err:
        raise NeuropixelsError(f"{nwb_path}: allensdk cannot read the stimulus tables ({reason(err)})") from None


def with_pref_frames(metrics: pd.DataFrame, frames: pd.Series, where: Path) -> pd.DataFrame:
    """``metrics`` with ``pref_image_ns`` replaced by the image its condition id names (float: NaN where
    unknown) and Allen's condition id moved to :data:`PREF_CONDITION`, right after it.

    Args:
        metrics: Allen's analysis metrics (index: unit id) with a ``pref_image_ns`` column of condition ids.
        frames: :func:`scene_frames` of the same session.
        where: the metrics file, named in the log.

    A condition id that is not one of the session's natural-scene conditions gets NaN (logged): the
    metrics would then not come from this session's stimulus table.
    """
    pref = pd.to_numeric(metrics["pref_image_ns"], errors="coerce")
    mapped = frames.reindex(pref.round().astype("Int64")).to_numpy(dtype=float)
    image = np.where(pref.notna(), mapped, np.nan)
    unknown = int((pref.notna() & np.isnan(image)).sum())
    if unknown:
        log.warning("%s: %d pref_image_ns values are not natural-scene conditions of the session", where, unknown)
    out = metrics.copy()
    out["pref_image_ns"] = image
    out.insert(out.columns.get_loc("pref_image_ns") + 1, PREF_CONDITION, pref.to_numpy(dtype=float))
    return out


# --------------------------------------------------------------------------------------
# the table the rank stage joins
# --------------------------------------------------------------------------------------
def allen_unit_table(cache_dir: Path, session_id: int) -> tuple[Optional[pd.DataFrame], tuple[str, ...]]:
    """Allen's per-unit tables of the session joined on ``unit_id``, and their metric columns.

    Quality metrics come from ``unit_metrics/<sid>.csv`` (``meiscope download``), analysis metrics
    from :func:`analysis_metrics_file` (download or synthesize), ``pref_image_ns`` as the image it names
    (:func:`with_pref_frames`).
    Returns ``(None, ())`` when the session has neither.
    """
    from meiscope.recordings.neuropixels import UNIT_METRIC_COLUMNS
    from meiscope.recordings.neuropixels.download import load_unit_metrics

    tables, columns = [], []
    quality = load_unit_metrics(cache_dir, session_id)
    if quality is not None:
        tables.append(quality.set_index("unit_id"))
        columns += [c for c in UNIT_METRIC_COLUMNS if c in quality.columns]
    path = analysis_metrics_file(cache_dir, session_id)
    if path.is_file():
        metrics = read_analysis_metrics(path)
        kept = [c for c in ANALYSIS_COLUMNS if c in metrics.columns]
        metrics = metrics.loc[:, kept]
        if "pref_image_ns" in kept:
            metrics = with_pref_frames(metrics, scene_frames(session_conditions(session_nwb(cache_dir, session_id))),
                                       path)
            kept.insert(kept.index("pref_image_ns") + 1, PREF_CONDITION)
        metrics.index = metrics.index.astype(np.int64)
        tables.append(metrics.drop(columns=[c for c in metrics.columns if c in columns]))
        columns += kept
    if not tables:
        return None, ()
    table = pd.concat(tables, axis=1, join="outer")  # a unit in either table is kept
    table.index.name = "unit_id"
    return table.reset_index(), tuple(columns)


# --------------------------------------------------------------------------------------
# synthetic sessions: the metrics Allen's analyses would give
# --------------------------------------------------------------------------------------
def _condition_means(session: Any, name: str, unit_ids: np.ndarray) -> pd.DataFrame:
    """``(n_conditions, n_units)`` mean spike count per condition of stimulus ``name`` (allensdk's statistics)."""
    table = session.stimulus_presentations
    ids = table.index[table["stimulus_name"] == name].to_numpy()
    stats = session.conditionwise_spike_statistics(stimulus_presentation_ids=ids, unit_ids=unit_ids)
    return stats["spike_mean"].unstack("unit_id").reindex(columns=unit_ids)


def _numeric(conditions: pd.DataFrame, column: str) -> pd.Series:
    return pd.to_numeric(conditions[column], errors="coerce")


def scene_metrics(session: Any, unit_ids: np.ndarray) -> pd.DataFrame:
    """``pref_image_ns`` (condition id) and ``image_selectivity_ns`` per unit, blanks left out."""
    from allensdk.brain_observatory.ecephys.stimulus_analysis.natural_scenes import image_selectivity

    means = _condition_means(session, "natural_scenes", unit_ids)
    frame = _numeric(session.stimulus_conditions.loc[means.index], "frame")
    means = means[(frame >= 0).to_numpy()]  # the blank (frame -1) is allensdk's null condition
    return pd.DataFrame({"pref_image_ns": means.idxmax(axis=0).astype(np.int64),
                         "image_selectivity_ns": [image_selectivity(means[u].to_numpy(dtype=float))
                                                  for u in unit_ids]}, index=unit_ids)


def grating_osi(session: Any, unit_ids: np.ndarray) -> pd.Series:
    """``g_osi_sg``: circular-variance OSI over orientations at each unit's preferred SF and phase."""
    from allensdk.brain_observatory.ecephys.stimulus_analysis.stimulus_analysis import deg2rad, osi

    means = _condition_means(session, "static_gratings", unit_ids)
    cond = session.stimulus_conditions.loc[means.index]
    ori, sf, phase = (_numeric(cond, c).to_numpy() for c in ("orientation", "spatial_frequency", "phase"))
    shown = ~np.isnan(sf)  # the blank has 'null' parameters
    means, ori, sf, phase = means[shown], ori[shown], sf[shown], phase[shown]
    orientations = np.unique(ori)
    out = {}
    for u in unit_ids:
        m = means[u].to_numpy(dtype=float)
        # preferred SF, then phase: the largest mean over the conditions sharing it (allensdk's _get_pref_*)
        pref_sf = max(np.unique(sf), key=lambda v: m[sf == v].mean())
        pref_phase = max(np.unique(phase), key=lambda v: m[phase == v].mean())
        at = (sf == pref_sf) & (phase == pref_phase)
        tuning = np.array([m[at & (ori == o)].mean() if (at & (ori == o)).any() else 0.0 for o in orientations])
        out[u] = osi(deg2rad(orientations).astype("complex128"), tuning)
    return pd.Series(out, name="g_osi_sg", dtype=float)


def rf_metrics(session: Any, unit_ids: np.ndarray, seed: int) -> pd.DataFrame:
    """``p_value_rf``, ``azimuth_rf``, ``elevation_rf`` per unit from the Gabor patches (NaN below 10 spikes).

    The map holds spike totals per grid position (orientations pooled), row 0 at the top of the
    screen; allensdk's ``threshold_rf`` gives its centre of mass, converted to gaze-centred degrees.
    The p-value is the shuffle chi-square (:func:`~meiscope.recordings.neuropixels.gabor_check.shuffle_p_values`,
    seeded by ``seed``).
    """
    from allensdk.brain_observatory.ecephys.stimulus_analysis.receptive_field_mapping import threshold_rf

    from meiscope.recordings.neuropixels.gabor_check import (RF_MASK_STD, RF_MIN_SPIKES, screen_to_gaze,
                                                             shuffle_p_values)

    table = session.stimulus_presentations
    table = table[table["stimulus_name"] == "gabors"]
    x, y = _numeric(table, "x_position").to_numpy(), _numeric(table, "y_position").to_numpy()
    xs, ys = np.unique(x), np.unique(y)[::-1]  # columns left to right, rows top (largest y) to bottom
    col, row = np.searchsorted(xs, x), np.searchsorted(-ys, -y)
    counts = session.presentationwise_spike_counts(
        bin_edges=np.array([0.0, PRESENTATION_S]), stimulus_presentation_ids=table.index.to_numpy(),
        unit_ids=unit_ids, dtype=np.uint32).values[:, 0, :].astype(np.int64)  # (n_presentations, n_units)
    position = row * len(xs) + col
    p_values = shuffle_p_values(counts, position, len(xs) * len(ys), seed=seed)
    azimuth, elevation = np.full(len(unit_ids), np.nan), np.full(len(unit_ids), np.nan)
    for k in range(len(unit_ids)):
        if counts[:, k].sum() < RF_MIN_SPIKES:
            continue
        # integer totals, as Allen's map is: the smoothing in threshold_rf then keeps integers too
        rf = np.bincount(position, weights=counts[:, k], minlength=len(xs) * len(ys)).astype(np.int64)
        rf = rf.reshape(len(ys), len(xs))
        _, center_x, center_y, _ = threshold_rf(rf, RF_MASK_STD)
        # grid index -> screen degrees (linear: the grid is evenly spaced) -> gaze-centred degrees
        azimuth[k], elevation[k] = screen_to_gaze(np.interp(center_x, np.arange(len(xs)), xs),
                                                  np.interp(center_y, np.arange(len(ys)), ys))
    return pd.DataFrame({"p_value_rf": p_values, "azimuth_rf": azimuth, "elevation_rf": elevation}, index=unit_ids)


def synthetic_analysis_metrics(nwb_path: Path, seed: int) -> pd.DataFrame:
    """Allen's six analysis metrics (:data:`ANALYSIS_COLUMNS`) of every unit of the session at ``nwb_path``.

    Each is computed from the recorded spikes as Allen's analyses define it (allensdk's statistics
    and functions); a stimulus the session does not show leaves its columns NaN.
    """
    with read_session(nwb_path, unfiltered=True) as session:
        return session_analysis_metrics(session, seed)


def session_analysis_metrics(session: Any, seed: int) -> pd.DataFrame:
    """:func:`synthetic_analysis_metrics` of an open allensdk ``EcephysSession``."""
    unit_ids = session.units.index.to_numpy(dtype=np.int64)
    shown = set(session.stimulus_presentations["stimulus_name"])
    out = pd.DataFrame(index=pd.Index(unit_ids, name=INDEX), columns=list(ANALYSIS_COLUMNS), dtype=float)
    if "gabors" in shown:
        out.update(rf_metrics(session, unit_ids, seed))
    if "natural_scenes" in shown:
        out.update(scene_metrics(session, unit_ids).astype(float))
    if "static_gratings" in shown:
        out["g_osi_sg"] = grating_osi(session, unit_ids)
    out["pref_image_ns"] = out["pref_image_ns"].astype("Int64")  # a condition id, as Allen's table has it
    return out


def write_synthetic_analysis_metrics(cache_dir: Path, session_id: int, seed: int) -> Path:
    """Write :func:`synthetic_analysis_metrics` of a written session beside its NWB (the NWB is only read)."""
    path = analysis_metrics_file(cache_dir, session_id)
    table = synthetic_analysis_metrics(session_nwb(cache_dir, session_id), seed)
    with atomic_path(path, suffix=".csv") as tmp:
        table.to_csv(tmp)
    return path


# --------------------------------------------------------------------------------------
# the report: meiscope's figures beside Allen's
# --------------------------------------------------------------------------------------
COMPARISON_HEADER = ["unit", "RF p (meiscope)", "RF p (Allen)", "RF centre az, el (meiscope)",
                     "RF centre az, el (Allen)", "preferred image (meiscope)", "preferred image (Allen)",
                     "image selectivity (meiscope)", "image selectivity (Allen)"]


def allen_origin(source: str) -> str:
    """One sentence: where the Allen figures of a ``data.source`` (``synthetic`` / ``allen``) session come from."""
    name = "session_<id>_analysis_metrics.csv, beside the session's NWB"
    if source == "synthetic":
        return (f"Allen's figures ({name}) are computed from this synthetic session's spikes with allensdk's own "
                "functions, as Allen's analyses define them.")
    return f"Allen's figures are Allen's published unit analysis metrics ({name}), downloaded by meiscope download."


def _text(value: Any, fmt: str) -> str:
    value = float(value)
    return "n/a" if not np.isfinite(value) else format(value, fmt)


def _centre(azimuth: Any, elevation: Any) -> str:
    az, el = _text(azimuth, ".1f"), _text(elevation, ".1f")
    return "n/a" if "n/a" in (az, el) else f"{az}, {el}"


def comparison_grid(ranking_csv: Path, rf_csv: Path) -> list[list[str]]:
    """The report's table: meiscope's figures beside Allen's for each selected unit, best-ranked first.

    Args:
        ranking_csv: the rank stage's ``ranking.csv`` (``allen_<metric>`` columns of :data:`ANALYSIS_COLUMNS`,
            ``pref_image_ns`` already the image it names; meiscope's ``preferred_image_id`` and
            ``image_selectivity``).
        rf_csv: the gabor stage's ``unit_receptive_fields.csv`` (meiscope's ``rf_p_value``, ``azimuth_rf_deg``,
            ``elevation_rf_deg`` in Allen's gaze-centred degrees); "n/a" in its columns when missing.

    Returns:
        Header row (:data:`COMPARISON_HEADER`) then one row of strings per selected unit; ``[]`` when the
        ranking has none of Allen's analysis columns (or no ranking file).
    """
    if not Path(ranking_csv).is_file():
        return []
    table = pd.read_csv(ranking_csv)
    if not any(f"allen_{c}" in table.columns for c in ANALYSIS_COLUMNS):
        return []
    table = table[table["selected"].astype(str).str.lower() == "true"].sort_values("rank")
    rf = (pd.read_csv(rf_csv).set_index("unit_id") if Path(rf_csv).is_file()
          else pd.DataFrame(columns=["rf_p_value", "azimuth_rf_deg", "elevation_rf_deg"], dtype=float,
                            index=pd.Index([], dtype=np.int64, name="unit_id")))
    table = table.join(rf.loc[:, ["rf_p_value", "azimuth_rf_deg", "elevation_rf_deg"]], on="cell_id")
    for column in [f"allen_{c}" for c in ANALYSIS_COLUMNS] + ["preferred_image_id", "image_selectivity"]:
        if column not in table.columns:
            table[column] = np.nan
    rows = [COMPARISON_HEADER]
    for row in table.itertuples():
        rows.append([str(int(row.cell_id)), _text(row.rf_p_value, ".2g"), _text(row.allen_p_value_rf, ".2g"),
                     _centre(row.azimuth_rf_deg, row.elevation_rf_deg),
                     _centre(row.allen_azimuth_rf, row.allen_elevation_rf),
                     _text(row.preferred_image_id, ".0f"), _text(row.allen_pref_image_ns, ".0f"),
                     _text(row.image_selectivity, ".2f"), _text(row.allen_image_selectivity_ns, ".2f")])
    return rows
