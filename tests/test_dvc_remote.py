"""The shipped DVC setup: `dvc push` from one clone and `dvc pull` in another round-trip the data."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(args, cwd):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{args}: {done.stderr[-1500:]}"
    return done


def test_push_in_one_clone_and_pull_in_another_round_trip_the_data(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    _run(["git", "init", "-q"], one)
    _run(["dvc", "init", "-q"], one)
    shutil.copy(REPO / ".dvc" / "config", one / ".dvc" / "config")  # the project's remote setting
    (one / "data").mkdir()
    payload = os.urandom(4096)
    (one / "data" / "session.nwb").write_bytes(payload)
    _run(["dvc", "add", "-q", "data"], one)
    _run(["git", "add", "-A"], one)
    _run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "-m", "data"], one)
    _run(["dvc", "push", "-q"], one)
    assert (tmp_path / "meiscope-dvc-store").is_dir()  # the default remote sits beside the clones
    _run(["git", "clone", "-q", str(one), str(two)], tmp_path)
    _run(["dvc", "pull", "-q"], two)
    assert (two / "data" / "session.nwb").read_bytes() == payload
