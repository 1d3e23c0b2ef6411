"""A recording kind that exists only for the tests: the whole of what adding a recording takes.

Its sessions are tiny ``toy_<id>.npz`` files (presentations of small random images and the responses
of a few cells, the first ``N_TUNED`` of which respond reliably to the image). Registering it is one
line (``RECORDINGS["toy"] = Toy``); no stage, config or model module knows about it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from meiscope.errors import MeiscopeError
from meiscope.recordings.protocol import ScenesOnly

N_CELLS, N_TUNED, N_IMAGES, REPEATS = 12, 4, 20, 10


class Toy(ScenesOnly):
    """Sessions written and read by this package alone."""

    name = "toy"
    label = "toy responses"

    def find_sessions(self, cache_dir: Path) -> list[int]:
        return sorted(int(p.stem.split("_")[1]) for p in Path(cache_dir).glob("toy_*.npz"))

    def session_file(self, cache_dir: Path, session_id: int) -> Path:
        return Path(cache_dir) / f"toy_{session_id}.npz"

    def synthesize(self, params, folder: Path) -> list[int]:
        """One session: ``N_TUNED`` cells whose response is a fixed function of the image, the rest noise."""
        rng = np.random.default_rng(params.synthetic.seed)
        templates = rng.integers(0, 256, size=(N_IMAGES, 16, 16), dtype=np.uint8)
        frames = np.concatenate([np.repeat(np.arange(N_IMAGES), REPEATS), np.full(REPEATS, -1)])
        frames = frames[rng.permutation(len(frames))]
        tuning = rng.normal(size=(N_IMAGES + 1, N_CELLS)) * 3.0  # row -1: the blank
        tuning[:, N_TUNED:] = 0.0
        responses = tuning[frames] + rng.normal(size=(len(frames), N_CELLS))
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(self.session_file(folder, 1), frames=frames, responses=responses.astype(np.float32),
                 templates=templates, cell_ids=np.arange(100, 100 + N_CELLS))
        return [1]

    def synthetic_ids(self, params) -> list[int]:
        return [1]

    def synthetic_stamp(self, params) -> dict:
        return {"toy": params.synthetic.seed}

    def download(self, params, folder: Path) -> list[int]:
        raise MeiscopeError("toy recording: nothing to download")

    def extract(self, params, cache_dir: Path, session_id: int, source: str, dataset_path: Path):
        from meiscope.responses import dataset_from_trials

        with np.load(self.session_file(cache_dir, session_id)) as f:
            templates = f["templates"]
            ds = dataset_from_trials(session_id, f["frames"], f["responses"], lambda idx: templates[idx].astype(np.float32),
                                     f["cell_ids"], params.extract, f"{source}_toy")
        ds.save(dataset_path)
        return ds

    def allen_metrics(self, cache_dir: Path, session_id: int) -> Optional[object]:
        return None
