"""What every Allen download shares, whichever recording it is: errors, the offline hint, checks of
downloaded files, a progress bar for files allensdk streams without one, and metrics tables.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Optional

import pandas as pd
from tqdm import tqdm

from meiscope.errors import MeiscopeError

API_HOST = "api.brain-map.org"
OFFLINE_HINT = ("Offline? Use the synthetic source: set data.source: synthetic in params.yaml "
                "(the default) and run `meiscope synthesize`")


class DownloadError(MeiscopeError):
    """The Allen API could not be reached, or a downloaded / cached file is unusable."""


class SelectionError(MeiscopeError, ValueError):
    """The ``allen:`` section of params.yaml selects no (or unknown) natural-scenes experiments."""


def is_readable_hdf5(path: Path) -> bool:
    """True if ``path`` opens as an HDF5 file (a truncated download does not)."""
    import h5py

    try:
        with h5py.File(path, "r"):
            return True
    except (OSError, ValueError):
        return False


def reason(err: BaseException) -> str:
    """One line describing ``err`` (type and first line of its message, shortened)."""
    text = " ".join(str(err).split())
    text = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return text if len(text) <= 240 else text[:237] + "..."


def remove(path: Path) -> None:
    """Delete ``path`` if it exists."""
    try:
        path.unlink()
    except FileNotFoundError:
        pass


class GrowthBar:
    """Show the bytes allensdk has streamed into ``path`` so far (it shows nothing itself)."""

    def __init__(self, path: Path, desc: str, enabled: bool):
        self.path, self.desc, self.enabled = path, desc, enabled
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def _watch(self) -> None:
        with tqdm(desc=self.desc, unit="B", unit_scale=True, leave=False) as bar:
            while not self._stop.wait(0.5):
                try:
                    size = os.path.getsize(self.path)
                except OSError:
                    continue
                bar.update(size - bar.n)

    def __enter__(self) -> "GrowthBar":
        if self.enabled:
            self._thread = threading.Thread(target=self._watch, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def read_metrics_csv(path: Path, what: str) -> Optional[pd.DataFrame]:
    """A metrics table that ``meiscope download`` wrote, or None if absent; a broken one is a one-line error."""
    if not path.is_file():
        return None
    try:
        return pd.read_csv(path)
    except (ValueError, OSError) as err:  # pandas' EmptyDataError / ParserError are ValueErrors
        raise DownloadError(f"{path}: unreadable {what} ({reason(err)}); "
                            "delete it and run `meiscope download` again") from None
