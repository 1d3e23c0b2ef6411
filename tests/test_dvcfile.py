"""The stage table is the one list of stages: dvc.yaml, MLproject, the CLI and DVC itself agree with it."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from meiscope import pipeline
from meiscope.dvcfile import code_dependencies, generated_files, imported_modules, render

ROOT = Path(__file__).resolve().parents[1]
DVC = Path(sys.executable).parent / "dvc"


def test_dvc_yaml_and_mlproject_are_generated_from_the_stage_table():
    for path, text in generated_files(ROOT).items():
        assert path.read_text() == text, f"{path.name} differs from the stage table: run `meiscope dvcfile`"


def test_dvc_lists_exactly_the_stages_of_the_table():
    listed = subprocess.run([str(DVC), "stage", "list", "--names-only"], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.split()
    expected = [s.name for s in pipeline.STAGES if s.in_dvc and not s.per_session]
    # per-session stages exist once per id of sessions.shared (none by default)
    shared = yaml.safe_load((ROOT / "params.yaml").read_text())["sessions"]["shared"]
    expected += [f"{s.name}@{i}" for s in pipeline.STAGES if s.per_session for i in shared]
    assert sorted(listed) == sorted(expected)


def test_the_cli_has_one_command_per_stage_with_its_options():
    from click.testing import CliRunner

    from meiscope.cli import main

    def options(name):
        return {o for p in main.commands[name].params for o in p.opts}

    for stage in pipeline.commands():
        assert {"--params", "--set"} <= options(stage.name)
        assert ("--device" in options(stage.name)) == stage.uses_device, stage.name
    per_session = {s.cli_command for s in pipeline.STAGES if s.per_session}
    assert per_session == {"extract", "rank"} and all("--session" in options(n) for n in per_session)
    help_text = CliRunner().invoke(main, ["--help"]).output
    assert all(s.name in help_text for s in pipeline.commands())


def _module_files(names):
    return {Path(sys.modules[n].__file__).resolve() for n in names}


def test_every_module_a_stage_imports_is_in_its_dvc_deps():
    """What Python really loads when a stage module is imported is a subset of its computed code deps."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for stage in pipeline.STAGES:
        if not stage.in_dvc:
            continue
        entry = stages[stage.name]["do"] if stage.per_session else stages[stage.name]
        deps = {(ROOT / d).resolve() for d in entry["deps"]}
        loaded = subprocess.run([sys.executable, "-c", f"import sys, {stage.module.__name__}; "
                                 "print('\\n'.join(m.__file__ for n, m in list(sys.modules.items()) "
                                 "if n.startswith('meiscope') and getattr(m, '__file__', None)))"],
                                capture_output=True, text=True, check=True).stdout.split()
        missing = {Path(p).resolve() for p in loaded} - deps
        assert not missing, (stage.name, sorted(str(m) for m in missing))
        assert set(code_dependencies(stage.module.__name__)) <= deps


def test_imports_inside_functions_and_relative_imports_count(tmp_path, monkeypatch):
    package = tmp_path / "meiscope"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "a.py").write_text("def f():\n    from . import b\n    import meiscope.c\n")
    (package / "sub" / "b.py").write_text("from ..c import thing\n")
    (package / "c.py").write_text("thing = 1\nimport numpy\n")
    import meiscope.dvcfile as dvcfile

    monkeypatch.setattr(dvcfile, "SOURCE_ROOT", tmp_path)
    assert imported_modules(package / "sub" / "a.py") == {"meiscope.sub", "meiscope.sub.b", "meiscope.c"}
    assert [p.relative_to(tmp_path).as_posix() for p in code_dependencies("meiscope.sub.a")] == [
        "meiscope/__init__.py", "meiscope/c.py", "meiscope/sub/__init__.py", "meiscope/sub/a.py", "meiscope/sub/b.py"]


STUB = """import hashlib, json, pathlib, sys
stage = yaml_stage = sys.argv[1]
entry = json.loads(pathlib.Path('stubs.json').read_text())[stage]
digest = hashlib.md5(b''.join(pathlib.Path(d).read_bytes() if pathlib.Path(d).is_file() else b''
                              for d in entry['deps'])).hexdigest()
for out in entry['outs']:
    path = pathlib.Path(out)
    if out.endswith(('.json', '.html', '.yaml')):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(digest)
    else:
        path.mkdir(parents=True, exist_ok=True)
        (path / 'out.txt').write_text(digest)
for inner in entry['inner']:  # files inside an output folder that a later stage reads
    pathlib.Path(inner).write_text(digest)
"""


