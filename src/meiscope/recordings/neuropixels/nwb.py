"""Write one synthetic Neuropixels session where allensdk's own reader finds and reads it.

The session arrives as plain arrays (:class:`EcephysSessionArrays`); how the spikes were made is
not this module's business. It writes allensdk 2.16.2's ``EcephysProjectCache`` layout (see
:mod:`meiscope.recordings.neuropixels.cache`): ``session_<sid>/session_<sid>.nwb``, the four project CSVs and
``natural_scene_templates/natural_scene_<n>.tiff``. What allensdk needs from them
(``shared/docs/allen-neuropixels.md`` sections 1-3, and its reader's source) decides the details:

- NWB ``identifier`` = ``str(session_id)``: the cache opens a session with ``test=True``, which
  parses the identifier as an int. Any exception while the cache reads a cached file makes it
  re-fetch and then *delete* the file, so every file is written atomically (temp file + rename).
- Probes are ``nwbfile.electrode_groups``: one ``EcephysElectrodeGroup`` (ndx-aibs-ecephys) per
  probe, named like the probe (``probeC``), whose ``device`` is an ``EcephysProbe``.
- Channels are the electrodes table with ``x, y, z`` (CCF; NaN here), ``location`` (area acronym;
  pynwb rejects ``''``, so out-of-brain channels say ``"None"``, which the reader maps to missing),
  ``probe_id``, ``local_index`` (what Visual Coding files use instead of ``probe_channel_number``;
  a file with both is refused), ``probe_vertical_position``, ``probe_horizontal_position`` and
  ``valid_data``.
- Each units column becomes a keyword of allensdk's ``Unit``: the 11 required ones plus ``snr``.
  Any other column raises ``TypeError`` in the reader, so nothing else goes into the units table.
  ``waveform_mean`` row ``i`` is read as the channel with ``local_index`` ``i`` on the unit's probe.
  The reader does not sort NWB spike times (and counts spikes with ``searchsorted``), so unsorted
  trains are refused here.
- Stimuli are ``TimeIntervals`` named ``<stimulus>_presentations`` with ``stimulus_name``,
  ``stimulus_block`` and ``stimulus_index`` (the reader drops the last and fails without it).
- Running speed is the ``running`` processing module, as allensdk's own writer makes it:
  ``running_speed`` (velocity, cm/s, timestamps = sample starts), ``running_speed_end_times``
  (NaN data, timestamps = sample ends) and ``running_wheel_rotation`` (radians per sample).
  allensdk's stimulus analyses (``ReceptiveFieldMapping``, ``NaturalScenes``, ...) read it.
- ``invalid_times`` is a ``TimeIntervals`` with ``start_time``, ``stop_time`` and ``tags``
  (``[type, id, label]``, e.g. ``["EcephysSession", "<sid>", "stimulus"]``); allensdk masks the
  presentations a ``stimulus``-tagged interval overlaps as ``invalid_presentation``.
- Natural-movie templates go to ``natural_movie_templates/natural_movie_<n>.h5``, which allensdk
  reads with ``np.load`` (``.npy`` content despite the name).
- ``get_session_data`` needs all four CSVs and inner-merges the session's channels with
  ``channels.csv``: channel ids missing there silently drop their units.
- ``get_units`` (and the session table's ``unit_count``) drops out-of-brain units only when
  ``units.csv`` itself has ``ecephys_structure_id``; Allen's has not, and neither has ours, so the
  cache lists such units (area NaN) while a session's ``units`` drops them.
"""

from __future__ import annotations

import io
import itertools
import uuid
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from meiscope.atomic import atomic_path
from meiscope.recordings.neuropixels.cache import (NeuropixelsError, TABLES, open_cache, scene_template_file,
                                        session_nwb, table_csv)

SCENE_SHAPE = (918, 1174)  # Allen's natural-scene templates: uint8, rows x columns
OUT_OF_BRAIN = "None"
WAVEFORM_SAMPLES = 8  # a tiny spike shape per channel keeps waveform_mean small (Allen stores 82 samples)
SPIKE_AMPLITUDE_V = 1e-4  # one constant amplitude per spike; nothing in meiscope reads amplitudes
PRESENTATION_COLUMNS = ("start_time", "stop_time", "stimulus_name", "stimulus_block", "stimulus_index")
# A fixed date keeps the file's content independent of when it was written.
SESSION_START = datetime(2019, 1, 1, tzinfo=timezone.utc)
WHEEL_RADIUS_CM = 8.255 * 2.0 / 3.0  # the running wheel's effective radius (see _add_running_speed)
GZIP = {"compression": "gzip", "compression_opts": 4, "shuffle": True}

