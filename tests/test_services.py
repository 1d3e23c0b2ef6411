"""The team stack for real: a PostgreSQL server and an MLflow tracking server started on 127.0.0.1,
and a tuning study shared by two `meiscope tune` processes in two working copies ("hosts")."""

import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from meiscope import services
from meiscope.cli import main
from meiscope.config import ServicesConfig
from meiscope.errors import MeiscopeError
from test_tuning import planted_dataset

try:
    services.postgres_binary("initdb")
    HAVE_POSTGRES = True
except MeiscopeError:
    HAVE_POSTGRES = False
needs_postgres = pytest.mark.skipif(not HAVE_POSTGRES, reason="PostgreSQL's server (initdb, pg_ctl) is not installed "
                                    "here: `.ci/run` installs Debian's postgresql package")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def stack():
    """The stack in a fresh folder that the postgres user can enter (pytest's tmp folders are private)."""
    root = Path(tempfile.mkdtemp(prefix="meiscope-services-"))
    root.chmod(root.stat().st_mode | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    cfg = ServicesConfig(postgres_port=_free_port(), mlflow_port=_free_port())
    (root / "params.yaml").write_text(yaml.safe_dump({"services": {"postgres_port": cfg.postgres_port,
                                                                   "mlflow_port": cfg.mlflow_port}}))
    command = ["services", "--params", str(root / "params.yaml")]
    try:  # as `make services` does
        started = CliRunner().invoke(main, [*command[:1], "start", *command[1:]])
        assert started.exit_code == 0, started.output
        assert f"export MLFLOW_TRACKING_URI={services.urls(cfg).tracking_uri}" in started.output
        yield cfg, root, services.urls(cfg)
    finally:  # as `make services-stop` does
        stopped = CliRunner().invoke(main, [*command[:1], "stop", *command[1:]])
        shutil.rmtree(root, ignore_errors=True)
    assert stopped.output.strip() == "stopped: mlflow server, postgresql"


@needs_postgres
def test_stack_starts_once_answers_and_stays_in_its_folder(stack):
    cfg, root, urls = stack
    assert services.postgres_running(cfg, root) and services.mlflow_healthy(cfg)
    assert services.start(cfg, root) == urls  # idempotent: the running servers are kept
    import sqlalchemy

    engine = sqlalchemy.create_engine(urls.postgres_admin)
    with engine.connect() as conn:
        names = {r[0] for r in conn.execute(sqlalchemy.text("SELECT datname FROM pg_database"))}
        data_dir = conn.execute(sqlalchemy.text("SHOW data_directory")).scalar()
    engine.dispose()
    assert {"optuna", "mlflow"} <= names
    assert Path(data_dir).resolve() == (root / cfg.dir / "postgres" / "data").resolve()
    assert sorted(p.name for p in root.iterdir()) == [cfg.dir, "params.yaml"]
    result = CliRunner().invoke(main, ["services", "status", "--params", str(root / "params.yaml")])
    assert result.exit_code == 0 and f"export MEISCOPE_TUNE_STORAGE={urls.optuna_storage}" in result.output


def _working_copy(folder: Path, n_trials: int) -> Path:
    """A project folder ready for `meiscope tune`: the studied session's dataset and its ranking."""
    responses = folder / "results" / "responses"
    responses.mkdir(parents=True)
    planted_dataset(responses / "1.npz", n_neurons=4)
    (responses / "study.json").write_text('{"experiment_id": 1}')
    (folder / "results" / "ranking").mkdir()
    pd.DataFrame({"cell_id": np.arange(4), "rank": np.arange(1, 5), "selected": True}).to_csv(
        folder / "results" / "ranking" / "ranking.csv", index=False)
    (folder / "params.yaml").write_text(yaml.safe_dump({
        "model": {"layers": 1, "channels": [4], "first_kernel": 5, "batch_norm": False},
        "train": {"lr": 0.02, "batch_size": 16},
        "tune": {"n_trials": n_trials, "epochs": 15, "pruner": "none",
                 "space": {"layers": [1, 2], "channels": [2, 6], "first_kernel": [3, 5], "hidden_kernel": [3],
                           "lr": [1e-3, 3e-2], "batch_size": [16]}}}))
    return folder


@needs_postgres
def test_two_hosts_share_one_study_on_postgresql_and_log_every_trial_under_one_parent(stack, tmp_path):
    import mlflow
    import optuna

    _, _, urls = stack
    budget = 8
    hosts = [_working_copy(tmp_path / "host-a", budget)]
    hosts.append(Path(shutil.copytree(hosts[0], tmp_path / "host-b")))
    env = {**os.environ, "MLFLOW_TRACKING_URI": urls.tracking_uri, "MEISCOPE_TUNE_STORAGE": urls.optuna_storage,
           "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "meiscope.cli", "tune", "--device", "cpu", "--params",
                               str(h / "params.yaml")], env=env, cwd=h, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for h in hosts]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs

    study_name = yaml.safe_load((hosts[0] / "results" / "tune" / "best_model.yaml").read_text())["study"]
    study = optuna.load_study(study_name=study_name, storage=urls.optuna_storage)
    trials = study.trials
    assert [t.state.name for t in trials].count("COMPLETE") == budget == len(trials)  # none lost, none extra
    configs = [tuple(sorted(t.params.items())) for t in trials]
    assert len(set(configs)) == budget  # no configuration tried twice
    tuners = {t.user_attrs["tuner"] for t in trials}
    assert len(tuners) == 2  # both hosts ran trials of the one study

    client = mlflow.MlflowClient(tracking_uri=urls.tracking_uri)
    experiment = client.get_experiment_by_name("meiscope")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    tune_runs = [r for r in runs if r.data.tags.get("stage") == "tune"]
    trial_runs = [r for r in runs if r.data.tags.get("stage") == "tune-trial"
                  and r.data.tags.get("optuna_study") == study_name]
    parents = {r.data.tags["optuna_parent_run_id"] for r in tune_runs if r.data.tags.get("optuna_study") == study_name}
    assert len(parents) == 1 and parents <= {r.info.run_id for r in tune_runs}
    assert sorted(int(r.data.tags["trial_number"]) for r in trial_runs) == list(range(budget))
    assert {r.data.tags["mlflow.parentRunId"] for r in trial_runs} == parents


