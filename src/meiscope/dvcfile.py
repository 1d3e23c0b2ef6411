"""``dvc.yaml`` written from the stage table (:mod:`meiscope.pipeline`), code dependencies included.

A stage's code dependencies are every file of the ``meiscope`` package that its module imports,
directly or through other meiscope modules (imports inside functions count: they run too), with
the ``__init__.py`` of every package on the way. So a change to any code a stage runs makes DVC
rerun that stage and the ones after it, and nothing else.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:
    from meiscope.pipeline import Stage

PACKAGE_DIR = Path(__file__).resolve().parent  # src/meiscope
SOURCE_ROOT = PACKAGE_DIR.parent  # src
SHOWN_METRICS = ("metrics/headline.json",)  # what `dvc metrics show` lists: short enough for a terminal
HEADER = ("# Generated from the stage table in src/meiscope/pipeline.py by `meiscope dvcfile`: edit the table,\n"
          "# then run `meiscope dvcfile` (tests/test_dvcfile.py fails while this file and the table disagree).\n"
          "# Raw data (data/, versioned by data.dvc) comes from `meiscope data`; metrics stay in git (cache: false).\n")


def module_file(module: str) -> Path | None:
    """The source file of the meiscope module ``module`` (``meiscope.model.core``), or None if not one."""
    parts = module.split(".")
    if parts[0] != "meiscope":
        return None
    base = SOURCE_ROOT.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _package_of(path: Path) -> str:
    relative = path.relative_to(SOURCE_ROOT).with_suffix("")
    parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
    return ".".join(parts)


def imported_modules(path: Path) -> set[str]:
    """The meiscope modules that the file ``path`` imports anywhere (module level or inside functions)."""
    here = _package_of(path)
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against the importing module's package
                package = here.split(".") if is_package else here.split(".")[:-1]
                package = package[:len(package) - (node.level - 1)]
                base = ".".join(package + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # submodules imported by name
    return {m for m in found if module_file(m) is not None}


def _with_packages(module: str) -> Iterable[str]:
    """``module`` and every package above it (their ``__init__`` runs on import)."""
    parts = module.split(".")
    return (".".join(parts[:i]) for i in range(1, len(parts) + 1))


def code_dependencies(module: str) -> list[Path]:
    """Every meiscope source file that importing and running ``module`` may execute, sorted."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        for name in _with_packages(todo.pop()):
            if name in seen or module_file(name) is None:
                continue
            seen.add(name)
            todo.extend(imported_modules(module_file(name)))
    return sorted({module_file(name) for name in seen})


def stage_code(stage: Stage, project_root: Path) -> list[str]:
    """The code dependencies of ``stage`` as paths relative to ``project_root`` (POSIX separators)."""
    import os

    return [Path(os.path.relpath(path, project_root)).as_posix() for path in code_dependencies(stage.module.__name__)]


def stage_entry(stage: Stage, project_root: Path, moved_inputs: dict[str, str] | None = None) -> dict[str, Any]:
    """The dvc.yaml entry of ``stage``; code paths relative to ``project_root`` (where dvc.yaml lies).

    ``moved_inputs``: inputs read from elsewhere (``{"data": "../../data"}``: an ablation arm reads its
    replicate's raw data).
    """
    session = " --session ${item}" if stage.per_session else ""
    entry: dict[str, Any] = {"cmd": f"meiscope {stage.cli_command}{session}"}
    entry["deps"] = stage_code(stage, project_root) + [(moved_inputs or {}).get(i, i) for i in stage.inputs]
    if stage.params:
        entry["params"] = list(stage.params)
    outs: list[Any] = list(stage.outputs)
    outs += [{path: {"cache": False}} for path in stage.metrics if path not in SHOWN_METRICS]
    entry["outs"] = outs
    shown = [{path: {"cache": False}} for path in stage.metrics if path in SHOWN_METRICS]
    if shown:
        entry["metrics"] = shown
    if stage.per_session:
        return {"foreach": "${sessions.shared}", "do": entry}
    return entry


