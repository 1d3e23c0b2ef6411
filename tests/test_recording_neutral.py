"""The stages, the report and the terminal summaries never ask which recording they got by its name."""

import ast
from pathlib import Path

import pytest

from meiscope import pipeline
from meiscope.recordings import RECORDINGS

PACKAGE = Path(pipeline.__file__).parent
NEUTRAL = sorted([*(PACKAGE / "stages").glob("*.py"), *PACKAGE.glob("report*.py"), PACKAGE / "summaries.py"])


def _names_in(node: ast.AST) -> list[str]:
    """The recording names written as string literals anywhere inside ``node``."""
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and n.value in RECORDINGS]


def recording_branches(source: str) -> list[str]:
    """Where ``source`` branches on a recording's name: a comparison or membership test with one (``==``,
    ``in``), a dict keyed by them (a lookup table of recordings) or a ``match`` case on one."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            names = _names_in(node)
        elif isinstance(node, ast.Dict):
            names = [k.value for k in node.keys if isinstance(k, ast.Constant) and k.value in RECORDINGS]
        elif isinstance(node, ast.match_case):
            names = _names_in(node.pattern)
        else:
            continue
        line = node.pattern.lineno if isinstance(node, ast.match_case) else node.lineno
        found += [f"line {line}: {name!r}" for name in names]
    return found


def test_the_scan_finds_each_kind_of_branch():
    assert recording_branches('x = params.data.recording == "neuropixels"')
    assert recording_branches('x = recording in ("container", "two_photon")')
    assert recording_branches('x = {"container": "two_photon"}.get(params.data.recording)')
    assert recording_branches('match r:\n    case "neuropixels":\n        pass')
    assert not recording_branches('x = summary.get("recording", "two_photon")\ny = name != params.data.recording')


@pytest.mark.parametrize("path", NEUTRAL, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_stage_report_or_summary_branches_on_a_recording_name(path):
    assert recording_branches(path.read_text()) == []
