"""The recordings stay apart: no recording package imports another, and readers never import the simulator.

Imports are read from the source with the scanner that computes the stages' code dependencies
(:func:`meiscope.dvcfile.imported_modules`: every ``import`` statement, also inside functions and
``TYPE_CHECKING`` blocks, relative ones resolved), so a lazy import counts as much as a top-level one.
What several recordings share lives in neutral modules beside the packages
(``recordings/screen.py``: the monitor; ``recordings/brain_observatory.py``: the shared stimuli).
"""

from pathlib import Path

import pytest

import meiscope
from meiscope.dvcfile import imported_modules

SRC = Path(meiscope.__file__).resolve().parent
RECORDINGS = SRC / "recordings"
PACKAGES = ("two_photon", "container", "neuropixels")
SIMULATOR = "meiscope.synthetic"

# Known exceptions, each (file relative to recordings/, imported module and its submodules): files
# whose shared code has not moved out yet. A new entry needs a reason; remove one once its import is gone.
ALLOWED = {
    # a container is whole two-photon experiments: its class extends the two-photon recording and
    # reuses its downloader
    ("container/__init__.py", "meiscope.recordings.two_photon"),
    # the two-photon recording's synthetic writer is the synthetic cortex itself (no synthetic.py of its own)
    ("two_photon/__init__.py", "meiscope.synthetic.cortex"),
}


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def _violations_of(relative: str, modules: set[str], forbidden: list[str]) -> list[tuple[str, str]]:
    return [(relative, m) for m in sorted(modules) if any(_within(m, f) for f in forbidden)
            and not any(relative == file and _within(m, allowed) for file, allowed in ALLOWED)]


def _violations(files: list[Path], forbidden: list[str]) -> list[tuple[str, str]]:
    """``(file relative to recordings/, module)`` of every import of a ``forbidden`` module not in :data:`ALLOWED`."""
    return [v for path in files
            for v in _violations_of(path.relative_to(RECORDINGS).as_posix(), imported_modules(path), forbidden)]


def test_the_scan_sees_imports_inside_functions():
    # two_photon's class imports the simulator inside its synthesize method only
    assert "meiscope.synthetic.cortex" in imported_modules(RECORDINGS / "two_photon" / "__init__.py")
    assert _violations([RECORDINGS / "two_photon" / "__init__.py"], [SIMULATOR]) == []  # (an allowed one)


@pytest.mark.parametrize("package", PACKAGES)
def test_no_recording_package_imports_another(package):
    others = [f"meiscope.recordings.{p}" for p in PACKAGES if p != package]
    assert _violations(_files(RECORDINGS / package), others) == []


@pytest.mark.parametrize("package", PACKAGES)
def test_only_a_recordings_synthetic_writer_imports_the_simulator(package):
    readers = [p for p in _files(RECORDINGS / package) if p.name != "synthetic.py"]
    assert _violations(readers, [SIMULATOR]) == []


def test_the_shared_modules_import_no_recording_and_no_simulator():
    shared = sorted(p for p in RECORDINGS.glob("*.py") if p.name != "__init__.py")  # __init__: the registry
    assert {"screen.py", "brain_observatory.py", "protocol.py"} <= {p.name for p in shared}
    packages = [f"meiscope.recordings.{p}" for p in PACKAGES]
    assert _violations(shared, packages + [SIMULATOR]) == []


def test_the_simulator_uses_only_the_shared_recording_modules():
    packages = [f"meiscope.recordings.{p}" for p in PACKAGES]
    assert [v for p in _files(SRC / "synthetic")
            for v in _violations_of(p.relative_to(SRC).as_posix(), imported_modules(p), packages)] == []
