"""MLflow tracking on a real sqlite store: every checkout's artifacts stay under its own root."""

import logging
import shutil

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
    assert len(client.search_experiments()) == 3  # Default, the one set aside, the copy's own


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
