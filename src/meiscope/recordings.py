"""The two kinds of recording behind one small interface: two-photon (dF/F) and Neuropixels (spikes).

A recording kind knows its cache layout (where a session's file lies), how to synthesize and to
download sessions, and how to turn one session into the :class:`~meiscope.dataset.ResponseDataset`
that every later stage reads. ``data.recording`` picks the kind (:func:`recording_of`) and
``data.source`` picks synthetic or real data within it; the stages never ask which kind they got.

- :class:`TwoPhoton`: Allen Brain Observatory (``BrainObservatoryCache``), :mod:`meiscope.responses`,
  :mod:`meiscope.allen`, :mod:`meiscope.synthetic`.
- :class:`Container`: the same, plus the other sessions of each studied session's experiment
  container (every stimulus the cells saw), :mod:`meiscope.container`.
- :class:`Neuropixels`: Allen Visual Coding - Neuropixels (``EcephysProjectCache``),
  :mod:`meiscope.neuropixels`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional, Protocol, Union

from meiscope.config import Params, as_dict

if TYPE_CHECKING:
    import numpy as np

    from meiscope.container.responses import ContainerStimuli
    from meiscope.dataset import ResponseDataset
    from meiscope.ranking import AllenMetrics

# Allen's unit quality metrics set beside meiscope's ranking metrics for real Neuropixels sessions
UNIT_METRIC_COLUMNS = ("snr", "firing_rate", "amplitude_cutoff", "presence_ratio", "isi_violations")


class Recording(Protocol):
    """What the pipeline needs from a recording kind (the methods of :class:`TwoPhoton`)."""

    name: str

    def find_sessions(self, cache_dir: Path) -> list[int]: ...
    def studied_sessions(self, cache_dir: Path) -> list[int]: ...
    def session_file(self, cache_dir: Path, session_id: int) -> Path: ...
    def synthesize(self, params: Params, folder: Path) -> list[int]: ...
    def synthetic_ids(self, params: Params) -> list[int]: ...
    def synthetic_stamp(self, params: Params) -> dict: ...
    def download(self, params: Params, folder: Path) -> list[int]: ...
    def extract(self, params: Params, cache_dir: Path, session_id: int, source: str,
                dataset_path: Path) -> "ResponseDataset": ...
    def allen_metrics(self, cache_dir: Path, session_id: int) -> "Optional[AllenMetrics]": ...
    def training_extras(self, dataset_path: Path, cell_ids: "np.ndarray") -> "Optional[ContainerStimuli]": ...


class _ScenesOnly:
    """Defaults of a recording studied on its natural scenes alone: every session can be studied, and
    nothing but the scenes trains the model (:class:`Container` overrides both)."""

    def studied_sessions(self, cache_dir: Path) -> list[int]:
        """The sessions a study can take (``extract.experiment_id`` or the smallest of them)."""
        return self.find_sessions(cache_dir)

    def training_extras(self, dataset_path: Path, cell_ids: "np.ndarray") -> "Optional[ContainerStimuli]":
        """More training data for the studied cells beside the dataset (none: natural scenes only)."""
        return None


class TwoPhoton(_ScenesOnly):
    """Allen Brain Observatory two-photon sessions: ``ophys_experiment_data/<id>.nwb``, dF/F trial responses."""

    name = "two_photon"

    def find_sessions(self, cache_dir: Path) -> list[int]:
        """Session ids whose NWB file is in ``cache_dir``, sorted."""
        from meiscope.responses import find_sessions

        return find_sessions(cache_dir)

    def session_file(self, cache_dir: Path, session_id: int) -> Path:
        from meiscope.responses import nwb_path

        return nwb_path(cache_dir, session_id)

    def synthesize(self, params: Params, folder: Path) -> list[int]:
        """Write the synthetic cortex's sessions into ``folder``; return their ids."""
        from meiscope.synthetic.cortex import synthesize_sessions

        return synthesize_sessions(params.synthetic, folder)

    def synthetic_ids(self, params: Params) -> list[int]:
        return [params.synthetic.first_experiment_id + i for i in range(params.synthetic.n_sessions)]

    def synthetic_stamp(self, params: Params) -> dict:
        """The params that made the synthetic data (data synthesized under others is rewritten)."""
        return as_dict(params.synthetic)

    def download(self, params: Params, folder: Path) -> list[int]:
        """The experiments ``params.allen`` selects, into ``folder`` (lazily)."""
        from meiscope.allen import download_experiments

        return download_experiments(params.allen, folder)

    def extract(self, params: Params, cache_dir: Path, session_id: int, source: str,
                dataset_path: Path) -> "ResponseDataset":
        """Trial responses of one session, saved to ``dataset_path``."""
        from meiscope.responses import extract_session

        ds = extract_session(cache_dir, session_id, params.extract, source)
        ds.save(dataset_path)
        return ds

    def allen_metrics(self, cache_dir: Path, session_id: int) -> "Optional[AllenMetrics]":
        """Allen's natural-scene metrics of the session's cells (downloaded sessions only)."""
        from meiscope.allen import load_cell_metrics
        from meiscope.ranking import AllenMetrics

        table = load_cell_metrics(cache_dir, session_id)
        return None if table is None else AllenMetrics(table)