# Allen CCF structure ids (the Allen mouse brain ontology) of the areas Visual Coding probes pass
# through; channels.csv carries them as ``ecephys_structure_id`` (EcephysSession uses them to find
# area boundaries along a probe). VISrl and ProS exist since CCFv3 2017.
STRUCTURE_IDS = {
    "VISp": 385, "VISl": 409, "VISal": 402, "VISam": 394, "VISpm": 533, "VISrl": 417,
    "LGd": 170, "LGv": 178, "LP": 218, "LD": 155, "POL": 1029, "TH": 549,
    "CA1": 382, "CA2": 423, "CA3": 463, "DG": 726, "SUB": 502, "ProS": 484682470, "POST": 1037,
    "PRE": 1084, "HPF": 1089, "APN": 215, "NOT": 628, "MB": 313,
}


@dataclass
class Probes:
    probe_ids: np.ndarray          # (n_probes,) int64
    names: np.ndarray              # (n_probes,) str, e.g. "probeC"
    sampling_rate: float = 29999.9
    lfp_sampling_rate: float = 1249.9


@dataclass
class Channels:
    channel_ids: np.ndarray        # (n_channels,) int64, globally unique
    probe_ids: np.ndarray          # (n_channels,) int64
    local_index: np.ndarray        # (n_channels,) int64, index on its probe
    vertical_position: np.ndarray  # (n_channels,) float, microns along the probe
    horizontal_position: np.ndarray  # (n_channels,) float
    structure_acronyms: np.ndarray  # (n_channels,) str: "VISp", "CA1", "LP", ... or "None" (out of brain)


@dataclass
class Units:
    unit_ids: np.ndarray           # (n_units,) int64, globally unique
    spike_times: list[np.ndarray]  # n_units sorted float64 arrays, seconds on the session clock
    peak_channel_ids: np.ndarray   # (n_units,) int64, rows of Channels
    quality: np.ndarray            # (n_units,) str: "good" or "noise"
    amplitude_cutoff: np.ndarray   # (n_units,) float
    presence_ratio: np.ndarray     # (n_units,) float
    isi_violations: np.ndarray     # (n_units,) float
    snr: np.ndarray                # (n_units,) float


@dataclass
class RunningSpeed:
    start_time: np.ndarray         # (n_samples,) float64 s
    end_time: np.ndarray           # (n_samples,) float64 s
    velocity: np.ndarray           # (n_samples,) float cm/s


@dataclass
class EcephysSessionArrays:
    session_id: int
    session_type: str              # "brain_observatory_1.1"
    specimen_id: int
    age_in_days: float
    sex: str
    genotype: str
    probes: Probes
    channels: Channels
    units: Units
    # interval name WITHOUT the suffix ("natural_scenes", "static_gratings", "gabors", "spontaneous") -> table
    presentations: dict[str, "pd.DataFrame"]
    scene_templates: np.ndarray    # (n_scenes, rows, columns) uint8 (Allen's: 918 x 1174), natural_scene_<n>.tiff for n = 0..n_scenes-1
    running_speed: Optional[RunningSpeed] = None  # the ``running`` module (allensdk's analyses need it)
    invalid_times: Optional[pd.DataFrame] = None  # start_time, stop_time, tags (list of 3 str) per interval
    movie_templates: dict[int, np.ndarray] = field(default_factory=dict)  # n -> (frames, rows, cols) uint8


# --------------------------------------------------------------------------------------
# The whole session


def write_session(cache_dir: Path, arrays: EcephysSessionArrays) -> Path:
    """Write ``arrays`` into the allensdk cache at ``cache_dir``; return the session's NWB path.

    Creates ``manifest.json`` (through :func:`open_cache`) if missing, then writes the NWB file at
    :func:`~meiscope.recordings.neuropixels.cache.session_nwb`, this session's rows of the four project CSVs
    (other sessions' rows are kept) and the natural-scene templates.
    """
    cache_dir = Path(cache_dir)
    path = session_nwb(cache_dir, arrays.session_id)
    _check_arrays(arrays, path)
    open_cache(cache_dir, offline=True)  # writes manifest.json; the offline API can never download
    write_session_nwb(path, arrays)
    write_project_tables(cache_dir, arrays)
    write_scene_templates(cache_dir, arrays.scene_templates)
    for number, frames in sorted(arrays.movie_templates.items()):
        write_movie_template(cache_dir, number, frames)
    return path


# --------------------------------------------------------------------------------------
# NWB 2 file


