"""A stage that fails under `dvc repro` keeps its last good outputs (copied back from the DVC cache).

The DVC project is tiny and real (`dvc init --no-scm`, `dvc repro`); its stages are the real rank, train
and mei of the stage table (same inputs and outputs) registered by the real `meiscope` command wrapper,
with a toy ``run`` that refuses an input holding the word "corrupt" after writing part of its outputs.
"""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from meiscope import pipeline, restore
from meiscope.dvcfile import render, stage_entry

DVC = str(Path(sys.executable).parent / "dvc")
STAGED = ("rank", "train", "mei")  # the expensive stages whose last good outputs must survive
TOY_CLI = '''
import dataclasses, hashlib, sys, types
from pathlib import Path

from meiscope import cli, pipeline
from meiscope.atomic import write_json
from meiscope.errors import MeiscopeError


def toy(stage):
    def run(params, root, **kwargs):
        root = Path(root)
        digest = hashlib.sha256()
        for output in stage.outputs:  # a run that dies half-way leaves partial outputs behind
            (root / output).mkdir(parents=True, exist_ok=True)
            (root / output / "main.txt").write_text("partial")
        for name in stage.inputs:
            path = root / name
            for f in sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]:
                if b"corrupt" in f.read_bytes():
                    raise MeiscopeError(f"{f}: corrupt")
                digest.update(f.read_bytes())
        for output in stage.outputs:
            (root / output / "main.txt").write_text(f"{stage.name} {digest.hexdigest()}")
            (root / output / "sub").mkdir(exist_ok=True)
            (root / output / "sub" / "part.txt").write_text(output)
            if output == "results/train":  # what `meiscope train --resume` continues from
                (root / output / "checkpoints").mkdir(exist_ok=True)
                (root / output / "checkpoints" / "seed_1.pt").write_text("finished")
        for path in stage.metrics:
            write_json(root / path, {"stage": stage.name, "digest": digest.hexdigest()})
        return {}
    return types.SimpleNamespace(run=run, __doc__="toy " + stage.name, __name__="toy_" + stage.name)


for name in %r:
    real = pipeline.stage(name)
    cli._make_stage_command(dataclasses.replace(real, module=toy(real)))
cli.main()
''' % (STAGED,)


