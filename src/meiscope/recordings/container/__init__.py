"""Every stimulus the cells saw: the sessions of one Allen Brain Observatory experiment container.

One container is one imaging plane of one mouse, recorded in three sessions with the same cells
(same ``cell_specimen_id``; not every cell is found in every session):

- ``three_session_A``: drifting gratings, natural movies one and three, spontaneous activity;
- ``three_session_B``: static gratings, natural scenes, natural movie one, spontaneous activity;
- ``three_session_C``: locally sparse noise, natural movies one and two, spontaneous activity.

Modules: :mod:`.layout` (the sessions' stimulus schedules), :mod:`.synthetic` (the simulated
container in Allen's NWB layout), :mod:`.responses` (every stimulus as model-space images and
responses of the studied session's cells).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

from meiscope.recordings.container.settings import ContainerConfig, SyntheticContainerConfig
from meiscope.recordings.two_photon import TwoPhoton

if TYPE_CHECKING:
    from meiscope.config import Params
    import numpy as np

    from meiscope.dataset import ResponseDataset
    from meiscope.recordings.training_stimuli import TrainingStimuli


class Container(TwoPhoton):
    """Whole Brain Observatory experiment containers: session B's natural scenes are studied, and every
    stimulus of sessions A, B and C (``container`` params) trains the model too (:mod:`meiscope.recordings.container`)."""

    name = "container"
    label = "two-photon dF/F, every stimulus of the experiment container"
    # the params sections it owns (recordings/container/settings.py); it reads its parent's too
    sections = {"container": ContainerConfig, "synthetic_container": SyntheticContainerConfig}
    synthetic_dir_key = "synthetic_container_dir"

    def studied_sessions(self, cache_dir: Path) -> list[int]:
        """The cached sessions with natural scenes (three_session_B)."""
        from meiscope.recordings.container.responses import session_info

        return [i for i in self.find_sessions(cache_dir) if session_info(cache_dir, i)[1] == "B"]

    def training_stimuli(self, params: Params) -> tuple[str, ...]:
        """Every stimulus of ``container.stimuli``: the model trains on all of them."""
        return tuple(params.container.stimuli)

    def synthesize(self, params: Params, folder: Path) -> list[int]:
        """Write the synthetic containers (sessions ``container.sessions`` of each) into ``folder``."""
        from meiscope.recordings.container.synthetic import synthesize_containers

        return synthesize_containers(params.synthetic, params.synthetic_container, params.container.sessions, folder)

    def synthetic_ids(self, params: Params) -> list[int]:
        from meiscope.recordings.container.synthetic import container_ids

        return container_ids(params.synthetic, params.synthetic_container, params.container.sessions)

    def synthetic_stamp(self, params: Params) -> dict:
        """The cortex, the container's stimuli and the sessions written."""
        from meiscope.config import as_dict, recorded_config  # recorded_config: new keys unrecorded at defaults

        return {"synthetic": recorded_config(params.synthetic),
                "synthetic_container": as_dict(params.synthetic_container),
                "sessions": list(params.container.sessions)}

    def download(self, params: Params, folder: Path) -> list[int]:
        """The experiments ``params.allen`` selects and the other sessions of their containers."""
        from meiscope.recordings.two_photon.download import download_containers

        return download_containers(params.allen, params.container.sessions, folder)

    def extract(self, params: Params, cache_dir: Path, session_id: int, source: str,
                dataset_path: Path) -> "ResponseDataset":
        """Session B's natural-scene trials (the dataset) and the container's other stimuli beside it."""
        from meiscope.recordings.container.responses import extract_container

        ds = super().extract(params, cache_dir, session_id, source, dataset_path)
        stimuli = extract_container(cache_dir, ds, self.find_sessions(cache_dir), params.extract, params.container)
        stimuli.save(self.training_extras_path(dataset_path))
        return ds

    def training_extras(self, dataset_path: Path, cell_ids: "np.ndarray") -> "Optional[TrainingStimuli]":
        """The container's other stimuli of ``cell_ids`` ``(n,)``, from beside the dataset (a TrainingSource)."""
        from meiscope.recordings.training_stimuli import TrainingStimuli

        return TrainingStimuli.load(self.training_extras_path(dataset_path)).select_neurons(cell_ids)

    def training_extras_path(self, dataset_path: Path) -> Path:
        """``<id>.container.npz`` beside the dataset ``<id>.npz``."""
        from meiscope.recordings.container.responses import container_path

        return container_path(dataset_path)
