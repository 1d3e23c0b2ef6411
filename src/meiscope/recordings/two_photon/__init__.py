"""Allen Brain Observatory two-photon sessions: ``ophys_experiment_data/<id>.nwb``, dF/F trial responses.

Modules: :mod:`.download` (BrainObservatoryCache selection and lazy download). The reading of a
session's NWB file is :mod:`meiscope.responses`; the synthetic sessions come from :mod:`meiscope.synthetic`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

from meiscope.recordings.protocol import ScenesOnly
from meiscope.recordings.two_photon.settings import AllenConfig

if TYPE_CHECKING:
    from meiscope.config import Params
    from meiscope.dataset import ResponseDataset
    from meiscope.ranking import AllenMetrics


class TwoPhoton(ScenesOnly):
    """Allen Brain Observatory two-photon sessions: ``ophys_experiment_data/<id>.nwb``, dF/F trial responses."""

    name = "two_photon"
    label = "two-photon dF/F"
    sections = {"allen": AllenConfig}  # the params sections it owns (recordings/two_photon/settings.py)

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
        from meiscope.config import recorded_config  # in-family defaults of new keys unrecorded

        return recorded_config(params.synthetic)

    def download(self, params: Params, folder: Path) -> list[int]:
        """The experiments ``params.allen`` selects, into ``folder`` (lazily)."""
        from meiscope.recordings.two_photon.download import download_experiments

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
        from meiscope.recordings.two_photon.download import load_cell_metrics
        from meiscope.ranking import AllenMetrics

        table = load_cell_metrics(cache_dir, session_id)
        return None if table is None else AllenMetrics(table)
