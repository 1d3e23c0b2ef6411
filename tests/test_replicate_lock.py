"""Replicates cannot collide (one process per replicate folder) nor escape the project (configured paths)."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from meiscope import replicate as rep
from meiscope.cli import main
from meiscope.config import ConfigError, load_params, parse_params
from meiscope.errors import MeiscopeError

HOLDER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from meiscope.replicate import folder_lock

    with folder_lock(Path(sys.argv[1]), "`meiscope replicate`"):
        print("held", flush=True)
        sys.stdin.read()  # until the test closes our stdin
""")


@pytest.fixture
def holder():
    """Start a process that holds the lock of a folder until the test ends; yields a function(folder) -> pid."""
    procs = []

    def hold(folder: Path) -> int:
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "held"
        return proc.pid

    yield hold
    for proc in procs:
        proc.stdin.close()
        proc.wait(timeout=10)


def _project(root: Path, **sections) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    # the fixed seeds: this folder is no git checkout to draw confirmatory seeds from
    replicate = {"seeds": [1, 2], "protocol": "development"}
    (root / "params.yaml").write_text(yaml.safe_dump({"replicate": replicate, **sections}))
    return root / "params.yaml"


def _one_error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip() and "it/s]" not in line]  # not tqdm
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.mark.parametrize("command, recording, held", [
    ("replicate", "two_photon", "replicates"),  # the whole run holds the replicates' folder
    ("replicate", "container", "replicates/container"),
    ("ablation", "container", "replicates/container/seed_1"),  # ablation reaches a replicate someone runs
])
def test_a_second_run_on_the_same_folder_exits_naming_the_holder(tmp_path, holder, command, recording, held):
    params = _project(tmp_path, data={"recording": recording})
    pid = holder(tmp_path / held)
    result = CliRunner().invoke(main, [command, "--params", str(params)])
    line = _one_error_line(result)
    assert f"{tmp_path / held}: in use by `meiscope replicate` (pid {pid}, since " in line
    assert list((tmp_path / "replicates").rglob("dvc.yaml")) == []  # it did not start working anywhere


def test_the_lock_is_released_on_errors_and_frees_the_folder_for_the_next_run(tmp_path, monkeypatch):
    folder = tmp_path / "replicates" / "seed_3"
    monkeypatch.setattr(rep, "_dvc", lambda *args, **kwargs: 1)  # `dvc init` fails inside the lock
    with pytest.raises(MeiscopeError, match="dvc init --no-scm` failed"):
        rep.run_project(folder, {"data": {}}, (), "# test")
    with rep.folder_lock(folder, "`a later run`"):  # free again: a leaked lock would refuse this
        assert "`a later run` (pid" in (folder / rep.LOCK_FILE).read_text()
    assert (folder / rep.LOCK_FILE).read_text() == ""  # released: names nobody
    taken = subprocess.run([sys.executable, "-c", "import fcntl, sys; f = open(sys.argv[1]); "
                            "fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)", str(folder / rep.LOCK_FILE)])
    assert taken.returncode == 0  # another process can take it at once


def test_a_lock_held_by_a_process_that_died_is_free(tmp_path):
    folder = tmp_path / "replicates"
    died = subprocess.run([sys.executable, "-c", HOLDER.replace("sys.stdin.read()", "import os; os._exit(1)"),
                           str(folder)], capture_output=True, text=True)
    assert died.stdout.strip() == "held" and died.returncode == 1
    with rep.folder_lock(folder, "`meiscope replicate`"):
        pass


# --------------------------------------------------------------------------------------
# configured paths stay inside the project
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("section, key, value", [
    ("replicate", "folder", "inside/../../outside/x"),
    ("data", "synthetic_dir", "../elsewhere"),
    ("data", "allen_dir", "/tmp"),
    ("data", "synthetic_container_dir", "data/../../outside/container"),
    ("tune", "journal_file", "../journal.log"),
    ("train", "architecture_file", "../outside/best_model.yaml"),
    ("services", "dir", "../outside"),
])
def test_a_configured_path_outside_the_project_is_refused_naming_the_key(tmp_path, section, key, value):
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "project").mkdir()
    params = _project(tmp_path / "project", **{section: {key: value}})
    with pytest.raises(ConfigError, match=f"'{section}.{key}' must be a (path inside the project|relative folder below|folder inside the repository)"):
        load_params(params)
    line = _one_error_line(CliRunner().invoke(main, ["rank", "--params", str(params)]))
    assert f"'{section}.{key}'" in line and str(params) in line
    assert not (outside / "seed_1").exists() and list(outside.iterdir()) == []


def test_replicates_dir_refuses_a_folder_outside_and_leaves_a_users_symlink_alone(tmp_path):
    (tmp_path / "project").mkdir()
    with pytest.raises(ConfigError, match="'replicate.folder'"):
        parse_params({"replicate": {"folder": ".."}})  # caught lexically, before any root is known
    # a folder the user linked to a bigger disk is their choice: meiscope writes through the link
    (tmp_path / "disk").mkdir()
    (tmp_path / "project" / "replicates").symlink_to(tmp_path / "disk")
    params = parse_params({"replicate": {"seeds": [1, 2]}})
    assert rep.replicates_dir(params, tmp_path / "project") == tmp_path / "project" / "replicates"


def test_paths_inside_the_project_and_an_arm_reading_its_replicates_data_are_accepted(tmp_path):
    root = tmp_path / "project"
    params = _project(root, data={"synthetic_dir": "data/../data/synthetic"}, replicate={"seeds": [1, 2],
                                                                                        "folder": "runs/replicates"})
    assert load_params(params).replicate.folder == "runs/replicates"
    seed = root / "runs" / "replicates" / "container" / "seed_7"
    arm = seed / "ablation" / "scenes"
    arm.mkdir(parents=True)
    (seed / "params.yaml").write_text("# replicate 7 of x (written by meiscope replicate)\ndata: {}\n")
    arm_raw = {"data": {"recording": "container", "synthetic_container_dir": "../../data/synthetic_container"}}
    (arm / "params.yaml").write_text("# ablation arm 'x' of replicate 7 (written by meiscope ablation)\n"
                                     + yaml.safe_dump(arm_raw))
    assert load_params(arm / "params.yaml").data.synthetic_container_dir.startswith("../../")
    (arm / "params.yaml").write_text(yaml.safe_dump(arm_raw))  # a project of its own: ../../ leaves it
    with pytest.raises(ConfigError, match="'data.synthetic_container_dir'"):
        load_params(arm / "params.yaml")