def _dvc(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    return subprocess.run([DVC, *args], cwd=root, env=env, capture_output=True, text=True)


def _tree(root: Path, paths) -> dict[str, bytes]:
    out = {}
    for path in paths:
        target = root / path
        files = [p for p in target.rglob("*") if p.is_file()] if target.is_dir() else [target]
        out.update({str(f.relative_to(root)): f.read_bytes() for f in files if f.exists()})
    return out


def _outputs(names=STAGED) -> list[str]:
    return [p for name in names for p in restore.stage_paths(pipeline.stage(name))]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A DVC project whose rank, train and mei ran once: the last good outputs are in dvc.lock and the cache."""
    root = tmp_path_factory.mktemp("restore")
    assert _dvc(root, "init", "--no-scm", "-q").returncode == 0
    (root / "params.yaml").write_text(yaml.safe_dump({"tracking": {"enabled": False}}))
    (root / "toy_cli.py").write_text(TOY_CLI)
    stages = {}
    for name in STAGED:
        # the real stage's inputs and outputs; no code dependencies (the toy runs none of the stage's code)
        entry = stage_entry(dataclasses.replace(pipeline.stage(name), module=SimpleNamespace(__name__="toy")), root)
        entry.pop("params", None)
        stages[name] = {**entry, "cmd": f"{sys.executable} toy_cli.py {name}"}
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    for name, text in {"results/responses/1.npz": "responses", "results/sessions/index.json": "{}",
                       "results/tune/best_model.yaml": "layers: 2"}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    done = _dvc(root, "repro")
    assert done.returncode == 0, done.stdout + done.stderr
    return root


CASES = [(stage, path) for stage in STAGED for path in pipeline.stage(stage).inputs]


@pytest.mark.parametrize("stage, corrupted", CASES, ids=[f"{s}-{p}" for s, p in CASES])
def test_a_stage_failing_on_a_corrupt_input_keeps_its_last_good_outputs(project, stage, corrupted):
    good = _tree(project, _outputs())
    target = project / corrupted
    victim = sorted(p for p in target.rglob("*") if p.is_file())[0] if target.is_dir() else target
    original = victim.read_bytes()
    victim.write_bytes(original + b"\ncorrupt")
    try:
        failed = _dvc(project, "repro", "--single-item", stage)
    finally:
        victim.write_bytes(original)
    said = failed.stdout + failed.stderr
    assert failed.returncode != 0 and "corrupt" in said  # the stage did fail, on that input
    assert f"restored the last good outputs of `{stage}` (" in said and "from the DVC cache" in said
    for path in restore.stage_paths(pipeline.stage(stage)):
        assert path in said.split(f"outputs of `{stage}` (")[1].split(")")[0]
    assert _tree(project, _outputs()) == good  # byte for byte, metrics (kept in git, not the cache) too
    assert _dvc(project, "status", "-q").returncode == 0  # DVC agrees: every stage is as dvc.lock says


def test_without_the_cache_objects_it_says_how_to_get_them_back(project, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(project, copy)
    mei = pipeline.stage("mei")
    before = restore.snapshot(copy, restore.stage_paths(mei))
    shutil.rmtree(copy / ".dvc" / "cache")
    shutil.rmtree(copy / "results" / "mei")  # what `dvc repro` does before running the command
    (copy / "metrics" / "mei.json").unlink()
    note = restore.restore_outputs(copy, mei, None, before)
    assert "were not restored" in note and "`dvc pull mei`" in note and "results/mei" in note
    assert "`git checkout -- metrics/mei.json`" in note  # metrics live in git
    assert not (copy / "results" / "mei").exists()  # nothing half-restored


def test_outputs_the_failed_run_left_alone_are_not_replaced_by_older_ones(project, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(project, copy)
    rank = pipeline.stage("rank")
    newer = copy / "results" / "ranking" / "main.txt"
    newer.write_text("a newer good ranking, written by `meiscope rank` outside dvc repro")
    before = restore.snapshot(copy, restore.stage_paths(rank))
    assert restore.restore_outputs(copy, rank, None, before) == ""  # the failed run touched nothing
    assert newer.read_text().startswith("a newer good ranking")
    newer.write_text("half-written by the failed run")  # now it did touch it: the last good one comes back
    assert "restored the last good outputs of `rank` (results/ranking)" in restore.restore_outputs(
        copy, rank, None, before)
    assert newer.read_bytes() == (project / "results" / "ranking" / "main.txt").read_bytes()


def test_checkpoints_the_failed_run_wrote_are_kept_for_resume(project, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(project, copy)
    train = pipeline.stage("train")
    before = restore.snapshot(copy, restore.stage_paths(train))
    shutil.rmtree(copy / "results" / "train")  # what `dvc repro` does, then training crashes at epoch 40
    checkpoint = copy / "results" / "train" / "checkpoints" / "seed_1.pt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_text("progress up to epoch 40")
    assert "restored the last good outputs of `train`" in restore.restore_outputs(copy, train, None, before)
    assert checkpoint.read_text() == "progress up to epoch 40"  # not replaced by the last good run's
    assert (copy / "results" / "train" / "main.txt").read_bytes() == (project / "results/train/main.txt").read_bytes()
    checkpoint.unlink()  # a run that failed before writing any: the last good checkpoint comes back
    shutil.rmtree(copy / "models" / "ensemble")
    restore.restore_outputs(copy, train, None, before)
    assert checkpoint.read_text() == "finished"


def test_a_cache_listing_naming_a_path_outside_its_folder_is_refused(project, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(project, copy)
    entry = restore.lock_outs(copy, "mei")["results/mei"]
    listing = restore.cache_object(restore.cache_dir(copy), entry["md5"])
    os.chmod(listing, 0o644)
    listing.write_text(json.dumps([{"md5": "0" * 32, "relpath": "../../escaped.txt"}]))
    shutil.rmtree(copy / "results" / "mei")
    with pytest.raises(ValueError, match="outside its folder"):
        restore.restore_outputs(copy, pipeline.stage("mei"), None, {})
    assert not (copy / "escaped.txt").exists() and not (copy.parent / "escaped.txt").exists()


def test_the_cache_folder_comes_from_the_dvc_config(tmp_path):
    (tmp_path / ".dvc").mkdir()
    assert restore.cache_dir(tmp_path) == tmp_path / ".dvc" / "cache"
    (tmp_path / ".dvc" / "config").write_text("[core]\n    remote = x\n[cache]\n    dir = ../../shared-cache\n")
    assert restore.cache_dir(tmp_path) == (tmp_path.parent / "shared-cache").resolve()
    (tmp_path / ".dvc" / "config.local").write_text("[cache]\n    dir = /srv/dvc-cache\n")
    assert restore.cache_dir(tmp_path) == Path("/srv/dvc-cache")  # the local config wins, as in DVC


def test_every_output_dvc_deletes_is_one_restore_knows():
    """What `dvc repro` deletes before a stage runs (its outs in dvc.yaml) is what restore brings back."""
    rendered = render(Path.cwd())["stages"]
    for stage in pipeline.STAGES:
        if not stage.in_dvc:
            continue
        entry = rendered[stage.name]
        entry = entry.get("do", entry)
        outs = [next(iter(o)) if isinstance(o, dict) else o for o in entry["outs"] + entry.get("metrics", [])]
        session = 7 if stage.per_session else None
        assert set(restore.stage_paths(stage, session)) == {o.replace("${item}", "7") for o in outs}, stage.name
        assert restore.dvc_name(stage, session) == (f"{stage.name}@7" if stage.per_session else stage.name)
    assert {"models/ensemble", "results/train", "results/mei", "results/ranking"} <= set(_outputs())
