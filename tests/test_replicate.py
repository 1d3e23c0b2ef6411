"""Replicates: per-seed projects, resumable runs, intervals and conclusions that must hold in every replicate."""

import hashlib
import json

import numpy as np
import pytest
import yaml
from scipy.stats import t

from meiscope import replicate as rep
from meiscope.config import load_params, parse_params
from meiscope.errors import MeiscopeError
from meiscope.science.catalogue import format_conclusion, format_interval

from test_pipeline import TINY


def fake_metrics(value: float, verdict: int) -> dict:
    return {
        "ranking": {"n_selected": 10, "gt_precision": value, "gt_recall": 1.0},
        "train": {"gt_fresh_corr_mean": value / 2},
        "mei": {}, "gabor": {}, "tune": {},
        "validate": {"gt_mei_rate_ratio_median_simple": value, "gt_verdict_mei_vs_gabor_simple": verdict,
                     "gt_verdict_mei_vs_gabor_complex": 1, "model_verdict_mei_vs_gabor_simple": 1},
    }


def test_intervals_are_t_intervals_of_the_replicate_means():
    summary = rep.summarise_replicates({1: fake_metrics(0.5, -1), 2: fake_metrics(0.7, -1), 3: fake_metrics(0.9, 0)},
                                       confidence=0.95)
    entry = summary["figures"]["ranking.gt_precision"]
    half = t.ppf(0.975, 2) * 0.2 / np.sqrt(3)  # sd of (0.5, 0.7, 0.9) is 0.2
    assert entry["mean"] == pytest.approx(0.7) and entry["sd"] == pytest.approx(0.2)
    assert (entry["ci_low"], entry["ci_high"]) == pytest.approx((0.7 - half, 1.0))  # a precision: clipped to [0, 1]
    assert entry["values"] == [0.5, 0.7, 0.9]
    # ratios: geometric mean and an interval on the log scale (2 and 1/2 average to 1)
    ratio = rep.interval([2.0, 0.5, 1.0], 0.95, log_scale=True)
    assert ratio["mean"] == pytest.approx(1.0) and ratio["ci_low"] * ratio["ci_high"] == pytest.approx(1.0)
    assert rep.interval([2.0, 0.0, None], 0.95, log_scale=True)["n"] == 1  # a zero ratio has no log
    missing = summary["figures"]["validate.gt_mei_corr_median_simple"]
    assert missing["mean"] is None and missing["n"] == 0  # absent everywhere: no number invented
    assert "gabor.gabor_patch_frac_orientation_agrees" not in summary["figures"]  # Neuropixels only
    assert format_interval(entry) == f"0.70 [{0.7 - half:.2f}, 1.00]"


def test_the_two_recordings_replicates_sit_side_by_side_in_their_own_files(tmp_path):
    from meiscope.report_sections import recordings_section

    seeds = {1: fake_metrics(0.5, -1), 2: fake_metrics(0.7, -1)}
    two_photon = rep.summarise_replicates(seeds, confidence=0.95)  # written before summaries named a recording
    patched = {s: {**m, "gabor": {"gabor_patch_frac_orientation_agrees": 0.5 + s / 10}} for s, m in seeds.items()}
    neuropixels = {**rep.summarise_replicates(patched, confidence=0.95), "recording": "neuropixels"}
    section = recordings_section(neuropixels, two_photon)
    assert section.title == "Two recordings of one study: two-photon dF/F against Neuropixels spike counts"
    assert section.grid[0][1:] == ["two-photon dF/F", "Neuropixels spike counts"]
    rows = {row[0]: row[1:] for row in section.grid[1:]}
    assert rows["ranking precision vs truth"] == ["0.60 [0.00, 1.00]"] * 2
    assert rows["best patch orientation agrees with optimal Gabor"][0] == "n/a"
    assert "metrics/replicates-neuropixels.json" in section.source
    assert "the same synthetic cortices" in section.intro
    params = parse_params({"data": {"recording": "neuropixels"}})
    assert rep.summary_file(tmp_path, "neuropixels").name == "replicates-neuropixels.json"
    assert rep.summary_file(tmp_path, "two_photon").name == "replicates.json"
    assert rep.replicate_dir(params, tmp_path, 7) == tmp_path / "replicates" / "neuropixels" / "seed_7"
    # the container study never shares a folder or a summary with the two-photon one
    container = parse_params({"data": {"recording": "container"}})
    assert rep.replicate_dir(container, tmp_path, 7) == tmp_path / "replicates" / "container" / "seed_7"
    assert rep.summary_file(tmp_path, "container").name == "replicates-container.json"