def write_session_nwb(path: Path, arrays: EcephysSessionArrays) -> Path:
    """Write the session's NWB 2 file at ``path`` (atomically) and return ``path``.

    Holds probes, channels, units (spike times float64, gzip-compressed) and one
    ``<name>_presentations`` interval table per entry of ``arrays.presentations``.
    """
    from pynwb import NWBHDF5IO

    path = Path(path)
    _check_arrays(arrays, path)
    nwbfile = _build_nwbfile(arrays)
    with atomic_path(path, suffix=".nwb") as tmp, warnings.catch_warnings():
        # The extension's EcephysSpecimen declares `strain` as an attribute while pynwb's Subject
        # stores it as a dataset; hdmf then warns about a missing attribute "None". allensdk reads
        # the subject back intact (EcephysNwbSessionApi.get_metadata).
        warnings.filterwarnings("ignore", message="EcephysSpecimen .* missing required value")
        with NWBHDF5IO(str(tmp), "w") as io_:
            io_.write(nwbfile)
    return path


def _build_nwbfile(arrays: EcephysSessionArrays) -> Any:
    import allensdk.brain_observatory.ecephys.nwb as ecephys_nwb  # registers ndx-aibs-ecephys
    from pynwb import NWBFile

    subject = ecephys_nwb.EcephysSpecimen(
        subject_id=str(arrays.specimen_id), specimen_name=f"synthetic-{arrays.specimen_id}",
        age_in_days=float(arrays.age_in_days), age=f"P{int(round(arrays.age_in_days))}D",
        genotype=arrays.genotype, strain="synthetic", sex=arrays.sex, species="Mus musculus")
    nwbfile = NWBFile(
        session_description="synthetic Visual Coding - Neuropixels session (meiscope), not a recording",
        identifier=str(int(arrays.session_id)), session_id=str(int(arrays.session_id)),
        session_start_time=SESSION_START, file_create_date=SESSION_START,
        stimulus_notes=arrays.session_type, institution="meiscope (synthetic)", subject=subject)
    groups = _add_probes(nwbfile, arrays.probes, ecephys_nwb)
    nwbfile.electrodes = _electrodes_table(arrays.channels, groups)
    nwbfile.units = _units_table(arrays)
    for name in sorted(arrays.presentations):
        nwbfile.add_time_intervals(_presentation_intervals(name, arrays.presentations[name]))
    if arrays.running_speed is not None:
        _add_running_speed(nwbfile, arrays.running_speed)
    if arrays.invalid_times is not None and len(arrays.invalid_times):
        _add_invalid_times(nwbfile, arrays.invalid_times)
    _derive_object_ids(nwbfile, int(arrays.session_id))
    return nwbfile


def _derive_object_ids(nwbfile: Any, session_id: int) -> None:
    """Replace hdmf's random object ids (uuid4 per container) with ids derived from the session id.

    The same arrays then write the same bytes. hdmf draws the ids from ``hdmf.container.uuid4``;
    ``generate_new_id`` walks the containers in their (deterministic) child order.
    """
    import hdmf.container

    counter = itertools.count()
    random_uuid4 = hdmf.container.uuid4
    hdmf.container.uuid4 = lambda: uuid.uuid5(uuid.NAMESPACE_URL, f"meiscope:ecephys:{session_id}:{next(counter)}")
    try:
        nwbfile.generate_new_id()
    finally:
        hdmf.container.uuid4 = random_uuid4


def _add_probes(nwbfile: Any, probes: Probes, ecephys_nwb: Any) -> dict[int, Any]:
    """One EcephysProbe device + one EcephysElectrodeGroup of the same name per probe."""
    groups = {}
    for probe_id, name in zip(probes.probe_ids.tolist(), probes.names.tolist()):
        device = ecephys_nwb.EcephysProbe(
            name=name, description="Neuropixels 1.0 Probe (synthetic)", manufacturer="imec",
            probe_id=int(probe_id), sampling_rate=float(probes.sampling_rate))
        group = ecephys_nwb.EcephysElectrodeGroup(
            name=name, description="Ecephys Electrode Group", location="See electrode locations",
            device=device, probe_id=int(probe_id), lfp_sampling_rate=float(probes.lfp_sampling_rate),
            has_lfp_data=False)  # no probe_<id>_lfp.nwb is written
        nwbfile.add_device(device)
        nwbfile.add_electrode_group(group)
        groups[int(probe_id)] = group
    return groups


