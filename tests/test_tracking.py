"""MLflow tracking on a real sqlite store: every checkout's artifacts stay under its own root."""

import logging
import shutil
import subprocess
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from meiscope import tracking
from meiscope.config import parse_params


@pytest.fixture()
def own_store(monkeypatch):
    """The params' own ``sqlite:///mlflow.db`` under each root (not a store the user exported)."""
    monkeypatch.setattr(tracking, "USER_TRACKING_URI", None)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # mlflow.set_tracking_uri writes it: undone after
    return parse_params({})


def _log_a_figure(params, root, stage="rank"):
    (root / "figure.txt").write_text(f"a figure of {root.name}")
    with tracking.start_run(params, stage, root) as mlf:
        mlf.log_artifact(str(root / "figure.txt"))
        return mlf.active_run().info.run_id


def _files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_the_experiment_created_for_a_root_keeps_its_artifacts_under_that_root(own_store, tmp_path, monkeypatch):
    import mlflow

    root, elsewhere = tmp_path / "project", tmp_path / "cwd"
    root.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # started from another folder: MLflow's default would be ./mlruns here
    run_id = _log_a_figure(own_store, root)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(own_store.tracking.experiment)
    assert experiment.artifact_location == (root / "mlruns").resolve().as_uri()
    assert client.get_run(run_id).info.artifact_uri.startswith((root / "mlruns").resolve().as_uri())
    assert any(p.endswith("figure.txt") for p in _files(root / "mlruns")) and not _files(elsewhere)


def test_a_copied_store_sets_the_originals_experiment_aside_and_never_writes_into_it(own_store, tmp_path, caplog):
    import mlflow

    original = tmp_path / "original"
    original.mkdir()
    first = _log_a_figure(own_store, original)
    before = _files(original / "mlruns")
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    with caplog.at_level(logging.WARNING, logger="meiscope.tracking"):
        second = _log_a_figure(own_store, copy)
    assert _files(original / "mlruns") == before  # nothing written into the original checkout
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{copy / 'mlflow.db'}")
    name = own_store.tracking.experiment
    mine = client.get_experiment_by_name(name)
    assert mine.artifact_location == (copy / "mlruns").resolve().as_uri()
    assert client.get_run(second).info.experiment_id == mine.experiment_id
    # the inherited run stays readable, in the experiment set aside under a name that says where its artifacts are
    aside = client.get_experiment(client.get_run(first).info.experiment_id)
    assert aside.name != name and str((original / "mlruns").resolve()) in aside.name
    assert aside.artifact_location == (original / "mlruns").resolve().as_uri()
    assert [r.message for r in caplog.records if str((original / "mlruns").resolve()) in r.message]
    # the next stage of the copy finds its own experiment: nothing more is set aside
    _log_a_figure(own_store, copy, "train")
    assert client.get_experiment_by_name(name).experiment_id == mine.experiment_id
    assert len(client.search_experiments()) == 2  # the one set aside, the copy's own (Default hidden)


def test_a_run_of_the_experiment_set_aside_is_not_a_parent_for_the_copy(own_store, tmp_path):
    """The tune stage nests trials under a recorded parent only if it is a run of the experiment it logs to."""
    original = tmp_path / "original"
    original.mkdir()
    inherited = _log_a_figure(own_store, original)
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    with tracking.start_run(own_store, "tune", copy) as mlf:
        own = mlf.active_run().info.run_id
        assert not tracking.run_exists(inherited) and tracking.run_exists(own)
    assert tracking.run_exists(inherited) and not tracking.run_exists("0" * 32)  # no active run: the whole store


def test_a_store_meiscope_creates_lists_only_its_experiment_but_a_users_store_keeps_default(own_store, tmp_path):
    import mlflow

    mine, users = tmp_path / "mine", tmp_path / "users"
    mine.mkdir()
    users.mkdir()
    _log_a_figure(own_store, mine)
    listed = mlflow.MlflowClient(tracking_uri=f"sqlite:///{mine / 'mlflow.db'}").search_experiments()
    assert [e.name for e in listed] == [own_store.tracking.experiment]
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{users / 'mlflow.db'}").search_experiments()  # the user made it
    _log_a_figure(own_store, users)
    listed = mlflow.MlflowClient(tracking_uri=f"sqlite:///{users / 'mlflow.db'}").search_experiments()
    assert sorted(e.name for e in listed) == ["Default", own_store.tracking.experiment]