def test_a_conclusion_counts_only_when_every_replicate_agrees():
    summary = rep.summarise_replicates({1: fake_metrics(0.5, -1), 2: fake_metrics(0.7, -1), 3: fake_metrics(0.9, 0)},
                                       confidence=0.95)
    simple = summary["conclusions"]["simple"]["MEI vs optimal Gabor, in truth"]
    assert simple["per_replicate"] == ["loses", "loses", "ties"]
    assert not simple["holds_in_every_replicate"] and simple["conclusion"] == "inconsistent"
    assert format_conclusion(simple) == "no conclusion (loses, loses, ties)"
    complex_ = summary["conclusions"]["complex"]["MEI vs optimal Gabor, in truth"]
    assert complex_["holds_in_every_replicate"] and complex_["conclusion"] == "beats"
    assert format_conclusion(complex_) == "MEI beats in every replicate"
    absent = summary["conclusions"]["conjunction"]["MEI vs optimal Gabor, in truth"]
    assert not absent["holds_in_every_replicate"]  # no verdict is no conclusion


def test_replicate_params_change_every_seed_and_nothing_else(tmp_path):
    params = parse_params({"tracking": {"uri": "sqlite:///mlflow.db"}})
    raw = rep.replicate_params(params, 102, tmp_path)
    assert raw["synthetic"]["seed"] == raw["synthetic_neuropixels"]["seed"] == raw["extract"]["split"]["seed"] == 102
    assert raw["rank"]["seed"] == raw["tune"]["seed"] == raw["mei"]["seed"] == raw["train"]["fresh_seed"] == 102
    assert raw["train"]["seeds"] == [102001, 102002, 102003]
    assert raw["tracking"]["uri"] == f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}"
    assert raw["tracking"]["experiment"] == "meiscope-replicate-102"
    assert raw["model"] == yaml.safe_load(yaml.safe_dump(raw))["model"]
    reparsed = parse_params(raw)  # a valid params file for the replicate's own project root
    assert reparsed.synthetic.n_cells == params.synthetic.n_cells and reparsed.gabor == params.gabor


def test_replicate_refuses_real_data_and_single_seeds(tmp_path):
    with pytest.raises(MeiscopeError, match="synthetic"):
        rep.replicate(parse_params({"data": {"source": "allen"}}), tmp_path, progress=False)
    with pytest.raises(MeiscopeError, match="at least 2 distinct seeds"):
        rep.replicate(parse_params({"replicate": {"protocol": "development"}}), tmp_path, seeds=[5, 5], progress=False)


FAKE_MEISCOPE = """#!{python}
# Stands in for `meiscope <stage>` under `dvc repro`: writes the stage's outputs and records that it ran.
import json, os, pathlib, sys
name, outputs, metric_names, inner = {stages!r}[sys.argv[1]]
folder = pathlib.Path.cwd()
with open({ran!r}, "a") as f:
    f.write(f"{{folder.name}} {{name}}\\n")
kill = pathlib.Path({kill!r})
if name == "gabor" and folder.name == "seed_2" and kill.exists():
    kill.unlink()
    sys.exit("killed")
content = name + os.urandom(8).hex()  # a stage that runs again writes other bytes, as a real one may
for out in outputs:
    path = folder / out
    if path.suffix:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    else:
        path.mkdir(parents=True, exist_ok=True)
        (path / "out.txt").write_text(content)
for path in inner:  # files inside an output folder that a later stage reads
    (folder / path).write_text(content)
fake = {fake}
for stem in metric_names:
    (folder / "metrics").mkdir(exist_ok=True)
    (folder / "metrics" / f"{{stem}}.json").write_text(json.dumps(fake.get(stem, {{}})))
"""


