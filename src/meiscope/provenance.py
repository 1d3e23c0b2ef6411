"""Where a report's numbers come from: the commit, whether the code differs from it, the date, a digest
of the settings and the machine.

"Clean" compares only what decides the results (``src/``, ``params.yaml``, ``dvc.yaml``), never the
files the pipeline itself writes (``dvc.lock``, ``metrics/``, ``results/``), which differ from the
commit after every run. Outside a git repository (an unpacked archive) every git answer is None.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from meiscope.config import Params, as_dict

CODE_PATHS = ("src", "params.yaml", "dvc.yaml")  # what the results depend on (not what the pipeline writes)


@dataclass(frozen=True)
class Provenance:
    """What ran: ``commit`` (short hash or None), ``clean`` (None: unknown), ``date`` (UTC), ``settings``
    (first 12 hex digits of the effective params' sha256) and ``machine``."""

    commit: Optional[str]
    clean: Optional[bool]
    date: str
    settings: str
    machine: str

    def rows(self) -> list[tuple[str, str]]:
        """``(label, value)`` lines for the report."""
        state = {True: "clean (src/, params.yaml, dvc.yaml as committed)",
                 False: "MODIFIED: src/, params.yaml or dvc.yaml differ from the commit", None: "unknown"}
        return [("commit", self.commit or "unknown (not a git checkout)"), ("code", state[self.clean]),
                ("date", self.date), ("settings digest", f"{self.settings} (sha256 of the effective params.yaml)"),
                ("machine", self.machine)]


def _git(root: Path, *args: str) -> Optional[str]:
    """stdout of ``git args`` in ``root``; None when git is missing, fails or this is no repository."""
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def code_commit(root: Path) -> Optional[str]:
    """The checked-out commit's short hash."""
    out = _git(root, "rev-parse", "--short=12", "HEAD")
    return out.strip() or None if out is not None else None


def code_is_clean(root: Path) -> Optional[bool]:
    """Whether ``src/``, ``params.yaml`` and ``dvc.yaml`` are as committed (untracked sources count as changes)."""
    out = _git(root, "status", "--porcelain", "--", *CODE_PATHS)
    return None if out is None else not out.strip()


def committed_at(root: Path, path: Path) -> Optional[str]:
    """The short hash of the last commit that changed ``path``; None when it was never committed."""
    try:
        relative = Path(path).resolve().relative_to(Path(root).resolve())
    except ValueError:
        return None
    out = _git(root, "log", "-1", "--format=%h", "--", str(relative))
    return out.strip() or None if out is not None else None


def settings_digest(params: Params) -> str:
    """The first 12 hex digits of the sha256 of the effective settings (params.yaml with the defaults filled in)."""
    text = json.dumps(as_dict(params), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def machine(device: str) -> str:
    """``<platform>, <n> CPUs, torch device <device>``."""
    return f"{platform.platform()}, {os.cpu_count()} CPUs, torch device {device}"


def torch_device(name: Any) -> str:
    """The device ``name`` (``auto``, ``cpu``, ``cuda``) resolves to here; ``unknown`` when torch refuses it."""
    from meiscope.errors import MeiscopeError
    from meiscope.model import resolve_device

    try:
        return str(resolve_device(name))
    except (MeiscopeError, RuntimeError, ValueError):
        return f"unknown ({name})"


def collect(params: Params, root: Path, device: Optional[str] = None) -> Provenance:
    """The provenance of a report written now from ``root`` under ``params``; ``device`` (default: the one
    ``mei.device`` resolves to) names the torch device."""
    root = Path(root)
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return Provenance(commit=code_commit(root), clean=code_is_clean(root), date=date,
                      settings=settings_digest(params), machine=machine(device or torch_device(params.mei.device)))