def test_the_ui_link_opens_the_runs_table_of_the_training_view_filtered_on_the_stage():
    link = tracking.ui_link("7", port=5001)
    parts = urlsplit(link)
    route, _, query = parts.fragment.partition("?")
    assert parts.netloc == "127.0.0.1:5001" and route == "/experiments/7/runs"
    assert parse_qs(query) == {"workflowType": ["machine_learning"], "searchFilter": ['tags.stage = "train"']}
    assert "searchFilter" not in tracking.ui_link("7", stage=None)


def test_make_mlflow_ui_prints_the_link_of_this_checkouts_experiment(own_store, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("tracking:\n  experiment: study-a\n")
    assert tracking.main(["--store", "sqlite:///ui.db", "--port", "5002"]) == 0
    import mlflow

    experiment = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'ui.db'}").get_experiment_by_name("study-a")
    assert tracking.ui_link(experiment.experiment_id, 5002) in capsys.readouterr().out
    (tmp_path / "params.yaml").write_text("tracking: [not, a, section]\n")
    assert tracking.main([]) == 1 and capsys.readouterr().out.startswith("error: ")


ROOT = Path(__file__).resolve().parents[1]


def _git(repo, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args], cwd=repo, check=True,
                   capture_output=True)


@pytest.fixture()
def committed_project(tmp_path):
    """A git repository with the real dvc.yaml, code, params, a lock file, metrics and a .dvc file, committed."""
    repo = tmp_path / "project"
    files = {"dvc.yaml": (ROOT / "dvc.yaml").read_text(), "dvc.lock": "schema: '2.0'\n", "params.yaml": "a: 1\n",
             "data.dvc": "outs:\n- md5: 0\n", "metrics/x.json": "{}", "metrics/ranking.json": "{}",
             "src/meiscope/stages/rank.py": "x = 1\n", "docs/index.md": "# doc\n",
             "tests/toy/params.yaml": "b: 1\n"}
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "init")
    return repo


def test_what_the_pipeline_writes_does_not_make_the_tree_dirty(committed_project):
    repo = committed_project
    assert tracking.git_dirty(repo) == "false"
    for name in ("metrics/x.json", "metrics/ranking.json", "dvc.lock", "data.dvc", "params.yaml"):
        (repo / name).write_text("rewritten by a stage\n")
    assert tracking.git_dirty(repo) == "false"
    (repo / "tests/toy/params.yaml").write_text("b: 2\n")  # a params.yaml the pipeline does not write
    assert tracking.git_dirty(repo) == "true"
    _git(repo, "checkout", "-q", "--", "tests/toy/params.yaml")
    (repo / "src/meiscope/stages/rank.py").write_text("x = 2\n")
    assert tracking.git_dirty(repo) == "true"


def test_a_changed_doc_or_a_staged_new_file_is_dirty_and_no_git_is_unknown(committed_project, tmp_path):
    repo = committed_project
    (repo / "docs/index.md").write_text("# changed\n")
    assert tracking.git_dirty(repo) == "true"
    _git(repo, "checkout", "-q", "--", "docs/index.md")
    (repo / "src/meiscope/new.py").write_text("y = 1\n")
    assert tracking.git_dirty(repo) == "false"  # untracked: not part of the code git knows
    _git(repo, "add", "src/meiscope/new.py")
    assert tracking.git_dirty(repo) == "true"
    (tmp_path / "plain").mkdir()
    assert tracking.git_dirty(tmp_path / "plain") == "unknown"  # not a repository


def test_the_patterns_come_from_dvc_yaml_outputs_metrics_and_plots():
    patterns = tracking.pipeline_written(ROOT)
    assert {"dvc.lock", "*.dvc", "metrics", "results/responses", "models/ensemble",
            "results/sessions/*/responses", "report/index.html"} <= set(patterns)
    assert not any(p.startswith("src") or p == "docs" for p in patterns)


def test_a_project_inside_the_checkout_judges_the_checkouts_code(committed_project):
    """A replicate is a DVC project under replicates/ (ignored by git): the outer outputs are not code either."""
    repo = committed_project
    inner = repo / "replicates" / "seed_1"
    inner.mkdir(parents=True)
    (inner / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())
    (repo / "metrics/ranking.json").write_text("rewritten\n")
    (repo / "dvc.lock").write_text("rewritten\n")
    assert tracking.git_dirty(inner) == "false"
    (repo / "src/meiscope/stages/rank.py").write_text("x = 3\n")
    assert tracking.git_dirty(inner) == "true"