def _fake_stage_commands(tmp_path, monkeypatch, kill_once: bool = False):
    """A `meiscope` first on the PATH of `dvc repro`; returns a function that reads and clears what ran.

    ``kill_once``: seed_2's gabor stage fails the first time it runs.
    """
    import os
    import sys

    bin_dir, ran, kill = tmp_path / "bin", tmp_path / "ran.txt", tmp_path / "kill"
    bin_dir.mkdir()
    inputs = {i for s in rep.replicate_stages() for i in s.inputs}
    stages = {s.cli_command: (s.name, list(s.outputs), list(s.metric_names),
                              sorted(i for i in inputs for o in s.outputs if i.startswith(o + "/")))
              for s in rep.replicate_stages() if not s.per_session}
    script = FAKE_MEISCOPE.format(python=sys.executable, ran=str(ran), kill=str(kill), stages=stages,
                                  fake=repr(fake_metrics(0.6, 1)))
    (bin_dir / "meiscope").write_text(script)
    (bin_dir / "meiscope").chmod(0o755)
    real = rep.stage_command_path()
    monkeypatch.setattr(rep, "stage_command_path", lambda: f"{bin_dir}{os.pathsep}{real}")
    if kill_once:
        kill.write_text("")

    def stages_run():
        lines = ran.read_text().split("\n") if ran.exists() else []
        ran.unlink(missing_ok=True)
        return [tuple(line.split()) for line in lines if line]

    return stages_run


