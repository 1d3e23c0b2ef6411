"""User errors that once ended in a traceback: each is now one `error: ...` line naming the file or key,
exit code 1, and nothing half-written left behind (docs/faults.md lists every case)."""

import errno
import json
import os
import shutil
import struct
from pathlib import Path

import click
import h5py
import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from meiscope import checks, cli
from meiscope.atomic import write_json
from meiscope.errors import MeiscopeError
from meiscope.recordings.downloads import hdf5_problem

# the smallest synthetic cortex `meiscope data` writes in about a second
TINY = {"synthetic": {"n_cells": 8, "n_images": 6, "repeats": 3, "image_height": 40, "image_width": 50,
                      "spontaneous_s": 5.0},
        "tracking": {"enabled": False}}
NWB = Path("data/synthetic/ophys_experiment_data/900000001.nwb")
STAMP = Path("data/synthetic/synthetic_params.json")


def _invoke(root: Path, *args: str):
    return CliRunner().invoke(cli.main, [*args, "--params", str(root / "params.yaml")])


def _one_line_error(result, *names: str) -> str:
    """The single `error:` line of a failed command, after checking exit code 1 and no traceback."""
    output = result.output + (result.stderr or "")
    assert result.exit_code == 1, output
    assert "Traceback" not in output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert result.stderr.rstrip().endswith(errors[0])
    for name in names:
        assert name in errors[0]
    return errors[0]


def _hidden_leftovers(folder: Path) -> list[Path]:
    """Temporary files of the atomic writers (``.<name>.*``) anywhere below ``folder``."""
    return [p for p in folder.rglob(".*") if p.is_file()]


def _project(root: Path, raw: dict = TINY) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    return root


@pytest.fixture(scope="module")
def synthesized(tmp_path_factory) -> Path:
    """A project whose tiny synthetic data `meiscope data` has written (copy it before changing it)."""
    root = _project(tmp_path_factory.mktemp("synthesized"))
    result = _invoke(root, "data")
    assert result.exit_code == 0, result.output
    return root


@pytest.fixture
def project(synthesized, tmp_path) -> Path:
    return Path(shutil.copytree(synthesized, tmp_path / "project"))


# --------------------------------------------------------------------------------------
# params
# --------------------------------------------------------------------------------------
def test_bad_yaml_in_set_is_one_line_naming_the_override(tmp_path):
    root = _project(tmp_path)
    line = _one_line_error(_invoke(root, "data", "--set", "train.seeds=[1,"), "train.seeds=[1,", "not valid YAML")
    assert str(root / "params.yaml") in line or "params.yaml" in line
    assert not (root / "data").exists()  # refused before any work


def test_a_cortex_too_large_for_memory_is_refused_before_allocating(tmp_path):
    root = _project(tmp_path)
    line = _one_line_error(_invoke(root, "data", "--set", "synthetic.n_cells=10000000"), "'synthetic.n_cells'", "GB")
    assert "memory" in line
    assert not (root / "data").exists()


def test_the_memory_check_compares_with_this_machine(monkeypatch, tmp_path):
    from meiscope.config import ConfigError, parse_params, synthetic_memory_bytes

    need = synthetic_memory_bytes(parse_params(TINY).synthetic)
    monkeypatch.setattr(checks, "physical_memory_bytes", lambda: int(need * 1.5))
    parse_params(TINY)  # fits
    twice_the_cells = {"synthetic": {**TINY["synthetic"], "n_cells": 2 * TINY["synthetic"]["n_cells"]}}
    with pytest.raises(ConfigError, match=r"'synthetic.n_cells' is too large: .* GB .* this machine's"):
        parse_params(twice_the_cells)


# --------------------------------------------------------------------------------------
# data: stamp, manifest, truncated sessions
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ['{"params": ', "[1, 2]", "\xff\xfe not text"])
def test_a_corrupt_stamp_is_one_line_naming_it(project, text):
    (project / STAMP).write_bytes(text.encode("latin-1"))
    nwb = (project / NWB).read_bytes()
    _one_line_error(_invoke(project, "data"), str(project / STAMP), "rerun `meiscope data`")
    assert (project / NWB).read_bytes() == nwb  # nothing touched


@pytest.mark.parametrize("text", ['{"foo": 1}', "not json at all", '{"manifest": [{"key": "BASEDIR"}]}'])
def test_a_foreign_manifest_is_refused_and_kept(tmp_path, text):
    root = _project(tmp_path)
    manifest = root / "data" / "synthetic" / "manifest.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(text)
    _one_line_error(_invoke(root, "data"), str(manifest), "not an allensdk manifest")
    assert manifest.read_text() == text  # never overwritten or deleted
    assert sorted(p.name for p in manifest.parent.iterdir()) == ["manifest.json"]


