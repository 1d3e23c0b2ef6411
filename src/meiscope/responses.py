"""The `extract` stage: per-trial responses and model-space images from an Allen-layout session.

Both data sources (real Allen downloads and the synthetic cortex) are read by allensdk's own
reader, ``BrainObservatoryCache(manifest).get_ophys_experiment_data(id)``, so the code below
never knows which source wrote the file.

Trial response = mean dF/F over ``response_window`` frames after onset minus the mean over
``baseline_window`` frames before it. The default window, frames [1, 8), covers the 250 ms
presentation (7-8 frames at ~30 Hz) shifted by one frame for the calcium rise; the default
baseline, the 2 frames just before onset, removes most of the decaying response to the previous
image (presentations are back to back). Allen's own analysis uses [0, 14) against the 28 frames
before onset, which mixes in the responses to the 4 preceding images.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from meiscope.config import ExtractConfig, SplitConfig
from meiscope.dataset import ResponseDataset
from meiscope.errors import MeiscopeError

log = logging.getLogger(__name__)

STIMULUS = "natural_scenes"


class SessionError(MeiscopeError):
    """A session file is missing, unreadable or lacks what the pipeline needs."""


@dataclass
class RawSession:
    """What the extract stage reads from one NWB session.

    Attributes:
        experiment_id: ophys experiment id.
        dff: ``(n_cells, n_frames)`` float32 dF/F traces.
        cell_ids: ``(n_cells,)`` int cell specimen ids.
        table_frame: ``(n_trials,)`` int image index per presentation (-1 = blank).
        table_start: ``(n_trials,)`` int acquisition frame of each onset.
        template: ``(n_images, height, width)`` float32 holding 0-255 values.
    """

    experiment_id: int
    dff: np.ndarray
    cell_ids: np.ndarray
    table_frame: np.ndarray
    table_start: np.ndarray
    template: np.ndarray


def nwb_path(cache_dir: Path, experiment_id: int) -> Path:
    """Where allensdk's cache keeps the NWB file of ``experiment_id``."""
    return Path(cache_dir) / "ophys_experiment_data" / f"{experiment_id}.nwb"


def find_sessions(cache_dir: Path) -> list[int]:
    """Experiment ids with an NWB file in the cache, sorted."""
    folder = Path(cache_dir) / "ophys_experiment_data"
    return sorted(int(p.stem) for p in folder.glob("*.nwb") if p.stem.isdigit())


def open_session(cache_dir: Path, experiment_id: int) -> Any:
    """allensdk's ``BrainObservatoryNwbDataSet`` of a cached session (a one-line SessionError if it cannot be)."""
    path = nwb_path(cache_dir, experiment_id)
    if not path.is_file():
        raise SessionError(f"{path}: no such session file (run `meiscope synthesize` or `meiscope download`)")
    _check_hdf5(path)
    from allensdk.core.brain_observatory_cache import BrainObservatoryCache

    manifest = Path(cache_dir) / "manifest.json"
    try:
        # The file exists, so allensdk opens it without any network access.
        return BrainObservatoryCache(manifest_file=str(manifest)).get_ophys_experiment_data(experiment_id)
    except Exception as err:
        raise SessionError(f"{path}: allensdk cannot open the session ({type(err).__name__}: {err})") from None


def read_session(cache_dir: Path, experiment_id: int) -> RawSession:
    """Open one session through allensdk and check every field the pipeline uses."""
    path = nwb_path(cache_dir, experiment_id)
    data_set = open_session(cache_dir, experiment_id)
    try:
        stimuli = data_set.list_stimuli()
        if STIMULUS not in stimuli:
            session_type = data_set.get_metadata().get("session_type", "unknown")
            if session_type == "three_session_B":
                raise SessionError(f"{path}: says it is a three_session_B session but has no natural_scenes stimulus "
                                   f"table (stimuli: {', '.join(stimuli) or 'none'}): the file is incomplete or damaged")
            raise SessionError(f"{path}: a {session_type} session has no natural_scenes stimulus (only three_session_B "
                               f"sessions show natural scenes; stimuli: {', '.join(stimuli) or 'none'})")
        table = data_set.get_stimulus_table(STIMULUS)
        template = data_set.get_stimulus_template(STIMULUS)
        _, dff = data_set.get_dff_traces()
        cell_ids = np.asarray(data_set.get_cell_specimen_ids(), dtype=np.int64)
    except SessionError:
        raise
    except Exception as err:
        raise SessionError(f"{path}: cannot read the natural-scenes data ({type(err).__name__}: {err})") from None
    session = RawSession(experiment_id=experiment_id, dff=np.asarray(dff, dtype=np.float32), cell_ids=cell_ids,
                         table_frame=table["frame"].to_numpy(dtype=np.int64),
                         table_start=table["start"].to_numpy(dtype=np.int64),
                         template=np.asarray(template, dtype=np.float32))
    _check_consistency(path, session)
    return session