def _electrodes_table(channels: Channels, groups: dict[int, Any]) -> Any:
    """pynwb's electrodes table plus allensdk's channel columns, built column by column.

    (``NWBFile.add_electrode`` re-checks every column for raggedness on each row, quadratic in the
    number of channels: ~10 s for 6 x 384 channels instead of milliseconds.)
    """
    from hdmf.common import DynamicTable, VectorData

    n = len(channels.channel_ids)
    group = [groups[int(p)] for p in channels.probe_ids.tolist()]
    values = {
        "location": ("the location of channel within the subject e.g. brain region",
                     [_acronym(a) for a in channels.structure_acronyms]),
        "group": ("a reference to the ElectrodeGroup this electrode is a part of", group),
        "group_name": ("the name of the ElectrodeGroup this electrode is a part of", [g.name for g in group]),
        "x": ("CCF anterior-posterior coordinate (not known: NaN)", np.full(n, np.nan)),
        "y": ("CCF dorsal-ventral coordinate (not known: NaN)", np.full(n, np.nan)),
        "z": ("CCF left-right coordinate (not known: NaN)", np.full(n, np.nan)),
        "probe_vertical_position": ("Length-wise position of the channel on the probe (microns)",
                                    channels.vertical_position.astype(np.float64)),
        "probe_horizontal_position": ("Width-wise position of the channel on the probe (microns)",
                                      channels.horizontal_position.astype(np.float64)),
        "probe_id": ("The unique id of this channel's probe", channels.probe_ids.astype(np.int64)),
        "local_index": ("The index of the channel on its probe", channels.local_index.astype(np.int64)),
        "valid_data": ("Whether data from this channel is usable", np.ones(n, dtype=bool)),
    }
    columns = [VectorData(name=name, description=description, data=data)
               for name, (description, data) in values.items()]
    return DynamicTable(name="electrodes", description="metadata about extracellular electrodes",
                        id=channels.channel_ids.astype(np.int64).tolist(), columns=columns)


def _units_table(arrays: EcephysSessionArrays) -> Any:
    """pynwb Units with exactly the columns allensdk's ``Unit`` accepts (11 required + snr)."""
    from hdmf.backends.hdf5.h5_utils import H5DataIO
    from hdmf.common import VectorData, VectorIndex
    from pynwb.misc import Units as NwbUnits

    units, channels = arrays.units, arrays.channels
    counts = np.array([len(t) for t in units.spike_times], dtype=np.int64)
    spike_times = np.concatenate([np.asarray(t, dtype=np.float64) for t in units.spike_times] or [np.zeros(0)])
    row = _channel_rows(channels, units.peak_channel_ids)
    local_index = _rank_within(channels.probe_ids[row])  # Allen's per-probe unit index (the sorter's cluster id)

    def compressed(data: np.ndarray) -> Any:
        return H5DataIO(data, **GZIP) if data.size else data  # HDF5 cannot chunk an empty dataset

    def ragged(name: str, description: str, data: np.ndarray) -> list[Any]:
        column = VectorData(name=name, description=description, data=compressed(data))
        return [column, VectorIndex(name=f"{name}_index", data=np.cumsum(counts), target=column)]

    columns = [
        *ragged("spike_times", "times (s) of detected spiking events", spike_times),
        *ragged("spike_amplitudes", "amplitude (V) of detected spiking events (constant, synthetic)",
                np.full(spike_times.size, SPIKE_AMPLITUDE_V, dtype=np.float32)),
        VectorData(name="waveform_mean", description="mean waveform (V) on each channel of the probe (rows = "
                   "channel local_index)", data=compressed(_mean_waveforms(channels, row))),
    ]
    scalars = {
        "peak_channel_id": ("id of the channel with the largest waveform", units.peak_channel_ids.astype(np.int64)),
        "local_index": ("index of the unit on its probe", local_index),
        "cluster_id": ("cluster id of the unit on its probe", local_index),
        "quality": ("'good' or 'noise'", [str(q) for q in units.quality]),
        "firing_rate": ("spikes per second over the session", _firing_rates(arrays, counts)),
        "isi_violations": ("ISI violation rate", units.isi_violations.astype(np.float64)),
        "presence_ratio": ("fraction of the session with spikes", units.presence_ratio.astype(np.float64)),
        "amplitude_cutoff": ("estimated fraction of missed spikes", units.amplitude_cutoff.astype(np.float64)),
        "snr": ("signal-to-noise ratio of the mean waveform", units.snr.astype(np.float64)),
    }
    columns += [VectorData(name=name, description=description, data=data)
                for name, (description, data) in scalars.items()]
    return NwbUnits(name="units", description="synthetic sorted units (meiscope)",
                    id=units.unit_ids.astype(np.int64).tolist(), columns=columns)