@pytest.mark.slow
def test_a_code_change_reruns_exactly_its_stage_and_the_ones_after_it(tmp_path, monkeypatch):
    """The generated dvc.yaml, with each command replaced by a stub, run by the real DVC."""
    import meiscope.dvcfile as dvcfile

    shutil.copytree(ROOT / "src", tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    monkeypatch.setattr(dvcfile, "SOURCE_ROOT", tmp_path / "src")  # the code deps: this copy, changed below
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    rendered = render(tmp_path)
    assert all(not d.startswith("..") for entry in rendered["stages"].values() for d in entry.get("deps", []))
    stubs = {}
    for name, entry in rendered["stages"].items():
        if "foreach" in entry:
            continue
        outs = [o if isinstance(o, str) else next(iter(o)) for o in entry["outs"] + entry.get("metrics", [])]
        stubs[name] = {"deps": entry["deps"], "outs": outs}
        entry["cmd"] = f"{sys.executable} stub.py {name}"
    inputs = {d for entry in rendered["stages"].values() for d in entry.get("deps", [])}
    for stub in stubs.values():
        stub["inner"] = sorted(i for i in inputs for o in stub["outs"] if i.startswith(o + "/"))
    (tmp_path / "stub.py").write_text(STUB)
    (tmp_path / "stubs.json").write_text(json.dumps(stubs))
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": rendered["stages"]}))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "raw.txt").write_text("raw")
    (tmp_path / "metrics").mkdir()
    written = {o for stub in stubs.values() for o in stub["outs"]}
    for summary in {d for d in inputs if d.startswith("metrics/")} - written:  # the committed study summaries
        (tmp_path / summary).write_text("{}")
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    subprocess.run([str(DVC), "init", "--no-scm", "-q"], cwd=tmp_path, check=True, env=env)

    def repro() -> set[str]:
        out = subprocess.run([str(DVC), "repro"], cwd=tmp_path, capture_output=True, text=True, env=env)
        assert out.returncode == 0, out.stdout + out.stderr
        return {line.split("'")[1] for line in out.stdout.splitlines() if line.startswith("Running stage")}

    assert repro() == set(stubs)
    assert repro() == set()
    with open(tmp_path / "src" / "meiscope" / "stages" / "mei.py", "a") as f:
        f.write("\n# a change\n")
    assert repro() == {"mei", "gabor", "validate", "report"}
    with open(tmp_path / "src" / "meiscope" / "study.py", "a") as f:
        f.write("\n# a change\n")
    ran = repro()
    assert {"extract", "rank", "tune", "train", "mei", "report"} <= ran


def test_stage_outputs_record_the_code_that_made_them(tmp_path, monkeypatch):
    import meiscope.dvcfile as dvcfile

    shutil.copytree(ROOT / "src", tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    monkeypatch.setattr(dvcfile, "SOURCE_ROOT", tmp_path / "src")
    rank = pipeline.stage("rank")
    (tmp_path / "results" / "ranking").mkdir(parents=True)
    (written,) = dvcfile.write_provenance(rank, tmp_path)
    record = json.loads(written.read_text())
    assert written.parent.name == "ranking" and record["stage"] == "rank" and len(record["code_key"]) == 16
    with open(tmp_path / "src" / "meiscope" / "stages" / "mei.py", "a") as f:  # code rank does not run
        f.write("\n# a change\n")
    assert dvcfile.code_key(rank.module.__name__) == record["code_key"]
    with open(tmp_path / "src" / "meiscope" / "study.py", "a") as f:  # code rank runs
        f.write("\n# a change\n")
    assert dvcfile.code_key(rank.module.__name__) != record["code_key"]


def test_the_raw_data_gets_no_provenance_file(tmp_path):
    """data.dvc versions the raw data: a file that names the commit would change its hash at every commit."""
    import meiscope.dvcfile as dvcfile

    (tmp_path / "data").mkdir()
    assert dvcfile.write_provenance(pipeline.stage("data"), tmp_path) == []
    assert list((tmp_path / "data").iterdir()) == []


def test_no_stage_runs_the_code_of_a_stage_after_it():
    """Else a change to a later stage would rerun the whole pipeline (an import chain can do that unseen)."""
    for i, stage in enumerate(pipeline.STAGES):
        later = {s.module.__name__ for s in pipeline.STAGES[i + 1:]} - {stage.module.__name__}
        files = {p.resolve() for p in code_dependencies(stage.module.__name__)}
        reached = {m for m in later if Path(sys.modules[m].__file__).resolve() in files}
        assert not reached, (stage.name, sorted(reached))


def test_the_report_reruns_on_every_section_its_stale_notes_read(monkeypatch):
    """The report says whether each summary was measured under params.yaml's settings (a key of the sections
    its recording's study reads): a change to any of them, even one no earlier stage reads, reruns it."""
    from meiscope import replicate
    from meiscope.config import parse_params
    from meiscope.recordings import RECORDINGS

    hashed: set[str] = set()
    monkeypatch.setattr(replicate, "_digest", lambda settings: hashed.update(settings) or "key")
    for recording in RECORDINGS:
        replicate.settings_key(parse_params({"data": {"recording": recording}}))
    assert {"synthetic", "allen", "neuropixels", "container", "mei"} <= hashed
    assert hashed <= set(pipeline.stage("report").params)
    assert {"tracking", "services"}.isdisjoint(pipeline.stage("report").params)  # where runs are logged


def test_dvc_plots_show_writes_a_page_that_needs_no_network(tmp_path):
    """Every declared plot is an image the stages write: DVC embeds them as <img>, with no Vega from a CDN."""
    import re

    rendered = render(ROOT)
    assert rendered["plots"] and all(isinstance(p, str) and p.endswith(".png") for p in rendered["plots"])
    assert sum("learning_curves" in p or "/history" in p for p in rendered["plots"]) == 1  # one overlay figure
    for plot in rendered["plots"]:
        (tmp_path / plot).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / plot).write_bytes(b"\x89PNG\r\n\x1a\n" + plot.encode())
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"plots": rendered["plots"]}))
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    subprocess.run([str(DVC), "init", "--no-scm", "-q"], cwd=tmp_path, check=True, env=env)
    out = subprocess.run([str(DVC), "plots", "show", "-o", "page"], cwd=tmp_path, capture_output=True, text=True,
                         env=env)
    assert out.returncode == 0, out.stderr
    page = (tmp_path / "page" / "index.html").read_text()
    assert not re.search(r"<script[^>]+src=|https?://", page)
    assert len(re.findall(r"<img ", page)) == len(rendered["plots"])