@pytest.mark.slow
def test_an_interrupted_replicate_run_resumes_where_it_stopped(tmp_path, monkeypatch):
    """DVC decides: finished stages are not run again; params or code changes rerun from that stage on."""
    import meiscope.dvcfile as dvcfile
    import shutil

    (tmp_path / "fake").mkdir()
    stages_run = _fake_stage_commands(tmp_path / "fake", monkeypatch, kill_once=True)
    source = tmp_path / "src"  # the replicates' code deps point at this copy, so the test can change it
    shutil.copytree(dvcfile.SOURCE_ROOT, source, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    monkeypatch.setattr(dvcfile, "SOURCE_ROOT", source)
    project = tmp_path / "project"
    project.mkdir()
    (project / "params.yaml").write_text(yaml.safe_dump({"replicate": {"seeds": [1, 2], "protocol": "development"}}))
    params = load_params(project / "params.yaml")
    with pytest.raises(MeiscopeError, match="seed_2: dvc repro failed"):
        rep.replicate(params, project, progress=False)
    ran = stages_run()
    assert ran.count(("seed_1", "validate")) == 1 and ("seed_2", "validate") not in ran
    assert [s for f, s in ran if f == "seed_1"] == [s.name for s in rep.replicate_stages() if not s.per_session]
    summary = rep.replicate(params, project, progress=False)
    assert stages_run() == [("seed_2", "gabor"), ("seed_2", "validate")]  # everything else is kept
    assert summary["k"] == 2 and len(set(summary["code_keys"].values())) == 1
    written = json.loads((project / "metrics" / "replicates.json").read_text())
    assert written["seeds"] == [1, 2] and (project / "replicates" / "intervals.png").stat().st_size > 10_000
    assert written["params_key"] == rep.settings_key(params)  # the report tells a summary of other settings
    # another MEI setting: every replicate reruns from mei on; its data, models and ranking are kept
    (project / "params.yaml").write_text(yaml.safe_dump({"replicate": {"seeds": [1, 2], "protocol": "development"},
                                                        "mei": {"steps": 50}}))
    rep.replicate(load_params(project / "params.yaml"), project, progress=False)
    assert stages_run() == [(f"seed_{s}", stage) for s in (1, 2) for stage in ("mei", "gabor", "validate")]
    # a change of the code the gabor stage runs: gabor and validate rerun, nothing before them
    with open(source / "meiscope" / "stages" / "gabor.py", "a") as f:
        f.write("\n# changed\n")
    changed = rep.replicate(load_params(project / "params.yaml"), project, progress=False)
    assert stages_run() == [(f"seed_{s}", stage) for s in (1, 2) for stage in ("gabor", "validate")]
    assert changed["code_keys"] != summary["code_keys"]


def test_replicates_run_every_stage_of_the_table_but_the_report():
    from meiscope.pipeline import STAGES

    assert [s.name for s in rep.replicate_stages()] == [s.name for s in STAGES if s.name != "report"]
    assert {"sessions", "extract-session", "rank-session"} <= {s.name for s in rep.replicate_stages()}


@pytest.mark.slow
def test_two_tiny_replicates_end_to_end(tmp_path):
    """The real stages, each in its own process, on two tiny cortices; then the report shows the intervals."""
    from meiscope import pipeline

    (tmp_path / "params.yaml").write_text(yaml.safe_dump({**TINY, "replicate": {"seeds": [11, 12],
                                                                              "protocol": "development"},
                                                       "tracking": {"enabled": False}}))  # MLflow: test_pipeline
    params = load_params(tmp_path / "params.yaml")
    summary = rep.replicate(params, tmp_path, device="cpu", progress=False)
    for seed in (11, 12):
        folder = tmp_path / "replicates" / f"seed_{seed}"
        validate = json.loads((folder / "metrics" / "validate.json").read_text())
        assert validate["n_true_optimum_beaten"] == 0
        assert "Running stage 'train'" in (folder / "logs" / "dvc-repro.log").read_text()
    entry = summary["figures"]["train.gt_fresh_corr_mean"]
    assert entry["n"] == 2 and entry["ci_low"] <= entry["mean"] <= entry["ci_high"]
    # the two cortices differ (new cells and scenes), so the figures do too
    assert entry["values"][0] != entry["values"][1]
    pipeline.stage("report").run(params, tmp_path)
    html = (tmp_path / "report" / "index.html").read_text()
    assert "Replicates (two-photon dF/F): what holds across new cortices" in html and "replicate intervals" in html


# --------------------------------------------------------------------------------------
# protocols: confirmatory seeds drawn from the commit, development seeds fixed
# --------------------------------------------------------------------------------------
def _git(root, *args):
    import subprocess

    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args], cwd=root,
                          capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def checkout(tmp_path, monkeypatch):
    """A committed project in a tiny git repository whose src/ is the code that runs (as in meiscope's own)."""
    import meiscope.dvcfile as dvcfile

    root = tmp_path / "project"
    (root / "src" / "meiscope").mkdir(parents=True)
    (root / "src" / "meiscope" / "stage.py").write_text("STEP = 1\n")
    (root / "params.yaml").write_text("replicate:\n  seeds: [101, 102, 103]  # development\n")
    (root / "dvc.lock").write_text("schema: '2.0'\n")
    _git(root, "init", "-q")
    _git(root, "add", ".")
    _git(root, "commit", "-q", "-m", "one")
    monkeypatch.setattr(dvcfile, "SOURCE_ROOT", root / "src")
    return root


def _commit(root, path, text):
    (root / path).write_text(text)
    _git(root, "commit", "-q", "-am", f"edit {path}")


def _seeds(root, **replicate):
    params = load_params(root / "params.yaml", [f"replicate.{k}={v}" for k, v in replicate.items()])
    return rep.confirmatory_seeds(params, root)