def _mean_waveforms(channels: Channels, unit_rows: np.ndarray) -> np.ndarray:
    """(n_units, n_rows, WAVEFORM_SAMPLES) float32: a small trough on the peak channel, fading with distance.

    The reader maps row ``i`` to the channel with ``local_index`` ``i`` on the unit's probe, so the rows
    run over local indices 0..max (rows without a channel are dropped by the reader).
    """
    n_rows = int(channels.local_index.max()) + 1 if len(channels.local_index) else 0
    shape = np.array([0.0, -0.2, -1.0, -0.6, 0.3, 0.4, 0.2, 0.05], dtype=np.float32)[:WAVEFORM_SAMPLES]
    waves = np.zeros((len(unit_rows), n_rows, WAVEFORM_SAMPLES), dtype=np.float32)
    for u, row in enumerate(unit_rows):
        on_probe = np.flatnonzero(channels.probe_ids == channels.probe_ids[row])
        distance = np.abs(channels.vertical_position[on_probe] - channels.vertical_position[row])
        gain = np.exp(-distance / 40.0) * SPIKE_AMPLITUDE_V  # a ~40 um footprint
        waves[u, channels.local_index[on_probe]] = gain[:, None].astype(np.float32) * shape
    return waves


def _firing_rates(arrays: EcephysSessionArrays, counts: np.ndarray) -> np.ndarray:
    """Spikes per second over the session span: first to last event among spikes and presentations."""
    starts = [t[0] for t in arrays.units.spike_times if len(t)]
    stops = [t[-1] for t in arrays.units.spike_times if len(t)]
    for table in arrays.presentations.values():
        if len(table):
            starts.append(float(table["start_time"].min()))
            stops.append(float(table["stop_time"].max()))
    span = (max(stops) - min(starts)) if starts else 0.0
    return counts / span if span > 0 else np.zeros(len(counts))


def _add_running_speed(nwbfile: Any, running: RunningSpeed) -> None:
    """The ``running`` module as allensdk's writer lays it out (velocity cm/s; wheel rotation in radians)."""
    from hdmf.backends.hdf5.h5_utils import H5DataIO
    from pynwb import ProcessingModule, TimeSeries

    velocity = np.asarray(running.velocity, dtype=np.float64)
    start = np.asarray(running.start_time, dtype=np.float64)
    end = np.asarray(running.end_time, dtype=np.float64)
    module = ProcessingModule("running", "running speed data")
    nwbfile.add_processing_module(module)
    speed = TimeSeries(name="running_speed", data=H5DataIO(velocity, **GZIP), timestamps=H5DataIO(start, **GZIP),
                       unit="cm/s")
    ends = TimeSeries(name="running_speed_end_times", data=H5DataIO(np.full(velocity.shape, np.nan), **GZIP),
                      timestamps=H5DataIO(end, **GZIP), unit="cm/s")
    # wheel rotation per sample: distance / effective radius (allensdk's extract_running_speed defaults:
    # wheel_radius 8.255 cm x subject_position 2/3)
    rotation = TimeSeries(name="running_wheel_rotation",
                          data=H5DataIO(velocity * (end - start) / WHEEL_RADIUS_CM, **GZIP),
                          timestamps=speed, unit="radians")
    for series in (speed, ends, rotation):
        module.add_data_interface(series)


def _add_invalid_times(nwbfile: Any, table: pd.DataFrame) -> None:
    """``nwbfile.invalid_times``: one interval per row, ``tags`` a list of strings ([type, id, label])."""
    from pynwb.epoch import TimeIntervals

    container = TimeIntervals(name="invalid_times", description="times when the data are not valid (synthetic)")
    for row in table.itertuples(index=False):
        container.add_interval(start_time=float(row.start_time), stop_time=float(row.stop_time),
                               tags=[str(t) for t in row.tags])
    nwbfile.invalid_times = container


def _presentation_intervals(name: str, table: pd.DataFrame) -> Any:
    """``<name>_presentations``: one column per DataFrame column, text stays text, NaN floats stay floats."""
    from hdmf.common import VectorData
    from pynwb.epoch import TimeIntervals

    columns = []
    for column in table.columns:
        values = table[column]
        if values.dtype == object:
            data: Any = [str(v) for v in values]
        else:
            data = values.to_numpy()
        columns.append(VectorData(name=str(column), description=f"{column} of each presentation", data=data))
    return TimeIntervals(name=f"{name}_presentations", description=f"presentations of {name} (synthetic)",
                         columns=columns, id=list(range(len(table))))


# --------------------------------------------------------------------------------------
# Project tables (sessions.csv, probes.csv, channels.csv, units.csv)


