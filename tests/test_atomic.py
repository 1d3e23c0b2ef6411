"""Atomic writers: outputs whose bytes depend only on their content, whatever the interpreter."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from meiscope.atomic import npy_bytes, write_npz, write_zip

SRC = Path(__file__).resolve().parents[1] / "src"
# a second CPython 3.11 build (Debian's system interpreter, where the venv's is another build)
OTHER_PYTHONS = [p for p in ("/usr/bin/python3.11", "/usr/local/bin/python3.11", shutil.which("python3.11"))
                 if p and Path(p).resolve() != Path(sys.executable).resolve() and Path(p).exists()]


def _members() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    return {"responses.npy": npy_bytes(rng.normal(size=(50, 7)).astype(np.float32)),
            "cell_ids.npy": npy_bytes(np.arange(7, dtype=np.int64))}


def test_npz_round_trips_and_its_bytes_depend_only_on_the_arrays(tmp_path: Path) -> None:
    arrays = {"b": np.arange(12.0).reshape(3, 4), "a": np.array([1, 2, 3], dtype=np.int16)}
    write_npz(tmp_path / "one.npz", arrays)
    write_npz(tmp_path / "two.npz", dict(reversed(list(arrays.items()))))
    assert (tmp_path / "one.npz").read_bytes() == (tmp_path / "two.npz").read_bytes()
    with np.load(tmp_path / "one.npz") as loaded:
        assert sorted(loaded.files) == ["a", "b"]
        np.testing.assert_array_equal(loaded["b"], arrays["b"])
        assert loaded["a"].dtype == np.int16
    with zipfile.ZipFile(tmp_path / "one.npz") as zf:
        # no zip64 extra fields and no timestamps: what made other CPython builds write other bytes
        assert all(info.extra == b"" and info.date_time == (1980, 1, 1, 0, 0, 0) for info in zf.infolist())
    assert not list(tmp_path.glob(".*"))  # no temp file left behind


@pytest.mark.skipif(not OTHER_PYTHONS, reason="no second CPython 3.11 build on this machine")
def test_zip_bytes_are_the_same_under_another_python_build(tmp_path: Path) -> None:
    members = _members()
    for name, data in members.items():
        (tmp_path / name).write_bytes(data)
    write_zip(tmp_path / "here.npz", members)
    script = ("import sys, pathlib; sys.path.insert(0, sys.argv[1]); from meiscope.atomic import write_zip; "
              "d = pathlib.Path(sys.argv[2]); "
              "write_zip(d / 'there.npz', {n: (d / n).read_bytes() for n in sys.argv[3:]})")
    for python in OTHER_PYTHONS:
        done = subprocess.run([python, "-c", script, str(SRC), str(tmp_path), *members], capture_output=True,
                              text=True)
        assert done.returncode == 0, done.stderr
        digest = hashlib.md5((tmp_path / "there.npz").read_bytes()).hexdigest()
        assert digest == hashlib.md5((tmp_path / "here.npz").read_bytes()).hexdigest(), python


def test_a_killed_writers_temporary_folder_is_removed_by_the_next_write_and_a_live_ones_kept(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    from meiscope.atomic import atomic_dir

    out = tmp_path / "results" / "mei"
    # a stage SIGKILLed while writing its outputs (it cannot clean up)
    code = ("import sys, time; from meiscope.atomic import atomic_dir\n"
            f"with atomic_dir({str(out)!r}) as tmp:\n"
            "    (tmp / 'part.npy').write_bytes(b'x'); print(tmp, flush=True); time.sleep(60)\n")
    writer = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    killed_tmp = Path(writer.stdout.readline().strip())
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    assert killed_tmp.is_dir() and killed_tmp.name.startswith(f".mei.new-{writer.pid}-")
    # a writer still running, and a folder meiscope did not name with a pid: both kept
    live = tmp_path / "results" / f".mei.new-{os.getppid()}-abc"
    foreign = tmp_path / "results" / ".mei.new-abc"
    live.mkdir()
    foreign.mkdir()
    with atomic_dir(out) as tmp:
        (tmp / "good.npy").write_bytes(b"y")
    assert not killed_tmp.exists() and live.is_dir() and foreign.is_dir()
    assert [p.name for p in out.iterdir()] == ["good.npy"]
