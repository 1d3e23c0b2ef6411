"""Write a session in the NWB 1.x HDF5 layout that allensdk 2.16.2's ``BrainObservatoryNwbDataSet`` reads.

Only the paths that reader uses are written (see /work/shared/docs/allen-brain-observatory.md);
no HDF5 attributes are read by it, so none are written. The gotchas this module handles:

- strings are FIXED-length bytes (``np.bytes_``); a variable-length string breaks the reader;
- the natural-scenes presentation group links to its template with an ``h5py.SoftLink`` (a hard
  link would make the reader find the template's ``data`` instead of the frame indices);
- the device string must match ``(.*?)\\.\\s(.*?)\\sPlease*``; ``general/generated_by``'s last
  element is the pipeline version ("3.0");
- byte-identical output for identical inputs: ``track_times=False`` on every dataset, a fixed
  ``session_start_time`` string, no creation dates, a fixed write order; DVC hashes the file.

Optional parts (``None`` in :class:`SessionArrays`) are simply left out, so tests can write
broken sessions: no natural scenes, a template with the wrong image count, NaN traces.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import h5py
import numpy as np

from meiscope.atomic import atomic_path

PIPELINE = "processing/brain_observatory_pipeline"
NS_GROUP = "stimulus/presentation/natural_scenes_stimulus"
NS_TEMPLATE = "stimulus/templates/natural_scenes_image_stack"
SPONTANEOUS_GROUP = "stimulus/presentation/spontaneous_stimulus"
COMPRESSION_LEVEL = 4


@dataclass
class SessionMetadata:
    """What ``BrainObservatoryNwbDataSet.get_metadata()`` returns, as written to the file."""

    experiment_id: int
    experiment_container_id: int
    session_type: str = "three_session_B"
    targeted_structure: str = "VISp"
    imaging_depth_um: int = 175
    genotype: str = "Cux2-CreERT2/wt;Camk2a-tTA/wt;Ai93(TITL-GCaMP6f)/wt"
    sex: str = "male"
    age_days: int = 104
    indicator: str = "GCaMP6f"
    excitation_lambda: str = "910 nanometers"
    specimen_name: str = "Cux2-CreERT2;Camk2a-tTA;Ai93-synthetic"
    fov: str = "400x400 microns (512 x 512 pixels)"
    # parsed by allensdk as "<device>. <device_name> Please..."
    device_string: str = ("meiscope synthetic two-photon microscope. SYNTH-2P Please note: these data are "
                          "simulated by meiscope, not recorded.")
    session_start_time: str = "2017-03-14 13:02:09"
    generated_by: tuple[str, ...] = ("meiscope synthetic cortex", "3.0")


@dataclass
class StimulusTable:
    """One more stimulus of a session, as ``get_stimulus_table`` / ``get_stimulus_template`` read it.

    Attributes:
        name: allensdk's stimulus name (``static_gratings``, ``natural_movie_one``, ``locally_sparse_noise``...).
        data: ``(n,)`` template frame per presentation (indexed stimuli: movies, sparse noise) or
            ``(n, n_features)`` float feature values (gratings; NaN = blank sweep).
        frame_duration: ``(n, 2)`` int start / end acquisition frames.
        features: the feature names of ``data``'s columns (gratings only).
        template: ``(n_frames, H, W)`` image stack (uint8), or None (gratings have none).
    """

    name: str
    data: np.ndarray
    frame_duration: np.ndarray
    features: tuple[str, ...] = ()
    template: Optional[np.ndarray] = None


@dataclass
class SessionArrays:
    """Everything written to one NWB file. Traces are ``(n_cells, n_frames)``.

    Attributes:
        metadata: :class:`SessionMetadata`.
        cell_ids: ``(n_cells,)`` int cell specimen ids.
        roi_ids: ``(n_cells,)`` str ROI ids.
        timestamps: ``(n_frames,)`` float64 s, the two-photon frame times.
        dff: ``(n_cells, n_frames)`` float32 dF/F (may hold NaNs).
        demixed: ``(n_cells, n_frames)`` float32 demixed ROI fluorescence (also written as the raw trace).
        neuropil: ``(n_cells, n_frames)`` float32 neuropil fluorescence.
        r: ``(n_cells,)`` neuropil contamination ratio.
        natural_scenes: ``(n_presentations, 3)`` int (frame, start, end); frame -1 = blank;
            start/end are acquisition-frame indices. None: no natural-scenes stimulus.
        template: ``(n_images, H, W)`` float32 holding 0-255 integers. None: not written.
        spontaneous: ``(n_epochs, 2)`` int (start, end) frame indices of gray-screen epochs.
        running_speed: ``(n_frames,)`` float cm/s.
        max_projection: ``(h, w)`` float32 maximum-intensity projection of the field of view.
        motion_correction: ``(n_frames, 2)`` float x, y translation (pixels).
        stimuli: the session's other stimuli (:class:`StimulusTable`), written after the natural scenes.
    """

    metadata: SessionMetadata
    cell_ids: np.ndarray
    roi_ids: np.ndarray
    timestamps: np.ndarray
    dff: np.ndarray
    demixed: np.ndarray
    neuropil: np.ndarray
    r: np.ndarray
    natural_scenes: Optional[np.ndarray] = None
    template: Optional[np.ndarray] = None
    spontaneous: Optional[np.ndarray] = None
    running_speed: Optional[np.ndarray] = None
    max_projection: Optional[np.ndarray] = None
    motion_correction: Optional[np.ndarray] = None
    stimuli: tuple[StimulusTable, ...] = ()
    extra: dict = field(default_factory=dict)  # path -> array, written as-is (for tests)


def _bytes(value: str) -> np.bytes_:
    return np.bytes_(value.encode("utf-8"))


def _string(f: h5py.File, path: str, value: str) -> None:
    f.create_dataset(path, data=_bytes(value), track_times=False)


def _array(f: h5py.File, path: str, data: np.ndarray, compress: bool = False,
           chunks: Optional[tuple[int, ...]] = None) -> None:
    data = np.asarray(data)
    if compress and data.size > 0:
        f.create_dataset(path, data=data, chunks=chunks or True, compression="gzip",
                         compression_opts=COMPRESSION_LEVEL, shuffle=True, track_times=False)
    else:
        f.create_dataset(path, data=data, track_times=False)


def _trace(f: h5py.File, path: str, data: np.ndarray) -> None:
    """A ``(n_cells, n_frames)`` trace: one chunk per cell (the reader fetches rows)."""
    data = np.ascontiguousarray(data, dtype=np.float32)
    _array(f, path, data, compress=True, chunks=(1, data.shape[1]) if data.ndim == 2 and data.shape[1] else None)


def _write_metadata(f: h5py.File, m: SessionMetadata) -> None:
    _string(f, "session_start_time", m.session_start_time)
    _string(f, "identifier", f"meiscope-synthetic-{m.experiment_id}")
    _string(f, "nwb_version", "NWB-1.0.6")
    _string(f, "session_description", "meiscope synthetic cortex: simulated natural-scenes session")
    _string(f, "general/subject/age", f"{m.age_days} days")
    _string(f, "general/subject/sex", m.sex)
    _string(f, "general/subject/genotype", m.genotype)
    _string(f, "general/subject/species", "Mus musculus")
    plane = "general/optophysiology/imaging_plane_1"
    _string(f, f"{plane}/imaging depth", f"{m.imaging_depth_um} microns")
    _string(f, f"{plane}/location", m.targeted_structure)
    _string(f, f"{plane}/excitation_lambda", m.excitation_lambda)
    _string(f, f"{plane}/indicator", m.indicator)
    _string(f, "general/session_id", str(m.experiment_id))
    _string(f, "general/experiment_container_id", str(m.experiment_container_id))
    _string(f, "general/session_type", m.session_type)
    _string(f, "general/specimen_name", m.specimen_name)
    _string(f, "general/fov", m.fov)
    _string(f, "general/devices/2-photon microscope", m.device_string)
    width = max(len(s.encode("utf-8")) for s in m.generated_by)
    f.create_dataset("general/generated_by", data=np.array([s.encode("utf-8") for s in m.generated_by],
                                                            dtype=f"S{width}"), track_times=False)


def _write_stimulus_table(f: h5py.File, group: str, data: np.ndarray, frame_duration: np.ndarray,
                          timestamps: np.ndarray) -> None:
    _array(f, f"{group}/data", data)
    _array(f, f"{group}/frame_duration", np.asarray(frame_duration, dtype=np.int64))
    starts = np.clip(frame_duration[:, 0], 0, max(len(timestamps) - 1, 0))
    _array(f, f"{group}/timestamps", timestamps[starts] if len(timestamps) else np.zeros(len(data)))
    _array(f, f"{group}/num_samples", np.int64(len(data)))


def _write_other_stimulus(f: h5py.File, stimulus: StimulusTable, timestamps: np.ndarray) -> None:
    group = f"stimulus/presentation/{stimulus.name}_stimulus"
    if stimulus.template is not None:
        template_group = f"stimulus/templates/{stimulus.name}_image_stack"
        template = np.ascontiguousarray(stimulus.template)
        _array(f, f"{template_group}/data", template, compress=True, chunks=(1, *template.shape[1:]))
    _write_stimulus_table(f, group, np.asarray(stimulus.data), np.asarray(stimulus.frame_duration), timestamps)
    if stimulus.features:
        width = max(len(name) for name in stimulus.features)
        _array(f, f"{group}/features", np.array([n.encode("utf-8") for n in stimulus.features], dtype=f"S{width}"))
    if stimulus.template is not None:  # a soft link: a hard one would be searched for `data` too
        f[f"{group}/indexed_timeseries"] = h5py.SoftLink(f"/{template_group}")


def write_session_nwb(path: Path, arrays: SessionArrays, include_natural_scenes: bool = True) -> Path:
    """Write ``arrays`` as an Allen Brain Observatory NWB file at ``path`` (atomically).

    Args:
        include_natural_scenes: False leaves out the natural-scenes table and template even when
            ``arrays`` has them (a session without the stimulus, for error-path tests).

    Returns:
        ``path``.
    """
    path = Path(path)
    a = arrays
    ts = np.asarray(a.timestamps, dtype=np.float64)
    with atomic_path(path, suffix=".nwb") as tmp:
        with h5py.File(tmp, "w", libver="earliest") as f:
            _write_metadata(f, a.metadata)

            seg = f"{PIPELINE}/ImageSegmentation"
            _array(f, f"{seg}/cell_specimen_ids", np.asarray(a.cell_ids, dtype=np.int64))
            roi = [str(r).encode("utf-8") for r in a.roi_ids]
            _array(f, f"{seg}/roi_ids", np.array(roi, dtype=f"S{max((len(r) for r in roi), default=1)}"))
            if a.max_projection is not None:
                _array(f, f"{seg}/imaging_plane_1/reference_images/maximum_intensity_projection_image/data",
                       np.asarray(a.max_projection, dtype=np.float32), compress=True)

            _trace(f, f"{PIPELINE}/DfOverF/imaging_plane_1/data", a.dff)
            _array(f, f"{PIPELINE}/DfOverF/imaging_plane_1/timestamps", ts)
            fl = f"{PIPELINE}/Fluorescence"
            _trace(f, f"{fl}/imaging_plane_1_demixed_signal/data", a.demixed)
            _array(f, f"{fl}/imaging_plane_1_demixed_signal/timestamps", ts)
            _trace(f, f"{fl}/imaging_plane_1_neuropil_response/data", a.neuropil)
            _array(f, f"{fl}/imaging_plane_1_neuropil_response/r", np.asarray(a.r, dtype=np.float64))
            _array(f, f"{fl}/imaging_plane_1_neuropil_response/timestamps", ts)
            # the raw ROI trace: no overlapping ROIs are simulated, so raw == demixed (a link, not a copy)
            f[f"{fl}/imaging_plane_1/data"] = h5py.SoftLink(f"/{fl}/imaging_plane_1_demixed_signal/data")
            _array(f, f"{fl}/imaging_plane_1/timestamps", ts)

            if a.running_speed is not None:
                _array(f, f"{PIPELINE}/BehavioralTimeSeries/running_speed/data",
                       np.asarray(a.running_speed, dtype=np.float64), compress=True)
                _array(f, f"{PIPELINE}/BehavioralTimeSeries/running_speed/timestamps", ts, compress=True)
            if a.motion_correction is not None:
                mc = f"{PIPELINE}/MotionCorrection/2p_image_series/xy_translation"
                _array(f, f"{mc}/data", np.asarray(a.motion_correction, dtype=np.float64), compress=True)
                _array(f, f"{mc}/timestamps", ts, compress=True)
                _array(f, f"{mc}/feature_description", np.array([b"x_motion", b"y_motion"], dtype="S8"))

            if include_natural_scenes and a.template is not None:
                template = np.ascontiguousarray(a.template, dtype=np.float32)
                _array(f, f"{NS_TEMPLATE}/data", template, compress=True,
                       chunks=(1, *template.shape[1:]) if template.ndim == 3 and template.size else None)
            if include_natural_scenes and a.natural_scenes is not None:
                table = np.asarray(a.natural_scenes, dtype=np.int64)
                _write_stimulus_table(f, NS_GROUP, table[:, 0].astype(np.int32), table[:, 1:3], ts)
                if a.template is not None:
                    f[f"{NS_GROUP}/indexed_timeseries"] = h5py.SoftLink(f"/{NS_TEMPLATE}")
            if a.spontaneous is not None and len(a.spontaneous):
                # allensdk pairs +1 (start) and -1 (end) events: row k's frame_duration[:, 0] is its frame
                epochs = np.asarray(a.spontaneous, dtype=np.int64)
                events = np.tile(np.array([1, -1], dtype=np.int32), len(epochs))
                frames = epochs.reshape(-1)
                _write_stimulus_table(f, SPONTANEOUS_GROUP, events, np.stack([frames, frames], axis=1), ts)
            for stimulus in a.stimuli:
                _write_other_stimulus(f, stimulus, ts)
            if "stimulus/presentation" not in f:
                f.create_group("stimulus/presentation")  # list_stimuli() needs the group

            for key in sorted(a.extra):
                _array(f, key, a.extra[key])
    return path