def write_project_tables(cache_dir: Path, arrays: EcephysSessionArrays) -> None:
    """Write this session's rows of the cache's four CSVs, keeping every other session's rows.

    Rows already there for this session (and for its old probes, channels and units) are replaced.
    Other rows keep their text exactly; all rows are sorted by ``id`` so the files do not depend on
    the order sessions were written in.
    """
    cache_dir = Path(cache_dir)
    _check_arrays(arrays, table_csv(cache_dir, "units"))
    new = _session_tables(arrays)
    old = {name: _read_table(table_csv(cache_dir, name)) for name in TABLES}
    kept = _drop_session_rows(old, arrays.session_id, new, cache_dir)
    for name in TABLES:
        combined = pd.concat([kept[name], _as_text(new[name])], ignore_index=True).fillna("")
        combined = combined.iloc[np.argsort(combined["id"].astype(np.int64).to_numpy(), kind="stable")]
        with atomic_path(table_csv(cache_dir, name), suffix=".csv") as tmp:
            combined.to_csv(tmp, index=False)


def _session_tables(arrays: EcephysSessionArrays) -> dict[str, pd.DataFrame]:
    """The rows allensdk's cache reads, with the columns the Allen warehouse serves."""
    probes, channels, units = arrays.probes, arrays.channels, arrays.units
    acronyms = [_acronym(a) for a in channels.structure_acronyms]
    in_brain = [a for a in acronyms if a != OUT_OF_BRAIN]
    sessions = pd.DataFrame({
        "id": [int(arrays.session_id)], "session_type": [arrays.session_type],
        "specimen_id": [int(arrays.specimen_id)], "age_in_days": [float(arrays.age_in_days)],
        "sex": [arrays.sex], "genotype": [arrays.genotype],
        # a Python literal: the cache parses it with ast.literal_eval
        "structure_acronyms": [repr(sorted(set(in_brain)))],
        "published_at": [SESSION_START.strftime("%Y-%m-%dT%H:%M:%SZ")], "has_nwb": [True],
    })
    probe_table = pd.DataFrame({
        "id": probes.probe_ids.astype(np.int64), "ecephys_session_id": int(arrays.session_id),
        "name": [str(n) for n in probes.names], "sampling_rate": float(probes.sampling_rate),
        "lfp_sampling_rate": float(probes.lfp_sampling_rate), "has_lfp_data": False,
    })
    channel_table = pd.DataFrame({
        "id": channels.channel_ids.astype(np.int64), "ecephys_probe_id": channels.probe_ids.astype(np.int64),
        "local_index": channels.local_index.astype(np.int64),
        "probe_horizontal_position": channels.horizontal_position.astype(np.float64),
        "probe_vertical_position": channels.vertical_position.astype(np.float64),
        "anterior_posterior_ccf_coordinate": np.nan, "dorsal_ventral_ccf_coordinate": np.nan,
        "left_right_ccf_coordinate": np.nan,
        "ecephys_structure_id": [np.nan if a == OUT_OF_BRAIN else float(STRUCTURE_IDS[a]) for a in acronyms],
        "ecephys_structure_acronym": [np.nan if a == OUT_OF_BRAIN else a for a in acronyms],
    })
    counts = np.array([len(t) for t in units.spike_times], dtype=np.int64)
    unit_table = pd.DataFrame({
        "id": units.unit_ids.astype(np.int64), "ecephys_channel_id": units.peak_channel_ids.astype(np.int64),
        "quality": [str(q) for q in units.quality], "snr": units.snr.astype(np.float64),
        "firing_rate": _firing_rates(arrays, counts),
        "isi_violations": units.isi_violations.astype(np.float64),
        "presence_ratio": units.presence_ratio.astype(np.float64),
        "amplitude_cutoff": units.amplitude_cutoff.astype(np.float64),
    })
    return {"sessions": sessions, "probes": probe_table, "channels": channel_table, "units": unit_table}


def _read_table(path: Path) -> pd.DataFrame:
    """An existing CSV as text (so other sessions' rows are written back byte for byte), or no rows."""
    if not path.is_file():
        return pd.DataFrame({"id": pd.Series(dtype=str)})
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise NeuropixelsError(f"{path}: unreadable project table ({err}); delete it and synthesize again") from None
    if "id" not in table.columns:
        raise NeuropixelsError(f"{path}: no 'id' column, not an allensdk project table")
    return table