def test_confirmatory_seeds_are_the_published_function_of_the_committed_src_tree_and_params_yaml(checkout):
    seeds, derivation = _seeds(checkout)
    assert derivation["src_tree"] == _git(checkout, "rev-parse", "HEAD:src")
    assert derivation["params_blob"] == _git(checkout, "hash-object", "params.yaml")
    # the rule as the docs state it, recomputed by hand from the two ids
    by_hand = []
    for i in range(3):
        text = f"meiscope-confirmatory {derivation['src_tree']} {derivation['params_blob']} {i}"
        by_hand.append(1000 + int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) % 1_000_000)
    assert seeds == by_hand and len(set(seeds)) == 3 and derivation["n"] == 3
    assert _seeds(checkout) == (seeds, derivation)  # deterministic
    assert all(1000 <= s < 1_001_000 and s * 1000 + 999 < 2**32 for s in seeds)  # training seeds stay 32-bit
    assert 101 in derivation["avoided"] and 0 in derivation["avoided"]  # development seeds and the default run's
    # more replicates extend the same sequence (replicate.* is no setting of the study)
    assert _seeds(checkout, n_confirmatory=5)[0][:3] == seeds
    # a seed to avoid is skipped, the next one drawn instead
    assert rep.derive_seeds("a", "b", 2, avoid=(rep.derive_seeds("a", "b", 1)[0],)) == rep.derive_seeds("a", "b", 3)[1:]

    _commit(checkout, "params.yaml", "replicate:\n  seeds: [101, 102, 103]  # development seeds\n")  # a comment
    after_params, d2 = _seeds(checkout)
    assert d2["src_tree"] == derivation["src_tree"] and d2["params_blob"] != derivation["params_blob"]
    assert not set(after_params) & set(seeds)
    _commit(checkout, "src/meiscope/stage.py", "STEP = 2\n")
    after_code, d3 = _seeds(checkout)
    assert d3["src_tree"] != d2["src_tree"] and d3["params_blob"] == d2["params_blob"]
    assert not set(after_code) & (set(seeds) | set(after_params))


@pytest.mark.parametrize("edit, named", [
    (lambda root: (root / "src" / "meiscope" / "stage.py").write_text("STEP = 3\n"), "src/meiscope/stage.py"),
    (lambda root: (root / "params.yaml").write_text("replicate:\n  seeds: [1, 2]\n"), "params.yaml"),
    (lambda root: (root / "src" / "meiscope" / "new.py").write_text(""), "src/meiscope/new.py (untracked)"),
    (lambda root: (root / "README.md").write_text("x"), None),  # untracked outside src/: not code that runs
    (lambda root: (root / "dvc.lock").write_text("schema: '3.0'\n"), None),  # what the pipeline writes
])
def test_a_confirmatory_run_refuses_a_tree_that_is_not_its_commit_in_one_line(checkout, edit, named):
    from click.testing import CliRunner

    from meiscope.cli import main

    edit(checkout)
    if named is None:
        assert len(_seeds(checkout)[0]) == 3
        return
    with pytest.raises(MeiscopeError, match="a confirmatory run needs a clean tree") as err:
        _seeds(checkout)
    assert named in str(err.value) and "\n" not in str(err.value)
    result = CliRunner().invoke(main, ["replicate", "--params", str(checkout / "params.yaml")])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0]
    assert not (checkout / "replicates").exists() or not list((checkout / "replicates").rglob("dvc.yaml"))


def test_a_summary_of_another_recording_is_current_under_that_recordings_own_settings(tmp_path):
    table = "recording_overrides:\n  neuropixels:\n    model: {{channels: [{0}, {0}, {0}]}}\n"
    (tmp_path / "params.yaml").write_text(table.format(32))
    summary = {"params_key": rep.settings_key(load_params(tmp_path / "params.yaml", ["data.recording=neuropixels"]))}
    report_params = load_params(tmp_path / "params.yaml", ["data.recording=container"])
    assert rep.stale_note(summary, report_params, "meiscope replicate", "neuropixels", tmp_path) == ""
    # the container's settings are not the Neuropixels study's: without the file the two cannot be told
    assert "other settings" in rep.stale_note(summary, report_params, "meiscope replicate", "neuropixels")
    (tmp_path / "params.yaml").write_text(table.format(24))  # the recording's own table changed since
    assert "other settings" in rep.stale_note(summary, report_params, "meiscope replicate", "neuropixels", tmp_path)


