"""A failed stage keeps the last good outputs: they are copied back from the DVC cache.

``dvc repro`` deletes a stage's outputs before it runs the stage's command, so a stage that then
fails (a corrupt input, a bug) would leave the project without its last good MEIs, models or
rankings, although the DVC cache still holds them. ``dvc checkout`` cannot run inside ``dvc repro``
(which holds the repository lock), so the stage commands restore them here: ``dvc.lock`` names the
last good run's outputs with their md5s, and the cache holds their bytes
(``<cache>/files/md5/<2 hex>/<rest>``; a folder's ``<md5>.dir`` object lists its files).

Metrics files stay in git, not in the cache (``cache: false``), yet ``dvc repro`` deletes them too;
so after every successful run their bytes are also put into the cache under their md5, where a later
failure finds them (an object nothing references; ``dvc gc`` may drop it).

Only outputs the failed run removed or changed are restored (outputs it left alone may be newer than
``dvc.lock``: a run outside ``dvc repro``), and only when the cache holds every file they need.
Files inside an output folder that the last good run did not have, and the checkpoints the failed
run wrote (:data:`RESUMABLE`: ``--resume`` continues from them), are left alone. Nothing is written
outside the project.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Optional

from meiscope.atomic import atomic_path
from meiscope.digests import file_digest

Signature = Optional[tuple]
# Folders inside an output whose files a failed run wrote are kept as they are: they are what `--resume`
# continues from (``results/train/checkpoints/``; a checkpoint must match the data and settings to resume)
RESUMABLE = ("checkpoints",)


def dvc_name(stage: Any, session: Optional[int] = None) -> str:
    """The DVC stage name: ``mei``, or ``extract-session@<id>`` for a per-session stage."""
    return f"{stage.name}@{session}" if stage.per_session else stage.name


def stage_paths(stage: Any, session: Optional[int] = None) -> tuple[str, ...]:
    """Every path the stage writes (outputs, then metrics), relative to the project root."""
    return tuple(p.replace("${item}", str(session)) for p in (*stage.outputs, *stage.metrics))


# --------------------------------------------------------------------------------------
# what the failed run touched
# --------------------------------------------------------------------------------------
def _signature(path: Path) -> Signature:
    """Sizes and modification times of a file or of every file below a folder (None: missing)."""
    if path.is_file():
        st = path.stat()
        return (st.st_size, st.st_mtime_ns)
    if not path.is_dir():
        return None
    found = []
    for folder, _, files in os.walk(path):
        for name in files:
            st = (Path(folder) / name).lstat()
            found.append((os.path.relpath(Path(folder) / name, path), st.st_size, st.st_mtime_ns))
    return ("dir", tuple(sorted(found)))


def snapshot(root: Path, paths: tuple[str, ...]) -> dict[str, Signature]:
    """The state of ``paths`` before a run, to tell afterwards which ones the run removed or changed."""
    return {p: _signature(Path(root) / p) for p in paths}


# --------------------------------------------------------------------------------------
# dvc.lock and the cache
# --------------------------------------------------------------------------------------
def cache_dir(root: Path) -> Path:
    """The project's DVC cache: ``cache.dir`` of ``.dvc/config.local`` or ``.dvc/config``, else ``.dvc/cache``.

    A relative ``cache.dir`` is taken from the ``.dvc`` folder, as DVC does.
    """
    import configparser

    dvc = Path(root) / ".dvc"
    for name in ("config.local", "config"):  # the local file wins, as in DVC
        parser = configparser.ConfigParser()
        try:
            parser.read(dvc / name)
        except configparser.Error:
            continue
        folder = parser.get("cache", "dir", fallback=None)
        if folder:
            return (dvc / os.path.expanduser(folder.strip().strip("'\""))).resolve()
    return dvc / "cache"


def lock_outs(root: Path, name: str) -> dict[str, dict]:
    """The outputs of stage ``name`` in ``dvc.lock`` (path -> entry); empty when it has none."""
    import yaml

    lock = Path(root) / "dvc.lock"
    if not lock.is_file():
        return {}
    try:
        data = yaml.safe_load(lock.read_text()) or {}
    except yaml.YAMLError:
        return {}
    entry = (data.get("stages") or {}).get(name) or {}
    return {o["path"]: o for o in entry.get("outs") or [] if isinstance(o, dict) and "path" in o}


def cache_object(cache: Path, md5: str) -> Path:
    """Where DVC 3 keeps the object of ``md5`` (``<cache>/files/md5/<2 hex>/<rest>``)."""
    return cache / "files" / "md5" / md5[:2] / md5[2:]


def _inside(root: Path, path: Path) -> bool:
    try:
        path.resolve().relative_to(Path(root).resolve())
        return True
    except ValueError:
        return False


def _files_of(root: Path, cache: Path, out: str, entry: dict) -> Optional[list[tuple[Path, str]]]:
    """The files of a locked output as (destination, md5); None when the cache lacks its listing."""
    md5 = str(entry.get("md5") or "")
    if entry.get("hash") != "md5" or not md5:
        return None  # not a DVC 3 entry (no md5 of its bytes to find it by)
    if not md5.endswith(".dir"):
        return [(Path(root) / out, md5)]
    listing = cache_object(cache, md5)
    if not listing.is_file():
        return None
    files = []
    for item in json.loads(listing.read_text()):
        relative = Path(item["relpath"])
        if relative.is_absolute() or ".." in relative.parts:
            raise ValueError(f"{listing}: lists {item['relpath']!r}, a path outside its folder")
        files.append((Path(root) / out / relative, str(item["md5"])))
    return files


def _needed(root: Path, cache: Path, out: str, entry: dict) -> tuple[list[tuple[Path, Path, str]], bool]:
    """The copies (destination, cache object, md5) that bring ``out`` back, and whether the cache has them all."""
    files = _files_of(root, cache, out, entry)
    if files is None:
        return [], False
    copies = []
    for dest, md5 in files:
        if not _inside(root, dest):
            raise ValueError(f"{dest}: outside the project {root}")
        if dest.is_file() and not dest.is_symlink() and file_digest(dest) == md5:
            continue  # this file is the last good one already
        if dest.exists() and dest.relative_to(Path(root) / out).parts[:1] in [(r,) for r in RESUMABLE]:
            continue  # the failed run's own progress (see RESUMABLE)
        copies.append((dest, cache_object(cache, md5), md5))
    return copies, all(src.is_file() for _, src, _ in copies)


def _copy_checked(src: Path, dest: Path, md5: str) -> None:
    """Atomically copy a cache object onto ``dest``, refusing one whose bytes do not match its md5."""
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)
        if file_digest(tmp) != md5:
            raise ValueError(f"{src}: the cache object does not match its md5 (a corrupt cache)")


# --------------------------------------------------------------------------------------
# after a failure, after a success
# --------------------------------------------------------------------------------------
def restore_outputs(root: Path, stage: Any, session: Optional[int], before: dict[str, Signature]) -> str:
    """Copy back the last good outputs that the failed run removed or changed; one line saying what happened.

    Empty when there was nothing to restore (no ``dvc.lock`` entry, or the outputs are intact).
    """
    root = Path(root).resolve()
    name = dvc_name(stage, session)
    locked = lock_outs(root, name)
    touched = [p for p in stage_paths(stage, session)
               if p in locked and (before.get(p) is None or _signature(root / p) != before.get(p))]
    cache = cache_dir(root)
    plan: dict[str, list[tuple[Path, Path, str]]] = {}
    lacking = []
    for out in touched:
        copies, complete = _needed(root, cache, out, locked[out])
        if not complete:
            lacking.append(out)
        elif copies:
            plan[out] = copies
    if lacking:
        metrics = [p for p in lacking if p in stage_paths(stage, session)[len(stage.outputs):]]
        git = f"; metrics files are in git: `git checkout -- {' '.join(metrics)}`" if metrics else ""
        return (f"the last good outputs of `{name}` were not restored: the DVC cache lacks {', '.join(lacking)} "
                f"(`dvc pull {name}` fetches them from the DVC remote and checks them out{git})")
    for copies in plan.values():
        for dest, src, md5 in copies:
            _copy_checked(src, dest, md5)
    if not plan:
        return ""
    return f"restored the last good outputs of `{name}` ({', '.join(plan)}) from the DVC cache"


def keep_metrics(root: Path, stage: Any, session: Optional[int] = None) -> None:
    """Put the stage's metrics files (``cache: false``) into the DVC cache under their md5 (see the module doc)."""
    root = Path(root)
    if not (root / ".dvc").is_dir():
        return  # not a DVC project: no dvc.lock will ever name these bytes
    cache = cache_dir(root)
    for path in stage.metrics:
        source = root / path.replace("${item}", str(session))
        if not source.is_file():
            continue
        target = cache_object(cache, file_digest(source))
        if target.is_file():
            continue
        with atomic_path(target) as tmp:
            shutil.copyfile(source, tmp)
            os.chmod(tmp, 0o444)  # cache objects are read-only, as DVC leaves its own