def test_a_truncated_synthetic_session_is_reported_never_said_to_match(project):
    nwb = project / NWB
    whole = nwb.read_bytes()
    nwb.write_bytes(whole[: len(whole) // 2])
    result = _invoke(project, "data")
    _one_line_error(result, str(nwb), "truncated or damaged", "delete it and rerun `meiscope data`")
    assert "already matches" not in result.output + result.stderr
    assert nwb.stat().st_size == len(whole) // 2  # reported, not silently replaced
    nwb.unlink()  # what the message says to do
    assert _invoke(project, "data").exit_code == 0
    assert hdf5_problem(nwb, ("general",)) is None


@pytest.mark.parametrize("suffix", [".npz", ".json"])
def test_a_truncated_ground_truth_is_reported(project, suffix):
    truth = project / "data" / "synthetic" / "ground_truth" / f"900000001{suffix}"
    whole = truth.read_bytes()
    truth.write_bytes(whole[: len(whole) * 2 // 3])
    result = _invoke(project, "data")
    _one_line_error(result, str(truth), "truncated or damaged")
    assert "already matches" not in result.output + result.stderr


def test_whole_synthetic_data_still_match_and_the_stamp_is_unchanged(project):
    stamp, written = (project / STAMP).read_bytes(), (project / NWB).stat().st_mtime_ns
    assert _invoke(project, "data").exit_code == 0
    assert (project / NWB).stat().st_mtime_ns == written  # matched: not synthesized again
    assert (project / STAMP).read_bytes() == stamp  # data/ keeps its bytes (data.dvc pins them)


def test_hdf5_problem_sees_truncation_groups_and_sizes(tmp_path):
    path = tmp_path / "session.nwb"
    with h5py.File(path, "w") as f:
        f.create_group("general")
        f["processing/data"] = np.arange(20_000.0)
    whole = path.read_bytes()
    assert hdf5_problem(path, ("general", "processing")) is None
    assert "no top-level group units" in hdf5_problem(path, ("general", "units"))
    assert "expected" in hdf5_problem(path, size=len(whole) + 1)
    path.write_bytes(whole[: len(whole) - 1000])  # cut inside the last dataset
    assert "h5py cannot read it" in hdf5_problem(path)
    # cut short with a superblock that agrees (its end-of-file address rewritten): the data are still missing
    with h5py.File(path, "w") as f:
        f.create_group("general")
        late = f.create_dataset("general/late", shape=(20_000,), dtype="f8")
        f.flush()
        late[:] = np.arange(20_000.0)  # contiguous data are placed when first written: at the end
    cut = bytearray(path.read_bytes()[:-5000])
    cut[40:48] = struct.pack("<Q", len(cut))  # superblock version 0: end-of-file address at byte 40
    path.write_bytes(bytes(cut))
    assert hdf5_problem(path, ("general",)) is not None


# --------------------------------------------------------------------------------------
# outputs: a full disk, non-finite figures
# --------------------------------------------------------------------------------------
def test_a_full_disk_is_one_line_with_the_free_space_and_nothing_half_written(tmp_path, monkeypatch):
    root = _project(tmp_path)

    def full(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))

    monkeypatch.setattr(os, "replace", full)
    line = _one_line_error(_invoke(root, "data"), "no space left", "GB free")
    assert str(root / "data" / "synthetic") in line
    folder = root / "data" / "synthetic"
    assert _hidden_leftovers(folder) == []
    assert not list(folder.rglob("*.nwb")) and not (root / STAMP).exists()


def _fake_stage(metrics: dict) -> click.Command:
    """A stage command that writes ``metrics`` as metrics/ranking.json (through the CLI's wrapper)."""
    def rank(params, root):
        write_json(root / "metrics" / "ranking.json", metrics)
        return None

    return click.command(name="rank")(cli.PARAMS_OPTION(cli._stage(rank)))


def test_disk_full_in_write_json_names_the_file_not_the_temp_file(tmp_path, monkeypatch):
    root = _project(tmp_path)

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")  # a write error carries no file name

    monkeypatch.setattr(Path, "write_text", full)
    result = CliRunner().invoke(_fake_stage({"n_cells": 3}), ["--params", str(root / "params.yaml")])
    _one_line_error(result, str(root / "metrics" / "ranking.json"), "GB free")
    assert not (root / "metrics").exists() or list((root / "metrics").iterdir()) == []


def test_a_non_finite_headline_figure_fails_the_stage_naming_the_key(tmp_path):
    root = _project(tmp_path)
    result = CliRunner().invoke(_fake_stage({"gt_recall": float("nan"), "n_cells": 3}),
                                ["--params", str(root / "params.yaml")])
    _one_line_error(result, "'ranking.gt_recall'", str(root / "metrics" / "ranking.json"))
    assert not (root / "metrics" / "ranking.json").exists()


def test_other_non_finite_values_are_written_as_null_in_strict_json(tmp_path):
    path = tmp_path / "metrics" / "ranking.json"
    write_json(path, {"median_snr": np.float32("nan"), "gt_recall": 0.5, "spread": [np.inf, 1.0],
                      "nested": {"gt_recall": -np.inf}})

    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    data = json.loads(path.read_text(), parse_constant=refuse)
    assert data == {"median_snr": None, "gt_recall": 0.5, "spread": [None, 1.0], "nested": {"gt_recall": None}}


def test_write_json_outside_metrics_has_no_headline_rule(tmp_path):
    write_json(tmp_path / "ranking.json", {"gt_recall": float("nan")})
    assert json.loads((tmp_path / "ranking.json").read_text()) == {"gt_recall": None}
    with pytest.raises(MeiscopeError, match="headline figure 'headline.recall'"):
        write_json(tmp_path / "metrics" / "headline.json", {"recall": float("inf")})


def test_a_full_disk_reported_by_h5py_in_words_is_recognised(tmp_path):
    root = _project(tmp_path)

    def rank(params, root):  # h5py's error carries the C library's text, not an errno
        raise OSError(f"Can't write data (file write failed: errno = 28, error message = "
                      f"'{os.strerror(errno.ENOSPC)}')")

    command = click.command(name="rank")(cli.PARAMS_OPTION(cli._stage(rank)))
    _one_line_error(CliRunner().invoke(command, ["--params", str(root / "params.yaml")]), "no space left", "GB free")
