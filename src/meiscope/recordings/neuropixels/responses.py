"""The `extract` stage for Neuropixels sessions: spike counts per presentation, through allensdk.

A session is opened from the cache with allensdk's own ``EcephysProjectCache.get_session_data``
(offline: everything it needs is already cached, by ``meiscope download`` or ``meiscope
synthesize``), with the unit filters of ``params.neuropixels`` (allensdk's defaults: quality
"good", in-brain, amplitude cutoff <= 0.1, presence ratio >= 0.95, ISI violations <= 0.5; plus an
optional snr cut) and the areas asked for.

Response of a unit to a presentation = its spike count in ``count_window`` seconds after onset
(allensdk's ``presentationwise_spike_counts``). Natural scenes become the
:class:`~meiscope.dataset.ResponseDataset` every later stage reads (trials, blank trials, the
scene templates at model resolution, the same split as two-photon data). Static gratings and Gabor
patches are counted the same way and kept beside it (:func:`stimulus_counts`): the Gabor patches are
the measured check of the optimal-Gabor search (:mod:`meiscope.recordings.neuropixels.gabor_check`).
The other stimuli that train the model beside the scenes are built by :mod:`.training`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from meiscope.atomic import write_npz
from meiscope.config import ExtractConfig
from meiscope.recordings.neuropixels.settings import NeuropixelsConfig
from meiscope.dataset import ResponseDataset
from meiscope.recordings.neuropixels.cache import NeuropixelsError, check_session_file, open_cache, session_nwb
from meiscope.recordings.training_stimuli import GRATING_PARAMETERS

if TYPE_CHECKING:
    from meiscope.recordings.training_stimuli import TrainingStimuli

log = logging.getLogger(__name__)

SCENES = "natural_scenes"
PARAMETERS = {"static_gratings": GRATING_PARAMETERS, "gabors": ("x_position", "y_position", "orientation")}
# stimuli whose per-presentation counts are kept too: the Gabor patches' receptive-field shuffle test
# resamples presentations (gabor_check), which needs each presentation's count, not only condition means
KEEP_PRESENTATIONS = ("gabors",)


def open_session(cache_dir: Path, session_id: int, cfg: NeuropixelsConfig) -> tuple[Any, Any]:
    """``(cache, EcephysSession)`` of a cached session, unit filters from ``cfg`` applied by allensdk."""
    path = session_nwb(cache_dir, session_id)
    check_session_file(path)  # allensdk deletes a cached file it cannot read: never hand it a doubtful one
    cache = open_cache(cache_dir, offline=True)
    try:
        session = cache.get_session_data(
            session_id, amplitude_cutoff_maximum=cfg.amplitude_cutoff_maximum,
            presence_ratio_minimum=cfg.presence_ratio_minimum, isi_violations_maximum=cfg.isi_violations_maximum)
    except Exception as err:
        raise NeuropixelsError(f"{path}: allensdk cannot open the session ({type(err).__name__}: {err})") from None
    return cache, session


def area_column(units: pd.DataFrame) -> str:
    """The units table's area column: ``ecephys_structure_acronym`` (cache) or ``structure_acronym`` (bare NWB)."""
    for name in ("ecephys_structure_acronym", "structure_acronym"):
        if name in units.columns:
            return name
    raise NeuropixelsError("the units table has no structure acronym column")


def select_units(units: pd.DataFrame, cfg: NeuropixelsConfig) -> np.ndarray:
    """Unit ids in ``cfg.areas`` that pass ``cfg.snr_minimum`` (allensdk already applied its filters), sorted."""
    keep = units[area_column(units)].isin(cfg.areas).to_numpy()
    if cfg.snr_minimum is not None:
        keep &= units["snr"].to_numpy(dtype=float) >= cfg.snr_minimum
    return np.sort(units.index.to_numpy(dtype=np.int64)[keep])


def spike_counts(session: Any, table: pd.DataFrame, unit_ids: np.ndarray, window: list[float]) -> np.ndarray:
    """``(n_presentations, n_units)`` float32 spike counts in ``window`` s after each onset (table order)."""
    counts = session.presentationwise_spike_counts(
        bin_edges=np.asarray(window, dtype=float), stimulus_presentation_ids=table.index.to_numpy(),
        unit_ids=unit_ids, dtype=np.uint32)
    counts = counts.sel(stimulus_presentation_id=table.index.to_numpy(), unit_id=unit_ids)
    return np.asarray(counts.values[:, 0, :], dtype=np.float32)


def stimulus_table(session: Any, name: str, path: Path) -> pd.DataFrame:
    """The valid presentations of stimulus ``name`` (allensdk's table rows); no natural scenes is an error
    naming the file ``path``."""
    table = session.stimulus_presentations
    table = table[table["stimulus_name"] == name]
    if "invalid_presentation" in table.columns:  # overlapping Allen's invalid_times
        table = table[~table["invalid_presentation"].astype(bool)]
    if table.empty and name == SCENES:
        names = sorted(set(session.stimulus_presentations["stimulus_name"]))
        raise NeuropixelsError(f"{path}: no natural_scenes presentations (stimuli: {', '.join(names)}); "
                               "only brain_observatory_1.1 sessions show natural scenes")
    return table


