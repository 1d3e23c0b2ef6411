"""Digests of files, read in blocks (DVC's md5 of a cache object, the sha256 of a download)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_digest(path: Path, algorithm: str = "md5") -> str:
    """The hex digest of ``path``'s bytes with ``algorithm`` (a :mod:`hashlib` name), 1 MiB at a time."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