@needs_postgres
def test_a_dead_workers_trial_is_failed_and_its_configuration_retried_by_another(stack, tmp_path, monkeypatch):
    """A worker that stops beating (killed host) loses its trial to the next claim, which retries it once."""
    import time

    from meiscope import shared_study, tuning
    from meiscope.config import parse_params

    monkeypatch.setattr(shared_study, "HEARTBEAT_S", 1)
    monkeypatch.setattr(shared_study, "GRACE_S", 2)
    _, _, urls = stack
    cfg = parse_params({"tune": {"study_name": "dead-worker", "n_trials": 3}}).tune
    storage = tuning.open_storage(cfg, tmp_path, urls.optuna_storage)
    dead = tuning.open_study(cfg, tmp_path, urls.optuna_storage, storage=storage)
    trial = shared_study.claim_trial(dead, budget=3)
    trial.suggest_float("lr", 1e-3, 1e-1, log=True)
    # it beat once, then its host died
    storage.record_heartbeat(shared_study.storage_trial_id(storage, dead, trial.number))
    time.sleep(3)
    alive = tuning.open_study(cfg, tmp_path, urls.optuna_storage)
    retry = shared_study.claim_trial(alive, budget=3)
    by_number = {t.number: t for t in alive.trials}
    assert by_number[trial.number].state.name == "FAIL"
    assert retry.number != trial.number and by_number[retry.number].params == by_number[trial.number].params


@needs_postgres
def test_hosts_that_open_a_new_database_at_once_do_not_collide(stack):
    """Optuna creates its tables on first use; two processes doing that at once on PostgreSQL failed
    5 times in 6 (duplicate key in pg_type) before meiscope took an advisory lock around it."""
    import sqlalchemy

    _, _, urls = stack
    opener = ("import sys; from meiscope import tuning; from meiscope.config import parse_params; "
              "tuning.open_storage(parse_params({}).tune, '.', sys.argv[1])")
    engine = sqlalchemy.create_engine(urls.postgres_admin, isolation_level="AUTOCOMMIT")
    for attempt in range(3):
        name = f"fresh_{attempt}"
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
        url = urls.postgres_admin.rsplit("/", 1)[0] + f"/{name}"
        procs = [subprocess.Popen([sys.executable, "-c", opener, url], stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
        errors = [p.communicate(timeout=120)[1] for p in procs]
        assert [p.returncode for p in procs] == [0, 0], errors
    engine.dispose()


@needs_postgres
def test_a_stage_run_logs_into_the_tracking_server_and_its_artifact_store(stack, tmp_path, monkeypatch):
    """With MLFLOW_TRACKING_URI set, a stage's run and its artifacts land on the server, none in the checkout."""
    import mlflow

    from meiscope import tracking
    from meiscope.config import parse_params

    cfg, root, urls = stack
    monkeypatch.setattr(tracking, "USER_TRACKING_URI", urls.tracking_uri)  # as exported before the process started
    monkeypatch.setenv("MLFLOW_TRACKING_URI", urls.tracking_uri)  # mlflow writes it too: undone after the test
    (tmp_path / "figure.txt").write_text("a figure")
    with tracking.start_run(parse_params({"tracking": {"experiment": "server-check"}}), "rank", tmp_path) as mlf:
        mlf.log_metric("n_selected", 3.0)
        mlf.log_artifact(str(tmp_path / "figure.txt"))
        run_id = mlf.active_run().info.run_id
    client = mlflow.MlflowClient(tracking_uri=urls.tracking_uri)
    experiment = client.get_experiment_by_name("server-check")
    assert experiment.artifact_location.startswith("mlflow-artifacts:")
    assert client.get_run(run_id).data.metrics == {"n_selected": 3.0}
    assert [a.path for a in client.list_artifacts(run_id)] == ["figure.txt"]
    assert not (tmp_path / "mlruns").exists()
    assert list((root / cfg.dir / "mlflow-artifacts").rglob("figure.txt"))