def _check_hdf5(path: Path) -> None:
    import h5py

    try:
        with h5py.File(path, "r"):
            pass
    except OSError as err:
        raise SessionError(f"{path}: not a readable NWB (HDF5) file, corrupt or truncated ({err})") from None


def _check_consistency(path: Path, s: RawSession) -> None:
    n_images = s.template.shape[0]
    if s.template.ndim != 3:
        raise SessionError(f"{path}: the natural-scenes template has shape {s.template.shape}, expected (images, height, width)")
    if s.table_frame.max() >= n_images or s.table_frame.min() < -1:
        raise SessionError(f"{path}: the stimulus table shows images up to {s.table_frame.max()} "
                           f"but the template holds {n_images} images")
    if s.dff.shape[0] != len(s.cell_ids):
        raise SessionError(f"{path}: {s.dff.shape[0]} dF/F traces for {len(s.cell_ids)} cell ids")


def drop_nan_cells(dff: np.ndarray, cell_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Remove cells whose dF/F has any NaN. Returns ``(dff, kept_ids, dropped_ids)``."""
    bad = np.isnan(dff).any(axis=1)
    return dff[~bad], cell_ids[~bad], cell_ids[bad]


def trial_responses(dff: np.ndarray, onsets: np.ndarray, response_window: list[int],
                    baseline_window: list[int]) -> np.ndarray:
    """Mean dF/F in the response window minus the mean in the baseline window.

    Args:
        dff: ``(n_cells, n_frames)`` traces.
        onsets: ``(n_trials,)`` acquisition frame of each stimulus onset.
        response_window: ``[start, stop)`` frames relative to onset (``start >= 0``).
        baseline_window: ``[start, stop)`` frames relative to onset (``stop <= 0``).

    Returns:
        ``(n_trials, n_cells)`` float32 responses.
    """
    # Cumulative sums make every window mean O(1) per trial, whatever the window length.
    csum = np.concatenate([np.zeros((dff.shape[0], 1)), np.cumsum(dff, axis=1, dtype=np.float64)], axis=1)

    def window_mean(start: int, stop: int) -> np.ndarray:
        return ((csum[:, onsets + stop] - csum[:, onsets + start]) / (stop - start)).T

    return (window_mean(*response_window) - window_mean(*baseline_window)).astype(np.float32)


def prepare_images(template: np.ndarray, crop: list[float], shape: tuple[int, int]) -> np.ndarray:
    """Crop (fractions top, bottom, left, right) and area-downsample to ``shape``.

    Returns ``(n_images, height, width)`` float32 screen pixels (0-255) at model resolution.
    """
    import torch
    import torch.nn.functional as F

    n, h, w = template.shape
    top, bottom, left, right = crop
    cropped = template[:, int(round(top * h)):int(round(bottom * h)), int(round(left * w)):int(round(right * w))]
    with torch.inference_mode():
        small = F.interpolate(torch.from_numpy(np.ascontiguousarray(cropped))[:, None], size=shape, mode="area")
    return small[:, 0].numpy().astype(np.float32)


def split_images(n_images: int, cfg: SplitConfig) -> np.ndarray:
    """Seeded split by image: ``(n_images,)`` array of ``train`` / ``val`` / ``test``."""
    order = np.random.default_rng(cfg.seed).permutation(n_images)
    n_test = max(1, int(round(cfg.test_fraction * n_images)))
    n_val = max(1, int(round(cfg.val_fraction * n_images)))
    if n_test + n_val >= n_images:
        raise MeiscopeError(f"extract.split: {n_images} images cannot give {n_val} val + {n_test} test images "
                            "and keep any for training")
    split = np.full(n_images, "train", dtype="<U5")
    split[order[:n_test]] = "test"
    split[order[n_test:n_test + n_val]] = "val"
    return split


def within_recording(onsets: np.ndarray, n_frames: int, cfg: ExtractConfig) -> np.ndarray:
    """``(n_trials,)`` bool: the trial's baseline and response windows lie inside the ``n_frames`` recorded."""
    return (onsets + cfg.baseline_window[0] >= 0) & (onsets + cfg.response_window[1] <= n_frames)


def extract_session(cache_dir: Path, experiment_id: int, cfg: ExtractConfig, source: str) -> ResponseDataset:
    """Read one session and build its :class:`ResponseDataset`."""
    session = read_session(cache_dir, experiment_id)
    path = nwb_path(cache_dir, experiment_id)
    dff, cell_ids, dropped = drop_nan_cells(session.dff, session.cell_ids)
    if dropped.size:
        log.warning("%s: dropped %d of %d cells whose dF/F traces contain NaNs", path, dropped.size, len(session.cell_ids))
    if not cell_ids.size:
        raise SessionError(f"{path}: every cell's dF/F trace contains NaNs; nothing to extract")

    onsets = session.table_start
    n_frames = dff.shape[1]
    past_end = int((onsets >= n_frames).sum())
    if past_end:
        raise SessionError(f"{path}: {past_end} of {len(onsets)} natural-scenes presentations start at or after the "
                           f"last dF/F frame ({n_frames} frames): the stimulus table does not belong to these traces")
    in_range = within_recording(onsets, n_frames, cfg)
    if not in_range.all():
        log.warning("%s: %d trials too close to the recording's edges were skipped", path, (~in_range).sum())
    onsets, frames = onsets[in_range], session.table_frame[in_range]
    responses = trial_responses(dff, onsets, cfg.response_window, cfg.baseline_window)
    return dataset_from_trials(experiment_id, frames, responses, lambda shown: session.template[shown], cell_ids,
                               cfg, source, dropped)


def dataset_from_trials(experiment_id: int, frames: np.ndarray, responses: np.ndarray,
                        templates: Callable[[np.ndarray], np.ndarray], cell_ids: np.ndarray, cfg: ExtractConfig,
                        source: str, dropped_cell_ids: np.ndarray | None = None) -> ResponseDataset:
    """The :class:`ResponseDataset` of a natural-scenes session's presentations (any recording).

    Args:
        frames: ``(n_presentations,)`` template index shown (-1 = blank).
        responses: ``(n_presentations, n_cells)`` the response to each presentation.
        templates: the 0-255 template images ``(n, H, W)`` of the given template indices.
    """
    shown = np.unique(frames[frames >= 0])  # template images that were presented
    pixels = prepare_images(templates(shown), cfg.crop, (cfg.image_height, cfg.image_width))
    pixel_mean, pixel_std = float(pixels.mean()), float(pixels.std())
    row_of_image = {int(img): row for row, img in enumerate(shown)}
    is_image = frames >= 0
    return ResponseDataset(
        experiment_id=experiment_id,
        images=((pixels - pixel_mean) / pixel_std).astype(np.float32),
        image_ids=shown.astype(np.int64),
        trial_image=np.array([row_of_image[int(f)] for f in frames[is_image]], dtype=np.int64),
        responses=responses[is_image],
        blank_responses=responses[~is_image],
        cell_ids=cell_ids,
        split=split_images(len(shown), cfg.split),
        dropped_cell_ids=(np.zeros(0) if dropped_cell_ids is None else dropped_cell_ids).astype(np.int64),
        pixel_mean=pixel_mean, pixel_std=pixel_std, source=source)


def study_session(cache_dir: Path, cfg: ExtractConfig, ids: list[int] | None = None) -> int:
    """The experiment later stages study: ``extract.experiment_id`` or the smallest id in the cache.

    ``ids``: the sessions in the cache when they are not two-photon NWB files (Neuropixels sessions).
    """
    ids = find_sessions(cache_dir) if ids is None else ids
    if cfg.experiment_id is not None:
        if cfg.experiment_id not in ids:
            raise SessionError(f"extract.experiment_id {cfg.experiment_id} has no NWB file in {cache_dir}")
        return cfg.experiment_id
    if not ids:
        raise SessionError(f"{cache_dir}: no sessions in the cache (run `meiscope synthesize` or `meiscope download`)")
    return ids[0]