def _drop_session_rows(old: dict[str, pd.DataFrame], session_id: int, new: dict[str, pd.DataFrame],
                       cache_dir: Path) -> dict[str, pd.DataFrame]:
    """The old rows minus this session's, found through the foreign keys (session -> probe -> channel -> unit)."""
    def column(table: pd.DataFrame, name: str) -> pd.Series:
        return table[name] if name in table.columns else pd.Series("", index=table.index)

    sid = str(int(session_id))
    probes, channels, units = old["probes"], old["channels"], old["units"]
    own_probes = set(probes.loc[column(probes, "ecephys_session_id") == sid, "id"])
    own_channels = set(channels.loc[column(channels, "ecephys_probe_id").isin(own_probes), "id"])
    owned = {
        "sessions": old["sessions"]["id"] == sid,
        "probes": probes["id"].isin(own_probes),
        "channels": channels["id"].isin(own_channels),
        "units": column(units, "ecephys_channel_id").isin(own_channels),
    }
    kept = {}
    for name in TABLES:
        rest = old[name][~owned[name]]
        clash = set(rest["id"]) & {str(i) for i in new[name]["id"]}
        if clash:  # ids are global in Allen's tables: reusing one would corrupt another session
            raise NeuropixelsError(f"{table_csv(cache_dir, name)}: id {min(clash, key=int)} of session {sid} "
                                   "already belongs to another session")
        kept[name] = rest
    return kept