def render(project_root: Path, stages: Iterable[Stage] | None = None, with_data: bool = False,
           moved_inputs: dict[str, str] | None = None) -> dict[str, Any]:
    """The dvc.yaml mapping of ``stages`` (default: every DVC stage; ``with_data`` adds ``data`` as a stage,
    as replicates do: they make their own raw data). See :func:`stage_entry` for ``moved_inputs``."""
    from meiscope.pipeline import PLOTS, STAGES

    chosen = [s for s in (stages or STAGES) if s.in_dvc or with_data]
    out: dict[str, Any] = {"stages": {s.name: stage_entry(s, project_root, moved_inputs) for s in chosen}}
    if stages is None:
        out["plots"] = list(PLOTS)  # images only: `dvc plots show` then needs no network (no Vega)
    return out


def dvc_yaml_text(project_root: Path, stages: Iterable[Stage] | None = None, with_data: bool = False,
                  moved_inputs: dict[str, str] | None = None) -> str:
    """The text of dvc.yaml: :data:`HEADER` and :func:`render` as YAML."""
    import yaml

    rendered = render(project_root, stages, with_data, moved_inputs)
    return HEADER + yaml.safe_dump(rendered, sort_keys=False, width=120)


MLPROJECT_HEADER = (
    "# Generated from the stage table in src/meiscope/pipeline.py by `meiscope dvcfile` (with dvc.yaml).\n"
    "# `mlflow run . --env-manager local --experiment-name meiscope -e <entry point>` runs one stage in the\n"
    "# current environment (other env managers try to download Python and fail offline), with\n"
    "# MLFLOW_TRACKING_URI=sqlite:///mlflow.db so that the run lands in the project's store. Every stage\n"
    "# reads params.yaml; `main` is the whole study.\n")


def mlproject() -> dict[str, Any]:
    """The MLproject mapping: ``main`` (the whole study) and one entry point per stage command."""
    from meiscope.pipeline import commands

    params_file = {"params": {"type": "path", "default": "params.yaml"}}
    entries: dict[str, Any] = {"main": {"parameters": dict(params_file),
                                        "command": "meiscope data --params {params} && dvc repro"}}
    for stage in commands():
        parameters = dict(params_file)
        command = f"meiscope {stage.cli_command} --params {{params}}"
        if stage.uses_device:
            parameters["device"] = {"type": "string", "default": "auto"}
            command += " --device {device}"
        entries[stage.name] = {"parameters": parameters, "command": command}
    return {"name": "meiscope", "python_env": "python_env.yaml", "entry_points": entries}


def mlproject_text() -> str:
    """The text of MLproject."""
    import yaml

    return MLPROJECT_HEADER + yaml.safe_dump(mlproject(), sort_keys=False, width=120)


def generated_files(project_root: Path) -> dict[Path, str]:
    """``{path: text}`` of the files written from the stage table: dvc.yaml and MLproject."""
    return {project_root / "dvc.yaml": dvc_yaml_text(project_root), project_root / "MLproject": mlproject_text()}


PROVENANCE_FILE = "provenance.json"


def code_key(module: str) -> str:
    """A key of the code ``module`` runs: a digest of every file of :func:`code_dependencies`, names included."""
    import hashlib

    digest = hashlib.sha256()
    for path in code_dependencies(module):
        digest.update(path.relative_to(SOURCE_ROOT).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def write_provenance(stage: Stage, root: Path, session: int | None = None) -> list[Path]:
    """Write ``provenance.json`` into each folder ``stage`` outputs: the code that produced it and the commit.

    ``code_key`` identifies the stage's code exactly (every file it imports); ``git_commit`` is the
    checkout's commit when the stage ran ("unknown" outside git). Returns the files written. The raw data
    (``data``) gets none: ``data.dvc`` versions it, and its bytes must not depend on the commit.
    """
    from meiscope.atomic import write_json
    from meiscope.tracking import git_commit

    if not stage.in_dvc:
        return []
    record = {"stage": stage.name, "code_key": code_key(stage.module.__name__), "git_commit": git_commit(root)}
    written = []
    for output in stage.outputs:
        folder = Path(root) / output.replace("${item}", str(session))
        if folder.is_dir():
            write_json(folder / PROVENANCE_FILE, record)
            written.append(folder / PROVENANCE_FILE)
    return written