class Container(TwoPhoton):
    """Whole Brain Observatory experiment containers: session B's natural scenes are studied, and every
    stimulus of sessions A, B and C (``container`` params) trains the model too (:mod:`meiscope.container`)."""

    name = "container"

    def studied_sessions(self, cache_dir: Path) -> list[int]:
        """The cached sessions with natural scenes (three_session_B)."""
        from meiscope.container.responses import session_info

        return [i for i in self.find_sessions(cache_dir) if session_info(cache_dir, i)[1] == "B"]

    def synthesize(self, params: Params, folder: Path) -> list[int]:
        """Write the synthetic containers (sessions ``container.sessions`` of each) into ``folder``."""
        from meiscope.container.synthetic import synthesize_containers

        return synthesize_containers(params.synthetic, params.synthetic_container, params.container.sessions, folder)

    def synthetic_ids(self, params: Params) -> list[int]:
        from meiscope.container.synthetic import container_ids

        return container_ids(params.synthetic, params.synthetic_container, params.container.sessions)

    def synthetic_stamp(self, params: Params) -> dict:
        """The cortex, the container's stimuli and the sessions written."""
        return {"synthetic": as_dict(params.synthetic), "synthetic_container": as_dict(params.synthetic_container),
                "sessions": list(params.container.sessions)}

    def download(self, params: Params, folder: Path) -> list[int]:
        """The experiments ``params.allen`` selects and the other sessions of their containers."""
        from meiscope.allen import download_containers

        return download_containers(params.allen, params.container.sessions, folder)

    def extract(self, params: Params, cache_dir: Path, session_id: int, source: str,
                dataset_path: Path) -> "ResponseDataset":
        """Session B's natural-scene trials (the dataset) and the container's other stimuli beside it."""
        from meiscope.container.responses import container_path, extract_container

        ds = super().extract(params, cache_dir, session_id, source, dataset_path)
        stimuli = extract_container(cache_dir, ds, self.find_sessions(cache_dir), params.extract, params.container)
        stimuli.save(container_path(dataset_path))
        return ds

    def training_extras(self, dataset_path: Path, cell_ids: "np.ndarray") -> "Optional[ContainerStimuli]":
        """The container's other stimuli of ``cell_ids``, from beside the dataset."""
        from meiscope.container.responses import ContainerStimuli, container_path

        return ContainerStimuli.load(container_path(dataset_path)).select_neurons(cell_ids)


class Neuropixels(_ScenesOnly):
    """Visual Coding - Neuropixels sessions: ``session_<id>/session_<id>.nwb``, spike counts per presentation."""

    name = "neuropixels"

    def find_sessions(self, cache_dir: Path) -> list[int]:
        from meiscope.neuropixels.cache import find_sessions

        return find_sessions(cache_dir)

    def session_file(self, cache_dir: Path, session_id: int) -> Path:
        from meiscope.neuropixels.cache import session_nwb

        return session_nwb(cache_dir, session_id)

    def synthesize(self, params: Params, folder: Path) -> list[int]:
        """Write the synthetic Neuropixels session (the cortex's cells, as spikes) into ``folder``."""
        from meiscope.neuropixels.synthetic import synthesize_neuropixels_session

        return [synthesize_neuropixels_session(params.synthetic, params.synthetic_neuropixels, folder)]

    def synthetic_ids(self, params: Params) -> list[int]:
        return [params.synthetic_neuropixels.session_id]

    def synthetic_stamp(self, params: Params) -> dict:
        """The cortex and the Neuropixels recording of it."""
        return {"synthetic": as_dict(params.synthetic), "synthetic_neuropixels": as_dict(params.synthetic_neuropixels)}

    def download(self, params: Params, folder: Path) -> list[int]:
        """The sessions ``params.neuropixels`` selects, into ``folder`` (lazily)."""
        from meiscope.neuropixels.download import download_sessions

        return download_sessions(params.neuropixels, folder)

    def extract(self, params: Params, cache_dir: Path, session_id: int, source: str,
                dataset_path: Path) -> "ResponseDataset":
        """Natural-scene spike counts saved to ``dataset_path``; gratings and Gabor patches beside it."""
        from meiscope.neuropixels import responses

        ds, other = responses.extract_session(cache_dir, session_id, params.extract, params.neuropixels,
                                              f"{source}_neuropixels")
        ds.save(dataset_path)
        responses.save_other_stimuli(responses.other_stimuli_path(dataset_path), other)
        return ds

    def allen_metrics(self, cache_dir: Path, session_id: int) -> "Optional[AllenMetrics]":
        """Allen's quality metrics of the session's units (downloaded sessions only)."""
        from meiscope.neuropixels.download import load_unit_metrics
        from meiscope.ranking import AllenMetrics

        table = load_unit_metrics(cache_dir, session_id)
        return None if table is None else AllenMetrics(table, "unit_id", UNIT_METRIC_COLUMNS)


def recording_of(params: Params) -> Union[TwoPhoton, Container, Neuropixels]:
    """The recording kind ``params.data.recording`` names."""
    return {"neuropixels": Neuropixels, "container": Container}.get(params.data.recording, TwoPhoton)()
