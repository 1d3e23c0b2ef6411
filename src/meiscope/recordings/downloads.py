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

from meiscope.digests import file_digest
from meiscope.errors import MeiscopeError

API_HOST = "api.brain-map.org"
OFFLINE_HINT = ("Offline? Use the synthetic source: set data.source: synthetic in params.yaml "
                "(the default) and run `meiscope synthesize`")


class DownloadError(MeiscopeError):
    """The Allen API could not be reached, or a downloaded / cached file is unusable."""


class SelectionError(MeiscopeError, ValueError):
    """The ``allen:`` section of params.yaml selects no (or unknown) natural-scenes experiments."""


def is_readable_hdf5(path: Path, groups: tuple[str, ...] = ()) -> bool:
    """True if ``path`` is a whole HDF5 file with the top-level ``groups`` (a truncated download is not)."""
    return hdf5_problem(path, groups) is None


def hdf5_problem(path: Path, groups: tuple[str, ...] = (), size: Optional[int] = None,
                 sha256: Optional[str] = None) -> Optional[str]:
    """Why ``path`` is not a whole HDF5 file as expected, in a few words, or None if it is.

    Checks, cheapest first: the byte ``size`` (when known), that h5py opens it (HDF5 keeps the file's
    length in its superblock), the top-level ``groups``, that every dataset's bytes lie inside the
    file (a file cut short after its metadata was written), and the ``sha256`` (when known).
    """
    import h5py

    path = Path(path)
    try:
        actual = path.stat().st_size
    except OSError as err:
        return f"cannot read it: {reason(err)}"
    if size is not None and actual != size:
        return f"{actual} bytes, expected {size}"
    try:
        with h5py.File(path, "r") as f:
            missing = [g for g in groups if not isinstance(f.get(g), h5py.Group)]
            if missing:
                return f"no top-level group {', '.join(missing)}"
            beyond = _data_beyond(f, actual)
            if beyond is not None:
                return f"the data of {beyond} lie beyond the end of the file"
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        return f"h5py cannot read it: {reason(err)}"
    if sha256 is not None and file_digest(path, "sha256") != sha256:
        return "its sha256 differs from the one recorded when it was written"
    return None


def _data_beyond(f: Any, file_size: int) -> Optional[str]:
    """The name of a dataset whose stored bytes end past ``file_size``, or None."""
    import h5py

    found: list[str] = []

    def visit(name: str, obj: Any) -> Optional[bool]:
        if isinstance(obj, h5py.Dataset) and _dataset_end(obj) > file_size:
            found.append(name)
            return True  # stop visiting
        return None

    f.visititems(visit)
    return found[0] if found else None


def _dataset_end(dataset: Any) -> int:
    """The file offset just past the last stored byte of ``dataset`` (0 when nothing is stored apart)."""
    dsid = dataset.id
    offset = dsid.get_offset()
    if offset is not None:  # contiguous storage
        return offset + dsid.get_storage_size()
    if dataset.chunks is None:  # compact (inside the object header) or not yet written
        return 0
    ends = [0]

    def note(info: Any) -> None:
        if info.byte_offset is not None:
            ends.append(info.byte_offset + info.size)

    try:
        dsid.chunk_iter(note)  # one pass over the chunk index (HDF5 >= 1.12.3)
    except (AttributeError, NotImplementedError):
        # get_chunk_info(i) walks the index from its start: quadratic, so only for small datasets
        for i in range(min(dsid.get_num_chunks(), _CHUNKS_CHECKED)):
            note(dsid.get_chunk_info(i))
    return max(ends)


_CHUNKS_CHECKED = 4096  # chunks checked one by one where h5py has no chunk_iter


def damaged(path: Path, problem: str, command: str = "meiscope data") -> DownloadError:
    """The one-line error for a cached file that is cut short or corrupt (``problem``: :func:`hdf5_problem`)."""
    return DownloadError(f"{path}: truncated or damaged ({problem}): delete it and rerun `{command}`")


def check_manifest(path: Path) -> None:
    """A one-line :class:`DownloadError` unless ``path`` is absent or an allensdk cache manifest.

    allensdk reads ``manifest.json`` without checking it, so a foreign file of that name (or one that
    is not JSON) would end in a traceback; it is never overwritten or deleted either.
    """
    import json

    path = Path(path)
    if not path.exists():
        return
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise DownloadError(f"{path}: not an allensdk manifest ({reason(err)}); meiscope does not delete files it "
                            "did not write: move it away, or delete it if it is allensdk's") from None
    entries = data.get("manifest") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not any(isinstance(e, dict) and e.get("type") == "manifest_version"
                                                for e in entries):
        raise DownloadError(f"{path}: not an allensdk manifest (no 'manifest' list with a manifest_version); "
                            "meiscope does not delete files it did not write: move it away")


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