@pytest.mark.parametrize("setting, changes", [
    ("synthetic_neuropixels.visp_units=150", {"neuropixels"}),
    ("recording_overrides.neuropixels.model.channels=[24,24,24]", {"neuropixels"}),
    ("synthetic_container.match_fraction=0.7", {"container"}),
    ("recording_overrides.container.model.channels=[24,24,24]", {"container"}),
    ("allen.max_experiments=2", {"two_photon", "container"}),  # the container downloads through `allen`
    ("mei.steps=150", {"two_photon", "container", "neuropixels"}),
    ("services.mlflow_port=5002", set()),  # where the team stack listens changes no result
    ("tracking.experiment=elsewhere", set()),
])
def test_a_summary_is_stale_only_after_a_setting_its_recordings_study_reads(tmp_path, setting, changes):
    (tmp_path / "params.yaml").write_text("data: {source: synthetic}\n")

    def keys(*settings):
        return {name: rep.settings_key(load_params(tmp_path / "params.yaml", [f"data.recording={name}", *settings]))
                for name in ("two_photon", "container", "neuropixels")}

    before, after = keys(), keys(setting)
    assert {name for name in before if before[name] != after[name]} == changes
    assert len(set(before.values())) == 3  # the three studies never share a key


def test_the_ablation_runs_the_replicate_studys_seeds_unless_told_otherwise(checkout):
    def chosen(seeds, *settings):
        params = load_params(checkout / "params.yaml", ["data.recording=neuropixels", *settings])
        return rep.study_seeds(params, checkout, seeds, "ablation")

    drawn = _seeds(checkout)[0]
    assert chosen(None) == drawn and not set(drawn) & {101, 102, 103}  # the commit's, not the development seeds
    assert chosen(None, "replicate.protocol=development") == [101, 102, 103]
    assert chosen([7, 9]) == [7, 9]  # chosen seeds are the user's call, as before
    with pytest.raises(MeiscopeError, match="ablation: needs at least 2 distinct seeds"):
        chosen([7, 7])


def test_a_confirmatory_run_refuses_what_would_make_its_seeds_lie(checkout, tmp_path, monkeypatch):
    import meiscope.dvcfile as dvcfile

    with pytest.raises(MeiscopeError, match="settings differ from the file's"):
        rep.confirmatory_seeds(load_params(checkout / "params.yaml", ["mei.steps=7"]), checkout)
    # the recording picks the study; the seeds are the commit's whichever it is
    on_neuropixels = rep.confirmatory_seeds(load_params(checkout / "params.yaml", ["data.recording=neuropixels"]),
                                            checkout)
    assert on_neuropixels == _seeds(checkout)
    with pytest.raises(MeiscopeError, match="settings differ from the file's"):
        rep.confirmatory_seeds(load_params(checkout / "params.yaml", ["data.recording=neuropixels",
                                                                      "neuropixels.training_stimuli=[]"]), checkout)
    with pytest.raises(MeiscopeError, match="--seeds chooses the seeds"):
        rep.run_seeds(load_params(checkout / "params.yaml"), checkout, [1, 2])
    outside = tmp_path / "not-git"
    outside.mkdir()
    with pytest.raises(MeiscopeError, match="not a git checkout with a commit"):
        rep.tree_changes(outside)
    monkeypatch.setattr(dvcfile, "SOURCE_ROOT", tmp_path)  # an installed meiscope running elsewhere
    with pytest.raises(MeiscopeError, match="is not .*/src; a confirmatory run"):
        _seeds(checkout)


def _fake_runs(monkeypatch, during=None):
    """replicate() without running stages: each seed's metrics are fake, ``during(seed)`` runs per seed."""
    def run(params, root, seed, device=None, bar=None, profile=None):
        if during:
            during(seed)
        return fake_metrics(0.5 + seed % 7 / 20, -1)

    monkeypatch.setattr(rep, "run_replicate", run)
    monkeypatch.setattr(rep, "locked_code_key", lambda folder: "code")


