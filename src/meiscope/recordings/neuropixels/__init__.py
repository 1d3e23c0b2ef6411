"""Allen Visual Coding - Neuropixels as a data source: spiking units, read through allensdk's ecephys API.

Modules: ``cache`` (allensdk's cache layout, opened safely), ``download`` (EcephysProjectCache
selection and lazy download), ``nwb`` (the NWB 2 writer of synthetic sessions), ``stimuli`` (static
gratings and Gabor patches in the scene frame), ``synthetic`` (the simulated session),
``responses`` (spike counts -> the response dataset), ``training`` (the other stimuli that train the
model), ``gabor_check`` (presented Gabor patches vs
the in-silico optimal Gabor), ``unit_metrics`` (Allen's per-unit analysis metrics, beside meiscope's).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from meiscope.recordings.neuropixels.settings import NeuropixelsConfig, SyntheticNeuropixelsConfig
from meiscope.recordings.protocol import ScenesOnly

if TYPE_CHECKING:
    from meiscope.config import Params
    import numpy as np

    from meiscope.dataset import ResponseDataset
    from meiscope.ranking import AllenMetrics
    from meiscope.recordings.training_stimuli import TrainingStimuli

# Allen's unit quality metrics set beside meiscope's ranking metrics for real Neuropixels sessions
UNIT_METRIC_COLUMNS = ("snr", "firing_rate", "amplitude_cutoff", "presence_ratio", "isi_violations")


class Neuropixels(ScenesOnly):
    """Visual Coding - Neuropixels sessions: ``session_<id>/session_<id>.nwb``, spike counts per presentation."""

    name = "neuropixels"
    label = "Neuropixels spike counts"
    # the params sections it owns (recordings/neuropixels/settings.py)
    sections = {"neuropixels": NeuropixelsConfig, "synthetic_neuropixels": SyntheticNeuropixelsConfig}
    synthetic_dir_key, download_dir_key = "synthetic_neuropixels_dir", "neuropixels_dir"

    def find_sessions(self, cache_dir: Path) -> list[int]:
        from meiscope.recordings.neuropixels.cache import find_sessions

        return find_sessions(cache_dir)

    def session_file(self, cache_dir: Path, session_id: int) -> Path:
        from meiscope.recordings.neuropixels.cache import session_nwb

        return session_nwb(cache_dir, session_id)

    def synthesize(self, params: Params, folder: Path) -> list[int]:
        """Write the synthetic Neuropixels session (the cortex's cells, as spikes) into ``folder``."""
        from meiscope.recordings.neuropixels.synthetic import synthesize_neuropixels_session

        return [synthesize_neuropixels_session(params.synthetic, params.synthetic_neuropixels, folder)]

    def synthetic_ids(self, params: Params) -> list[int]:
        return [params.synthetic_neuropixels.session_id]

    def synthetic_stamp(self, params: Params) -> dict:
        """The cortex and the Neuropixels recording of it."""
        from meiscope.config import as_dict, recorded_config  # recorded_config: new keys unrecorded at defaults

        return {"synthetic": recorded_config(params.synthetic),
                "synthetic_neuropixels": as_dict(params.synthetic_neuropixels)}

    def download(self, params: Params, folder: Path) -> list[int]:
        """The sessions ``params.neuropixels`` selects, into ``folder`` (lazily)."""
        from meiscope.recordings.neuropixels.download import download_sessions

        return download_sessions(params.neuropixels, folder)

    def extract(self, params: Params, cache_dir: Path, session_id: int, source: str,
                dataset_path: Path) -> "ResponseDataset":
        """Natural-scene spike counts saved to ``dataset_path``; gratings and Gabor patches beside it, and the
        stimuli of ``neuropixels.training_stimuli`` as a training source (:meth:`training_extras_path`)."""
        from meiscope.recordings.neuropixels import responses

        ds, other, training = responses.extract_session(cache_dir, session_id, params.extract, params.neuropixels,
                                                        f"{source}_neuropixels")
        ds.save(dataset_path)
        responses.save_other_stimuli(responses.other_stimuli_path(dataset_path), other)
        training.save(self.training_extras_path(dataset_path))
        return ds

    def training_extras(self, dataset_path: Path, cell_ids: "np.ndarray") -> "Optional[TrainingStimuli]":
        """The session's other training stimuli of ``cell_ids`` ``(n,)``, from beside the dataset (a TrainingSource)."""
        from meiscope.recordings.training_stimuli import TrainingStimuli

        return TrainingStimuli.load(self.training_extras_path(dataset_path)).select_neurons(cell_ids)

    def training_extras_path(self, dataset_path: Path) -> Path:
        """``<id>.training.npz`` beside the dataset ``<id>.npz``."""
        from meiscope.recordings.neuropixels.training import training_path

        return training_path(dataset_path)

    def training_stimuli(self, params: "Params") -> tuple[str, ...]:
        """The natural scenes and every stimulus of ``neuropixels.training_stimuli``."""
        return ("natural_scenes", *params.neuropixels.training_stimuli)

    def allen_metrics(self, cache_dir: Path, session_id: int) -> "Optional[AllenMetrics]":
        """Allen's per-unit figures of the session: quality metrics (downloaded sessions) and analysis
        metrics (:mod:`.unit_metrics`: downloaded or synthetic sessions), None when it has neither."""
        from meiscope.recordings.neuropixels.unit_metrics import NOT_MEDIANS, allen_unit_table
        from meiscope.ranking import AllenMetrics

        table, columns = allen_unit_table(cache_dir, session_id)
        return None if table is None else AllenMetrics(table, "unit_id", columns,
                                                       tuple(c for c in NOT_MEDIANS if c in columns))

    def check_optimal_gabors(self, params: Params, cache_dir: Path, experiment_id: int, dataset_path: Path,
                             cell_ids: "np.ndarray", image_shape: tuple[int, int], optimal_params: "np.ndarray",
                             out: Path) -> dict[str, Any]:
        """The best presented Gabor patch of each unit vs its optimal Gabor (:mod:`.gabor_check`)."""
        from meiscope.recordings.neuropixels.gabor_check import check_presented_gabors

        return check_presented_gabors(params, cache_dir, experiment_id, dataset_path, cell_ids, image_shape,
                                      optimal_params, out)
