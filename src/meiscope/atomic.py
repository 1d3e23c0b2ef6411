"""Write files so that a reader never sees a half-written one: temp file, then rename."""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Iterator


def _temp_prefix(path: Path, kind: str) -> str:
    """``.<name>.<kind>-<pid>-``: a temporary file or folder beside ``path`` names the process writing it."""
    return f".{path.name}.{kind}-{os.getpid()}-"


def remove_abandoned(path: Path) -> list[Path]:
    """Remove the new-output temporaries beside ``path`` whose writer is gone, and return them.

    A process killed by SIGKILL cannot clean up after itself: its ``.<name>.new-<pid>-*`` stays. One
    whose process still runs (or whose name holds no pid: not written this way) is left alone. The
    ``.old-`` folder of an interrupted swap is kept too: it may hold the last good outputs.
    """
    import glob
    import shutil

    from meiscope.pidfiles import process_start_ticks  # pidfiles writes through this module: import here

    removed = []
    prefix = f".{path.name}.new-"
    for leftover in path.parent.glob(glob.escape(prefix) + "*"):
        pid = leftover.name[len(prefix):].partition("-")[0]
        if not pid.isdigit() or int(pid) == os.getpid() or process_start_ticks(int(pid)) is not None:
            continue
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover)
        else:
            leftover.unlink()
        removed.append(leftover)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    ``suffix`` keeps an extension some writers insist on (``np.savez`` adds ``.npz``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path, "new"), suffix=suffix or ".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o644)  # mkstemp makes files private; outputs are ordinary shared files
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; it replaces ``path`` only on success.

    On failure the temporary folder is removed and ``path`` (the last good outputs) is untouched.
    """
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=_temp_prefix(path, "new")))
    os.chmod(tmp, 0o755)
    try:
        yield tmp
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=_temp_prefix(path, "old")))
            os.replace(path, old / path.name)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_npz(path: str | Path, arrays: dict[str, Any]) -> None:
    """Atomically write a compressed ``.npz`` whose bytes depend only on ``arrays``.

    ``np.savez`` stamps every member with the current time, and streaming members into the zip
    (``ZipFile.open(..., force_zip64=True)``) writes extra fields whose layout CPython changed
    between 3.11 patch releases. Each member is serialised in memory first and written whole
    with fixed metadata, so the bytes are the same on any CPython 3.11 build.
    """
    write_zip(path, {f"{name}.npy": npy_bytes(arrays[name]) for name in arrays})


def npy_bytes(array: Any) -> bytes:
    """The ``.npy`` serialisation of ``array`` (no pickles)."""
    import io

    import numpy as np

    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.asarray(array), allow_pickle=False)
    return buffer.getvalue()


def write_zip(path: str | Path, members: dict[str, bytes]) -> None:
    """Atomically write a deflated zip of ``members`` (name -> bytes), sorted by name, with fixed
    dates and attributes: the bytes depend only on ``members`` and zlib (standard library only).
    """
    with atomic_path(path, suffix=Path(path).suffix or ".zip") as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name in sorted(members):
                info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                info.create_system = 3  # unix, whatever the writing machine
                info.external_attr = 0o644 << 16
                zf.writestr(info, members[name])


def write_text(path: str | Path, text: str) -> None:
    """Atomically write ``text`` to ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, data: Any) -> None:
    """Atomically write ``data`` as indented, strictly valid JSON (numpy values become Python numbers).

    NaN and infinities are not JSON: they are written as ``null`` on purpose ("no value"), except a
    headline figure of ``metrics/<stage>.json`` (:data:`meiscope.science.catalogue.HEADLINE`), which
    must be a number: a non-finite one is a :class:`~meiscope.errors.MeiscopeError` naming the key,
    and nothing is written.
    """
    path = Path(path)
    plain = _finite(data, _headline_keys(path), path, "")
    try:
        write_text(path, json.dumps(plain, indent=2, sort_keys=True, allow_nan=False) + "\n")
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT) and err.filename != str(path):
            # name the file being written (the CLI prints it with the free space), not the temp file or nothing
            raise OSError(err.errno, os.strerror(err.errno), str(path)) from err
        raise


def _headline_keys(path: Path) -> frozenset[str]:
    """The top-level keys of ``path`` that are headline figures (``metrics/<stage>.json`` only)."""
    if path.parent.name != "metrics" or path.suffix != ".json":
        return frozenset()
    from meiscope.science.catalogue import DVC_HEADLINE, HEADLINE

    if path.stem == "headline":
        return frozenset(DVC_HEADLINE)
    return frozenset(m.key for m in HEADLINE if m.stage == path.stem)


def _finite(value: Any, headline: frozenset[str], path: Path, key: str) -> Any:
    """``value`` as plain JSON types, non-finite floats as None (a headline key's: an error)."""
    if isinstance(value, dict):
        return {k: _finite(v, headline if not key else frozenset(), path, f"{key}.{k}" if key else str(k))
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v, frozenset(), path, f"{key}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, (str, int, float, bool, type(None))):
        value = _json_default(value)
        if isinstance(value, (list, dict)):
            return _finite(value, frozenset(), path, key)
    if isinstance(value, float) and not math.isfinite(value):
        if key in headline:
            from meiscope.errors import MeiscopeError

            raise MeiscopeError(f"{path}: headline figure '{path.stem}.{key}' came out {value} (not a finite "
                                "number); nothing was written: check this stage's inputs and log")
        return None
    return value


def _json_default(value: Any) -> Any:
    """A numpy scalar or array (or anything with ``item``/``tolist``) as Python numbers or lists."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def save_figure(fig: Any, path: str | Path, dpi: int = 110) -> None:
    """Atomically save a matplotlib figure as PNG and close it."""
    import matplotlib.pyplot as plt

    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