def _as_text(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` as the text pandas writes, so new and kept rows are formatted alike."""
    return pd.read_csv(io.StringIO(table.to_csv(index=False)), dtype=str, keep_default_na=False)


# --------------------------------------------------------------------------------------
# Natural-scene templates


def write_scene_templates(cache_dir: Path, templates: np.ndarray) -> None:
    """Write ``natural_scene_<n>.tiff`` for each template (deflate-compressed TIFF, read by SimpleITK).

    A file that already holds the same image is left alone, so re-synthesis rewrites nothing.
    """
    cache_dir = Path(cache_dir)
    _check_templates(templates, scene_template_file(cache_dir, 0).parent)
    for number, image in enumerate(templates):
        path = scene_template_file(cache_dir, number)
        if _same_image(path, image):
            continue
        with atomic_path(path, suffix=".tiff") as tmp:
            _write_tiff(tmp, image)


def movie_template_file(cache_dir: Path, number: int) -> Path:
    """Where allensdk's cache keeps natural movie ``number`` (``.h5`` by name, ``.npy`` by content)."""
    return Path(cache_dir) / "natural_movie_templates" / f"natural_movie_{int(number)}.h5"


def write_movie_template(cache_dir: Path, number: int, frames: np.ndarray) -> Path:
    """Write a ``(n_frames, rows, cols)`` uint8 movie where ``get_natural_movie_template(number)`` reads it."""
    frames = np.asarray(frames)
    path = movie_template_file(cache_dir, number)
    if frames.dtype != np.uint8 or frames.ndim != 3 or min(frames.shape) < 1:
        raise NeuropixelsError(f"{path}: a movie template must be a non-empty uint8 (frames, rows, columns) "
                               f"array, got {frames.dtype} {frames.shape}")
    if path.is_file():
        try:
            if np.array_equal(np.load(path, allow_pickle=False), frames):
                return path  # unchanged: leave the file alone
        except (OSError, ValueError):
            pass  # unreadable: rewrite it
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".h5") as tmp:
        with open(tmp, "wb") as f:
            np.save(f, frames, allow_pickle=False)
    return path


def _write_tiff(path: Path, image: np.ndarray) -> None:
    import SimpleITK as sitk

    writer = sitk.ImageFileWriter()
    writer.SetImageIO("TIFFImageIO")
    writer.SetFileName(str(path))
    writer.UseCompressionOn()
    writer.SetCompressor("Deflate")  # lossless; halves a photograph (1.03 MB raw)
    writer.Execute(sitk.GetImageFromArray(np.ascontiguousarray(image)))


def _same_image(path: Path, image: np.ndarray) -> bool:
    import SimpleITK as sitk

    if not path.is_file():
        return False
    try:
        existing = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    except RuntimeError:  # unreadable: rewrite it
        return False
    return existing.dtype == image.dtype and existing.shape == image.shape and np.array_equal(existing, image)


# --------------------------------------------------------------------------------------
# Input checks: the reader fails late, or drops rows silently, on inconsistent input


def _check_arrays(arrays: EcephysSessionArrays, where: Path) -> None:
    """A one-line :class:`NeuropixelsError` naming ``where`` if the arrays cannot form a readable session."""
    def fail(message: str) -> None:
        raise NeuropixelsError(f"{where}: {message}")

    probes, channels, units = arrays.probes, arrays.channels, arrays.units
    if not isinstance(arrays.session_id, (int, np.integer)) or arrays.session_id < 0:
        fail(f"session id {arrays.session_id!r} is not a non-negative integer (allensdk parses it as int)")
    _check_lengths(fail, "probes", probes.probe_ids, probes.names)
    _check_lengths(fail, "channels", channels.channel_ids, channels.probe_ids, channels.local_index,
                   channels.vertical_position, channels.horizontal_position, channels.structure_acronyms)
    _check_lengths(fail, "units", units.unit_ids, units.spike_times, units.peak_channel_ids, units.quality,
                   units.amplitude_cutoff, units.presence_ratio, units.isi_violations, units.snr)
    for label, ids in (("probe", probes.probe_ids), ("probe name", probes.names),
                       ("channel", channels.channel_ids), ("unit", units.unit_ids)):
        if len(set(np.asarray(ids).tolist())) != len(ids):
            fail(f"duplicate {label} ids")
    unknown = set(channels.probe_ids.tolist()) - set(probes.probe_ids.tolist())
    if unknown:
        fail(f"channels on unknown probe(s) {sorted(unknown)[:3]}")
    if len(set(zip(channels.probe_ids.tolist(), channels.local_index.tolist()))) != len(channels.channel_ids):
        fail("two channels share a local_index on one probe")
    if len(channels.local_index) and channels.local_index.min() < 0:
        fail("negative channel local_index")
    bad_areas = {_acronym(a) for a in channels.structure_acronyms} - set(STRUCTURE_IDS) - {OUT_OF_BRAIN}
    if bad_areas:
        fail(f"structure acronym(s) {sorted(bad_areas)} not in STRUCTURE_IDS (use 'None' for out of brain)")
    missing = set(units.peak_channel_ids.tolist()) - set(channels.channel_ids.tolist())
    if missing:
        fail(f"unit peak channel(s) {sorted(missing)[:3]} not in channels")
    for uid, times in zip(units.unit_ids.tolist(), units.spike_times):
        times = np.asarray(times)
        if times.ndim != 1 or not np.issubdtype(times.dtype, np.floating) or not np.all(np.isfinite(times)):
            fail(f"spike times of unit {uid} are not a 1-D finite float array")
        if np.any(np.diff(times) < 0):  # the reader does not sort NWB spikes; counting assumes sorted
            fail(f"spike times of unit {uid} are not sorted")
    if not arrays.presentations:
        fail("no stimulus presentations (allensdk cannot build a stimulus table without one)")
    for name, table in arrays.presentations.items():
        _check_presentations(fail, name, table)
    _check_templates(arrays.scene_templates, where)


def _check_lengths(fail: Any, label: str, *columns: Any) -> None:
    lengths = {len(c) for c in columns}
    if len(lengths) != 1:
        fail(f"{label} arrays have different lengths {sorted(lengths)}")


def _check_presentations(fail: Any, name: str, table: pd.DataFrame) -> None:
    if name.endswith("_presentations"):
        fail(f"presentations key {name!r} must not carry the _presentations suffix")
    absent = [c for c in PRESENTATION_COLUMNS if c not in table.columns]
    if absent:
        fail(f"{name} presentations lack column(s) {absent}")
    for column in table.columns:
        values = table[column]
        if values.dtype == object and not all(isinstance(v, str) for v in values):
            fail(f"{name} column {column!r} mixes text and other values (store text or floats)")
        if values.dtype != object and not np.issubdtype(values.dtype, np.number) and values.dtype != bool:
            fail(f"{name} column {column!r} has unsupported dtype {values.dtype}")


def _check_templates(templates: np.ndarray, where: Path) -> None:
    # Allen's are (118, 918, 1174); a synthetic session may store smaller images of the same aspect.
    if templates.dtype != np.uint8 or templates.ndim != 3 or min(templates.shape, default=0) < 1:
        raise NeuropixelsError(f"{where}: scene templates must be a non-empty uint8 (n, rows, columns) "
                               f"array (Allen's: n x {SCENE_SHAPE[0]} x {SCENE_SHAPE[1]}), "
                               f"got {templates.dtype} {templates.shape}")


# --------------------------------------------------------------------------------------
# Small helpers


def _acronym(value: Any) -> str:
    """Area acronym as the NWB stores it; '' / None / NaN (out of brain) become "None"."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or str(value) in ("", OUT_OF_BRAIN):
        return OUT_OF_BRAIN
    return str(value)


def _channel_rows(channels: Channels, channel_ids: np.ndarray) -> np.ndarray:
    """Row of each channel id in ``channels`` (all ids are known: see _check_arrays)."""
    order = np.argsort(channels.channel_ids, kind="stable")
    return order[np.searchsorted(channels.channel_ids, channel_ids, sorter=order)]


def _rank_within(groups: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... within each group, in input order."""
    ranks = np.zeros(len(groups), dtype=np.int64)
    seen: dict[int, int] = {}
    for i, group in enumerate(groups.tolist()):
        ranks[i] = seen.get(group, 0)
        seen[group] = ranks[i] + 1
    return ranks