def extract_session(cache_dir: Path, session_id: int, extract_cfg: ExtractConfig, cfg: NeuropixelsConfig,
                    source: str) -> tuple[ResponseDataset, dict[str, dict[str, np.ndarray]], "TrainingStimuli"]:
    """Read one session: its natural-scenes dataset, the counts of its other static stimuli and its training stimuli.

    Returns:
        ``(dataset, other, training)`` where ``other`` maps ``static_gratings`` / ``gabors`` to
        :func:`stimulus_counts` arrays (only the stimuli the session holds) and ``training`` holds the
        stimuli of ``cfg.training_stimuli`` the session shows (:mod:`.training`).
    """
    from meiscope.recordings.neuropixels.training import training_stimuli
    from meiscope.responses import dataset_from_trials

    path = session_nwb(cache_dir, session_id)
    cache, session = open_session(cache_dir, session_id, cfg)
    unit_ids = select_units(session.units, cfg)
    if not unit_ids.size:
        raise NeuropixelsError(f"{path}: no unit in {cfg.areas} passes the unit filters of params.neuropixels")
    log.info("session %d: %d units in %s pass the filters (of %d)", session_id, unit_ids.size, cfg.areas,
             len(session.units))
    table = stimulus_table(session, SCENES, path)
    frames = table["frame"].astype(float).astype(np.int64).to_numpy()
    counts = spike_counts(session, table, unit_ids, cfg.count_window)

    def templates(shown: np.ndarray) -> np.ndarray:
        return np.stack([np.asarray(cache.get_natural_scene_template(int(f)), dtype=np.float32) for f in shown])

    dataset = dataset_from_trials(session_id, frames, counts, templates, unit_ids, extract_cfg, source)
    other = {name: stimulus_counts(session, stimulus_table(session, name, path), unit_ids, cfg.count_window, name)
             for name in PARAMETERS if (session.stimulus_presentations["stimulus_name"] == name).any()}
    return dataset, other, training_stimuli(cache, session, dataset, extract_cfg, cfg, path)


def numeric_parameters(table: pd.DataFrame, columns: tuple[str, ...]) -> pd.DataFrame:
    """``columns`` of an allensdk stimulus table as floats (Allen's tables hold text); ``"null"``, where a
    parameter does not apply (a blank), becomes NaN."""
    return table[list(columns)].replace("null", np.nan).astype(float)


def stimulus_counts(session: Any, table: pd.DataFrame, unit_ids: np.ndarray, window: list[float],
                    name: str) -> dict[str, np.ndarray]:
    """Mean counts per condition of ``name`` (blanks excluded), as arrays ready for an ``.npz``.

    Keys: ``<parameter>`` ``(n_conditions,)`` float for each parameter of :data:`PARAMETERS`,
    ``mean_counts`` ``(n_conditions, n_units)``, ``repeats`` ``(n_conditions,)``; for the stimuli of
    :data:`KEEP_PRESENTATIONS` also ``presentation_counts`` ``(n_presentations, n_units)`` int32 spike
    counts and ``presentation_condition`` ``(n_presentations,)`` int64 row of each presentation's condition.
    """
    columns = PARAMETERS[name]
    values = numeric_parameters(table, columns)
    shown = values.notna().all(axis=1).to_numpy()
    counts = spike_counts(session, table[shown], unit_ids, window)
    keys = pd.MultiIndex.from_frame(values[shown].round(6))
    conditions, inverse = np.unique(np.stack([keys.get_level_values(i) for i in range(len(columns))], axis=1),
                                    axis=0, return_inverse=True)
    inverse = inverse.ravel()
    sums = np.zeros((len(conditions), len(unit_ids)))
    np.add.at(sums, inverse, counts)
    repeats = np.bincount(inverse, minlength=len(conditions))
    out = {column: conditions[:, i] for i, column in enumerate(columns)}
    out = {**out, "mean_counts": (sums / repeats[:, None]).astype(np.float32), "repeats": repeats.astype(np.int64),
           "unit_ids": unit_ids}
    if name in KEEP_PRESENTATIONS:
        out["presentation_counts"] = np.rint(counts).astype(np.int32)
        out["presentation_condition"] = inverse.astype(np.int64)
    return out


def other_stimuli_path(dataset_path: Path) -> Path:
    """Where extract keeps a Neuropixels session's grating and Gabor-patch counts, beside its dataset."""
    return dataset_path.with_name(dataset_path.stem + ".stimuli.npz")


def save_other_stimuli(path: Path, other: dict[str, dict[str, np.ndarray]]) -> None:
    """Write :func:`stimulus_counts` of each stimulus into one ``.npz`` (keys ``<stimulus>/<array>``)."""
    write_npz(path, {f"{name}/{key}": value for name, arrays in other.items() for key, value in arrays.items()})


def load_other_stimuli(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """Read :func:`save_other_stimuli`'s file; ``{}`` if there is none (two-photon sessions)."""
    if not Path(path).is_file():
        return {}
    out: dict[str, dict[str, np.ndarray]] = {}
    with np.load(path, allow_pickle=False) as f:
        for key in f.files:
            name, array = key.split("/", 1)
            out.setdefault(name, {})[array] = f[key]
    return out
