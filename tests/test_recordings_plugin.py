"""Adding a kind of recording is one package and one registry line: a toy recording runs the stages."""

import json

import yaml

from meiscope import pipeline
from meiscope.config import load_params
from meiscope.ranking import load_selected
from meiscope.recordings import RECORDINGS

from toy_recording import N_TUNED, Toy


def test_a_new_recording_needs_one_folder_and_one_registry_line(tmp_path, monkeypatch):
    monkeypatch.setitem(RECORDINGS, "toy", Toy)  # the one line a new recording adds
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({
        "data": {"recording": "toy"}, "tracking": {"enabled": False},
        "extract": {"image_height": 8, "image_width": 8},
        "rank": {"max_p_anova": 0.001, "min_reliability": 0.5}}))
    params = load_params(tmp_path / "params.yaml")
    for name in ("data", "extract", "sessions", "rank"):
        pipeline.stage(name).run(params, tmp_path)
    ranking = json.loads((tmp_path / "metrics" / "ranking.json").read_text())
    selected = load_selected(tmp_path / "results" / "ranking")
    # the planted tuned cells (ids 100..103) and no others pass the reliability thresholds
    assert sorted(selected.tolist()) == list(range(100, 100 + N_TUNED)) and ranking["n_selected"] == N_TUNED