def test_summaries_are_labelled_with_their_protocol_and_how_the_seeds_were_drawn(checkout, monkeypatch):
    from meiscope.summaries import summary_lines

    _fake_runs(monkeypatch)
    summary = rep.replicate(load_params(checkout / "params.yaml"), checkout, progress=False)
    written = json.loads((checkout / "metrics" / "replicates.json").read_text())
    seeds, derivation = _seeds(checkout)
    assert written["protocol"] == "confirmatory" and written["seeds"] == sorted(seeds)  # summaries sort them
    assert written["seed_derivation"] == derivation and derivation["rule"] == rep.SEED_RULE
    assert written["git_commit"] == _git(checkout, "rev-parse", "HEAD") and written["git_working_tree_clean"]
    lines = summary_lines("replicate", summary)
    assert lines[1].split(None, 1) == ["protocol", f"confirmatory (commit {written['git_commit'][:7]})"]
    assert rep.protocol_note(written).startswith(f"Confirmatory replicates: seeds drawn from commit "
                                                 f"{written['git_commit'][:7]}")
    development = rep.replicate(load_params(checkout / "params.yaml", ["replicate.protocol=development"]), checkout,
                                seeds=[4, 5], progress=False)
    assert development["protocol"] == "development" and development["seeds"] == [4, 5]
    assert development["seed_derivation"] == {"rule": "fixed: --seeds"}
    assert "development" in summary_lines("replicate", development)[1]


def test_code_edited_while_confirmatory_replicates_run_is_not_labelled_confirmatory(checkout, monkeypatch):
    _fake_runs(monkeypatch, during=lambda seed: _commit(checkout, "src/meiscope/stage.py", f"STEP = {seed}\n"))
    with pytest.raises(MeiscopeError, match="changed while the replicates ran"):
        rep.replicate(load_params(checkout / "params.yaml"), checkout, progress=False)
    assert not (checkout / "metrics" / "replicates.json").exists()


def test_a_summary_without_a_label_reads_as_development_everywhere_it_is_shown(tmp_path):
    from meiscope.report_sections import recordings_section, replicate_section
    from meiscope.report_summary import findings

    old = rep.summarise_replicates({1: fake_metrics(0.5, -1), 2: fake_metrics(0.7, -1)}, confidence=0.95)
    assert "protocol" not in old and rep.protocol_of(old) == "development"
    with pytest.raises(MeiscopeError, match="'protocol' must be one of"):
        rep.protocol_of({**old, "protocol": "final"})
    params = parse_params({})
    section = replicate_section(old, params, tmp_path)
    assert section.intro.startswith("Development replicates: fixed seeds that were looked at while meiscope was "
                                    "developed")
    assert section.table_title == "Every figure: mean [interval] over development replicates"
    confirmatory = {**old, "protocol": "confirmatory", "git_commit": "abcdef0123",
                    "seed_derivation": {"src_tree": "1234567aa", "params_blob": "89abcdeff"}}
    assert replicate_section(confirmatory, params, tmp_path).intro.startswith(
        "Confirmatory replicates: seeds drawn from commit abcdef0 (src/ tree 1234567, params.yaml blob 89abcde)")
    both = recordings_section({**confirmatory, "recording": "neuropixels"}, old, tmp_path)
    assert "(development seeds [1, 2])" in both.intro and "(confirmatory seeds [1, 2])" in both.intro
    _, note = findings({"train": {"test_corr_to_avg_mean": 0.5, "gt_fresh_corr_mean": 0.6}}, old)
    assert "(development replicates m [a, b])" in note and "development figures, not confirmatory ones" in note


def test_replicate_protocol_settings_are_range_checked():
    from meiscope.checks import ConfigError

    assert parse_params({}).replicate.protocol == "confirmatory" and parse_params({}).replicate.n_confirmatory == 3
    with pytest.raises(ConfigError, match="'replicate.n_confirmatory' must be an integer in \\[3, 20\\] \\(got 2\\)"):
        parse_params({"replicate": {"n_confirmatory": 2}})
    with pytest.raises(ConfigError, match="'replicate.n_confirmatory'"):
        parse_params({"replicate": {"n_confirmatory": 21}})
    with pytest.raises(ConfigError, match="'replicate.protocol' must be one of"):
        parse_params({"replicate": {"protocol": "final"}})
    with pytest.raises(ConfigError, match="'replicate.n_confirmatory'"):
        parse_params({"replicate": {"n_confirmatory": 3.5}})