def restoring(stage: Any, per_session: Any, command: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a stage command: on failure (an exception or exit status 1) restore the last good outputs.

    ``per_session``: the stage's per-session twin, run with ``--session ID`` (or None). Ctrl-C and its
    own exit status (130) restore nothing: an interrupted stage says how to continue instead.
    """

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> Any:
        session = kwargs.get("session")
        ran = per_session if session is not None and per_session is not None else stage
        root = Path(kwargs.get("params_path") or "params.yaml").resolve().parent
        before = snapshot(root, stage_paths(ran, session)) if ran.in_dvc else {}
        try:
            result = command(**kwargs)
        except SystemExit as exit_:
            if exit_.code not in (None, 0, 130):
                _after_failure(root, ran, session, before)
            raise
        except Exception:
            _after_failure(root, ran, session, before)
            raise
        if ran.in_dvc:
            keep_metrics(root, ran, session)
        return result

    return wrapper


def _after_failure(root: Path, stage: Any, session: Optional[int], before: dict[str, Signature]) -> None:
    """Restore what can be restored and say so in one line on stderr; never hide the stage's own error."""
    if not stage.in_dvc:
        return
    try:
        note = restore_outputs(root, stage, session, before)
    except Exception as err:  # a failed restore must not replace the error the user needs to see
        name = dvc_name(stage, session)
        note = f"the last good outputs of `{name}` were not restored ({err}): `dvc checkout {name}` restores them"
    if note:
        print(note, file=sys.stderr, flush=True)
