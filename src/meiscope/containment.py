"""Every folder and file that params.yaml configures stays inside the project.

The settings are parsed without knowing where the project lies, so the check runs where the root is
known: :func:`meiscope.config.load_params` (the params file's folder) and the replicate commands.
A path counts as inside when, with ``..`` worked out, it lies strictly below the project root. A
symlink inside the project (``data -> /big/disk``) is the user's own choice and is left alone; a
configured ``..`` or absolute path that leaves the project is refused. A
replicate or ablation arm (a project meiscope wrote, ``params.yaml`` headed ``(written by meiscope``)
belongs to the project that holds it, whose data its arms read (``../../data/...``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from meiscope.checks import ConfigError

# every params key whose value is a path below the project root (services.dir: the team stack's files)
PATH_KEYS: tuple[str, ...] = (
    "data.allen_dir", "data.synthetic_dir", "data.neuropixels_dir", "data.synthetic_neuropixels_dir",
    "data.synthetic_container_dir", "train.architecture_file", "tune.journal_file", "replicate.folder",
    "services.dir")
WRITTEN_MARK = "(written by meiscope"  # in the first line of a replicate's or an arm's params.yaml


def _written_by_meiscope(folder: Path) -> bool:
    try:
        with open(folder / "params.yaml", errors="replace") as f:
            return WRITTEN_MARK in f.readline()
    except OSError:
        return False


def project_root(params_folder: Path) -> Path:
    """The project a params folder belongs to: itself, or for a replicate / arm the project holding it."""
    folder = Path(params_folder).resolve()
    root = folder
    for parent in folder.parents:
        if not _written_by_meiscope(root):
            break
        if (parent / "params.yaml").is_file():
            root = parent
    return root


def inside_project(params_folder: Path, value: str, key: str) -> Path:
    """``value`` (relative to ``params_folder``) resolved; a one-line ConfigError naming ``key`` unless it lies
    strictly below the project root."""
    root = project_root(params_folder)
    resolved = Path(os.path.normpath(Path(params_folder).resolve() / Path(value).expanduser()))
    if resolved == root or root not in resolved.parents:
        raise ConfigError(f"params: '{key}' must be a path inside the project {root} (got {value!r}, which "
                          f"resolves to {resolved})")
    return resolved


def check_paths(params: Any, params_folder: Path) -> None:
    """Refuse the first configured path (:data:`PATH_KEYS`) of ``params`` that leaves the project."""
    for key in PATH_KEYS:
        section, name = key.split(".")
        value = getattr(getattr(params, section, None), name, None)
        if isinstance(value, str):
            inside_project(params_folder, value, key)