def test_the_docs_tables_say_which_protocol_each_summary_comes_from(tmp_path):
    from test_docs import load_hook

    hook = load_hook()
    (tmp_path / "metrics").mkdir()
    old = rep.summarise_replicates({1: fake_metrics(0.5, -1), 2: fake_metrics(0.7, -1)}, confidence=0.95)
    (tmp_path / "metrics" / "replicates-old.json").write_text(json.dumps(old))
    (tmp_path / "metrics" / "replicates-new.json").write_text(json.dumps({**old, "protocol": "confirmatory"}))
    (tmp_path / "metrics" / "replicates-bad.json").write_text(json.dumps({**old, "protocol": "final"}))
    one = hook.render("<!-- replicates-table: metrics/replicates-old.json -->", tmp_path)
    assert "| development seeds 1 / 2 |" in one
    both = hook.render("<!-- replicates-table: metrics/replicates-old.json metrics/replicates-new.json -->", tmp_path)
    assert "`replicates-old.json` (development)" in both and "`replicates-new.json` (confirmatory)" in both
    with pytest.raises(hook.MetricTableError, match="metrics/replicates-bad.json: .*'protocol' must be one of"):
        hook.render("<!-- replicates-table: metrics/replicates-bad.json -->", tmp_path)


def test_the_same_confirmatory_seeds_run_on_another_cortex_side_by_side(checkout, monkeypatch):
    """``--profile``: the commit's seeds on another synthetic profile, in folders and a summary of its own."""
    ran = []
    monkeypatch.setattr(rep, "run_project", lambda folder, raw, *a: ran.append((folder, raw)) or fake_metrics(0.6, -1))
    monkeypatch.setattr(rep, "locked_code_key", lambda folder: "code")
    params = load_params(checkout / "params.yaml")
    own = rep.replicate(params, checkout, progress=False)
    other = rep.replicate(params, checkout, progress=False, profile="out_of_family")
    assert own["seeds"] == other["seeds"] == sorted(_seeds(checkout)[0])
    assert other["seed_derivation"] == own["seed_derivation"] and other["protocol"] == "confirmatory"
    assert (own["profile"], other["profile"]) == ("gabor_family", "out_of_family")
    assert json.loads((checkout / "metrics" / "replicates-out_of_family.json").read_text())["profile"] == "out_of_family"
    assert json.loads((checkout / "metrics" / "replicates.json").read_text())["profile"] == "gabor_family"
    folders = {folder.relative_to(checkout).parent.as_posix() for folder, _ in ran}
    assert folders == {"replicates", "replicates/profile-out_of_family"}
    by_profile = {raw["synthetic"]["profile"]: raw["synthetic"] for _, raw in ran}
    assert by_profile["out_of_family"]["kinds"]["centre_surround"] > 0 == by_profile["gabor_family"]["kinds"]["centre_surround"]
    # the own profile named again is the study as set; an unknown one is refused before anything runs
    assert rep.replicate(params, checkout, progress=False, profile="gabor_family")["profile"] == "gabor_family"
    with pytest.raises(MeiscopeError, match="^replicate --profile: must be one of gabor_family, out_of_family"):
        rep.replicate(params, checkout, progress=False, profile="retina")


def test_switching_profile_keeps_the_keys_a_user_pinned():
    from meiscope.config import SyntheticConfig, parse_params, switch_profile

    family = switch_profile(parse_params({"synthetic": {"profile": "out_of_family"}}), "gabor_family")
    assert family.synthetic == SyntheticConfig()  # every key the out_of_family profile supplied is gone
    pinned = parse_params({"synthetic": {"profile": "out_of_family", "saccade_fraction": 0.3}})
    assert switch_profile(pinned, "gabor_family").synthetic.saccade_fraction == 0.3
    back = switch_profile(family, "out_of_family").synthetic
    assert back == parse_params({"synthetic": {"profile": "out_of_family"}}).synthetic
