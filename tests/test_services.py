"""The team stack for real: a PostgreSQL server and an MLflow tracking server started on 127.0.0.1,
and a tuning study shared by two `meiscope tune` processes in two working copies ("hosts").

Safety: passwords (scram-sha-256) kept outside the repository and out of every log, printout and
MLflow param; a role without superuser rights; loopback only unless --expose; pid files honoured
only for the very process meiscope started; a foreign server on the MLflow port refused."""

import http.server
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from meiscope import services
from meiscope.cli import main
from meiscope.config import ConfigError, ServicesConfig
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


def _project(folder: Path, **services_params) -> tuple[ServicesConfig, Path]:
    """A project folder with a params.yaml holding ``services:`` (free ports unless given)."""
    values = {"postgres_port": _free_port(), "mlflow_port": _free_port(), **services_params}
    (folder / "params.yaml").write_text(yaml.safe_dump({"services": values}))
    return ServicesConfig(**values), folder / "params.yaml"


def _enterable_folder() -> Path:
    """A fresh folder the postgres user can enter (pytest's tmp folders are private)."""
    root = Path(tempfile.mkdtemp(prefix="meiscope-services-"))
    root.chmod(root.stat().st_mode | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    return root


@dataclass
class Stack:
    cfg: ServicesConfig
    root: Path
    urls: services.ServiceUrls
    passfile: Path
    passwords: services.Passwords
    printed: list  # everything the CLI and the tune processes printed while the stack ran


@pytest.fixture(scope="module")
def stack():
    """The stack in a folder the postgres user can enter, its password file in another folder outside
    it; PGPASSFILE set as the user would export it."""
    root = _enterable_folder()
    secrets_dir = Path(tempfile.mkdtemp(prefix="meiscope-secrets-"))
    cfg, params = _project(root)
    with pytest.MonkeyPatch.context() as env:
        env.setenv(services.SECRETS_ENV, str(secrets_dir))
        try:  # as `make services` does
            started = CliRunner().invoke(main, ["services", "start", "--params", str(params)])
            assert started.exit_code == 0, started.output
            assert f"export MLFLOW_TRACKING_URI={services.urls(cfg).tracking_uri}" in started.output
            passfile = services.password_file(cfg, root)
            assert f"export PGPASSFILE={passfile}" in started.output
            env.setenv("PGPASSFILE", str(passfile))
            yield Stack(cfg, root, services.urls(cfg), passfile, services._read_passwords(passfile), [started.output])
        finally:  # as `make services-stop` does
            stopped = CliRunner().invoke(main, ["services", "stop", "--params", str(params)])
            shutil.rmtree(root, ignore_errors=True)
            shutil.rmtree(secrets_dir, ignore_errors=True)
    assert stopped.output.strip() == "stopped: mlflow server, postgresql"


def _connect(url_or_host: str, **kwargs):
    import psycopg

    return psycopg.connect(url_or_host, connect_timeout=10, **kwargs)


@needs_postgres
def test_stack_starts_once_answers_and_stays_in_its_folder(stack):
    cfg, root, urls = stack.cfg, stack.root, stack.urls
    assert services.postgres_running(cfg, root) and services.mlflow_healthy(cfg)
    assert services.start(cfg, root).mlflow  # idempotent: the running servers are kept
    with _connect(urls.postgres_admin) as conn:
        data_dir = conn.execute("SHOW data_directory").fetchone()[0]
    assert Path(data_dir).resolve() == (root / cfg.dir / "postgres" / "data").resolve()
    assert sorted(p.name for p in root.iterdir()) == [cfg.dir, "params.yaml"]
    result = CliRunner().invoke(main, ["services", "status", "--params", str(root / "params.yaml")])
    stack.printed.append(result.output)
    assert result.exit_code == 0 and f"export MEISCOPE_TUNE_STORAGE={urls.optuna_storage}" in result.output
    assert "mlflow server  up" in result.output


@needs_postgres
def test_the_database_refuses_connections_without_the_password(stack, tmp_path):
    import psycopg

    empty = tmp_path / "pgpass"
    empty.write_text("")
    empty.chmod(0o600)
    socket_dir = str(stack.root / stack.cfg.dir / "postgres")
    for user in (services.DB_USER, services.ADMIN_USER):
        for host in (stack.cfg.host, socket_dir):  # TCP and the Unix socket
            with pytest.raises(psycopg.OperationalError, match="no password supplied"):
                _connect(f"host={host} port={stack.cfg.postgres_port} dbname=postgres user={user}", passfile=str(empty))
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            _connect(f"host={stack.cfg.host} port={stack.cfg.postgres_port} dbname=postgres user={user}",
                     password="guessed")
    with _connect(stack.urls.optuna_storage) as conn:  # the password file lets the owner in
        assert conn.execute("SELECT current_user").fetchone()[0] == services.DB_USER


@needs_postgres
def test_the_meiscope_role_owns_its_databases_but_cannot_run_programs(stack):
    import psycopg

    with _connect(stack.urls.optuna_storage, autocommit=True) as conn:
        rights = conn.execute("SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles "
                              "WHERE rolname = current_user").fetchone()
        owners = dict(conn.execute("SELECT datname, pg_get_userbyid(datdba) FROM pg_database").fetchall())
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="must be superuser"):
            conn.execute("COPY (SELECT 1) TO PROGRAM 'true'")
        for statement, what in (("CREATE ROLE intruder", "role"), ("CREATE DATABASE intruder", "database")):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match=f"permission denied to create {what}"):
                conn.execute(statement)
    assert rights == (False, False, False)
    assert owners["optuna"] == owners["mlflow"] == services.DB_USER
    assert owners["postgres"] == services.ADMIN_USER  # the superuser is another role


@needs_postgres
def test_the_password_file_and_the_server_folders_are_private(stack):
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(stack.passfile) == 0o600 and mode(stack.passfile.parent) == 0o700
    assert not stack.passfile.resolve().is_relative_to(stack.root.resolve())
    postgres = stack.root / stack.cfg.dir / "postgres"
    assert mode(postgres) == 0o700 and mode(postgres / "data") == 0o700  # the socket's folder too
    assert stack.passwords.admin != stack.passwords.user and len(stack.passwords.user) >= 32


def test_the_password_file_is_keyed_by_the_project_and_never_inside_it(tmp_path, monkeypatch):
    monkeypatch.delenv(services.SECRETS_ENV, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    cfg = ServicesConfig()
    one, other = services.password_file(cfg, tmp_path / "a"), services.password_file(cfg, tmp_path / "b")
    assert one != other and one == services.password_file(cfg, tmp_path / "a" / ".")
    assert one.is_relative_to(tmp_path / "config" / "meiscope") and one.name == "pgpass"
    monkeypatch.setenv(services.SECRETS_ENV, str(tmp_path / "a" / "secrets"))
    with pytest.raises(MeiscopeError, match="would be inside the repository"):
        services.password_file(cfg, tmp_path / "a")


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

    urls = stack.urls
    budget = 8
    hosts = [_working_copy(tmp_path / "host-a", budget)]
    hosts.append(Path(shutil.copytree(hosts[0], tmp_path / "host-b")))
    env = {**os.environ, "MLFLOW_TRACKING_URI": urls.tracking_uri, "MEISCOPE_TUNE_STORAGE": urls.optuna_storage,
           "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "meiscope.cli", "tune", "--device", "cpu", "--params",
                               str(h / "params.yaml")], env=env, cwd=h, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for h in hosts]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    stack.printed.extend(outputs)
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
    urls = stack.urls
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
    urls = stack.urls
    opener = ("import sys; from meiscope import tuning; from meiscope.config import parse_params; "
              "tuning.open_storage(parse_params({}).tune, '.', sys.argv[1])")
    for attempt in range(3):
        name = f"fresh_{attempt}"
        with _connect(urls.postgres_admin, autocommit=True) as conn:  # the administrator creates it for meiscope
            conn.execute(f'CREATE DATABASE "{name}" OWNER "{services.DB_USER}"')
        url = urls.optuna_storage.rsplit("/", 1)[0] + f"/{name}"
        procs = [subprocess.Popen([sys.executable, "-c", opener, url], stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
        errors = [p.communicate(timeout=120)[1] for p in procs]
        assert [p.returncode for p in procs] == [0, 0], errors


@needs_postgres
def test_a_stage_run_logs_into_the_tracking_server_and_its_artifact_store(stack, tmp_path, monkeypatch):
    """With MLFLOW_TRACKING_URI set, a stage's run and its artifacts land on the server, none in the checkout."""
    import mlflow

    from meiscope import tracking
    from meiscope.config import parse_params

    cfg, root, urls = stack.cfg, stack.root, stack.urls
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


@needs_postgres
@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_no_password_in_logs_printouts_processes_or_mlflow(stack, tmp_path, monkeypatch):
    """After a tune-like use (a study on the shared storage, a run logging the tune params to the
    server), the passwords are nowhere: .services (logs and the cluster's files), what was printed,
    any process's command line, the MLflow server's params and tags."""
    import mlflow

    from meiscope import tracking, tuning
    from meiscope.config import parse_params

    params = parse_params({"tune": {"storage": stack.urls.optuna_storage, "study_name": "secretless"},
                           "tracking": {"experiment": "secretless"}})
    study = tuning.open_study(params.tune, tmp_path, stack.urls.optuna_storage)
    study.tell(study.ask(), 1.0)
    monkeypatch.setattr(tracking, "USER_TRACKING_URI", stack.urls.tracking_uri)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", stack.urls.tracking_uri)
    with tracking.start_run(params, "tune", tmp_path, sections=("tune",)) as mlf:
        run_id = mlf.active_run().info.run_id
    client = mlflow.MlflowClient(tracking_uri=stack.urls.tracking_uri)
    assert client.get_run(run_id).data.params["tune.storage"] == stack.urls.optuna_storage  # it was logged

    secrets = [stack.passwords.admin.encode(), stack.passwords.user.encode()]
    files = [p for p in (stack.root / stack.cfg.dir).rglob("*") if p.is_file()]
    files += [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) > 10 and any(p.name == "mlflow.log" for p in files)
    assert [p for p in files if any(s in p.read_bytes() for s in secrets)] == []
    assert not any(s.decode() in text for s in secrets for text in stack.printed)
    command_lines = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            command_lines.append(cmdline.read_bytes())
        except OSError:  # the process ended meanwhile
            pass
    assert not any(s in line for s in secrets for line in command_lines)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000)
    logged = [str(v) for r in runs for v in (*r.data.params.values(), *r.data.tags.values())]
    assert logged and not any(s.decode() in v for s in secrets for v in logged)


def test_redact_hides_any_password_in_a_url():
    assert services.redact("postgresql://meiscope:s3cr3t@db:5433/optuna") == "postgresql://meiscope:***@db:5433/optuna"
    assert services.redact("postgresql+psycopg://u:p@ss:w@rd@db/x") == "postgresql+psycopg://u:***@db/x"
    assert services.redact("postgresql://u@db/x?sslmode=require&password=s3cr3t") == \
        "postgresql://u@db/x?sslmode=require&password=***"
    for clean in ("postgresql://meiscope@127.0.0.1:5433/optuna", "http://127.0.0.1:5001", ".optuna/journal.log"):
        assert services.redact(clean) == clean


def test_a_host_that_is_neither_an_address_nor_a_name_is_refused_in_one_line(tmp_path):
    for good in ("127.0.0.1", "::1", "localhost", "db-host.example.org", "0.0.0.0"):
        assert ServicesConfig(host=good).host == good
    for bad in ("a;b", "-db", "a..b", "x" * 64, "999.1.1.1", "", "db host"):
        with pytest.raises(ConfigError, match="services.host"):
            ServicesConfig(host=bad)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"services": {"host": "a;b"}}))
    result = CliRunner().invoke(main, ["services", "start", "--params", str(params)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip().splitlines() == [
        f"error: {params}: params: 'services.host' must be an IP address or a host name (dot-separated labels of "
        "letters, digits and '-'; got 'a;b')"]


def test_a_host_other_machines_reach_needs_expose_and_says_what_it_exposes(tmp_path, monkeypatch):
    cfg, params = _project(tmp_path, host="0.0.0.0")
    refused = CliRunner().invoke(main, ["services", "start", "--params", str(params)])
    assert refused.exit_code == 1 and len(refused.output.strip().splitlines()) == 1
    assert "not a loopback address" in refused.output and "--expose" in refused.output
    assert not (tmp_path / cfg.dir).exists()  # nothing started

    calls = []
    monkeypatch.setattr(services, "start", lambda c, r, expose: calls.append(expose) or services.State(True, True))
    monkeypatch.setattr(services, "mlflow_healthy", lambda *a, **k: False)  # no second look after start
    exposed = CliRunner().invoke(main, ["services", "start", "--expose", "--params", str(params)])
    assert exposed.exit_code == 0 and calls == [True]
    assert f"PostgreSQL port {cfg.postgres_port}" in exposed.output
    assert f"MLflow port {cfg.mlflow_port}" in exposed.output
    assert "NO authentication" in exposed.output and "mlflow server  up" in exposed.output
    assert services.exposure_lines(ServicesConfig()) == []  # loopback: nothing to say


def _own_session(*command: str) -> subprocess.Popen:
    return subprocess.Popen(list(command), start_new_session=True)


def test_an_empty_garbled_or_stale_pid_file_is_removed_and_nothing_is_signalled(tmp_path):
    cfg, params = _project(tmp_path)
    pid_file = tmp_path / cfg.dir / "mlflow.pid"
    pid_file.parent.mkdir()
    bystander = _own_session("sleep", "60")
    try:
        ticks = services.process_start_ticks(bystander.pid)
        for text, why in [("", "empty"), ("garbage\n", "not '<pid> <start time>'"), (f"0 {ticks}\n", "not"),
                          (f"{bystander.pid}\n", "not"), (f"{bystander.pid} {ticks + 1}\n", "stale")]:
            pid_file.write_text(text)
            result = CliRunner().invoke(main, ["services", "stop", "--params", str(params)])
            assert result.exit_code == 0, result.output
            assert why in result.output and "nothing was signalled" in result.output
            assert result.output.strip().endswith("nothing was running")
            assert not pid_file.exists() and bystander.poll() is None  # still alive
        services.write_pid_file(pid_file, bystander.pid)  # the process meiscope started: this one is stopped
        result = CliRunner().invoke(main, ["services", "stop", "--params", str(params)])
        assert result.output.strip() == "stopped: mlflow server"
        assert services.process_start_ticks(bystander.pid) is None and not pid_file.exists()  # gone (and reaped)
    finally:
        bystander.kill()
        bystander.wait()


class _Health(http.server.BaseHTTPRequestHandler):
    paths: list = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.paths.append(self.path)
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()
        self.wfile.write(b"OK")

    def log_message(self, *args):
        pass


def test_a_foreign_server_on_the_mlflow_port_is_reported_and_not_used(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cfg, params = _project(tmp_path, mlflow_port=server.server_address[1])
        line = f"port {cfg.mlflow_port} is used by another server (not started by meiscope)"
        assert services.mlflow_healthy(cfg)  # it does look like a tracking server
        started = CliRunner().invoke(main, ["services", "start", "--params", str(params)])
        assert started.exit_code == 1 and line in started.output and len(started.output.strip().splitlines()) == 1
        assert not (tmp_path / cfg.dir).exists()  # neither server was started
        status = CliRunner().invoke(main, ["services", "status", "--params", str(params)])
        assert status.exit_code == 0 and line in status.output and "mlflow server  down" in status.output
        assert "export" not in status.output and set(_Health.paths) == {"/health"}  # asked, never used
    finally:
        server.shutdown()
        server.server_close()


def test_status_waits_for_a_slow_server_it_started_and_stop_ends_it(tmp_path):
    """Under load a server answers late: status retries one whose pid file matches before saying down."""
    cfg, _ = _project(tmp_path)
    slow = ("import http.server, sys, time; sys.path.insert(0, sys.argv[2]); from test_services import _Health; "
            "time.sleep(2); http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), _Health).serve_forever()")
    server = _own_session(sys.executable, "-c", slow, str(cfg.mlflow_port), str(Path(__file__).parent))
    try:
        services.write_pid_file(tmp_path / cfg.dir / "mlflow.pid", server.pid)
        assert not services.mlflow_healthy(cfg)  # not yet: one look would say "down"
        began = time.monotonic()
        state = services.status(cfg, tmp_path)
        assert state.mlflow and not state.postgres and state.notes == []
        assert time.monotonic() - began > 1
        assert services.stop(cfg, tmp_path).mlflow and services.process_start_ticks(server.pid) is None
    finally:
        server.kill()
        server.wait()


def test_tune_names_an_unreachable_database_without_its_password(tmp_path):
    from meiscope import tuning
    from meiscope.config import parse_params

    url = f"postgresql://meiscope:s3cr3t@127.0.0.1:{_free_port()}/optuna"  # nothing listens there
    with pytest.raises(MeiscopeError) as err:
        tuning.open_storage(parse_params({}).tune, tmp_path, url)
    message = str(err.value)
    assert len(message.splitlines()) == 1 and "s3cr3t" not in message
    assert "postgresql://meiscope:***@127.0.0.1" in message and "make services" in message
    folder = _working_copy(tmp_path / "host", 2)
    params = yaml.safe_load((folder / "params.yaml").read_text())
    (folder / "params.yaml").write_text(yaml.safe_dump({**params, "tracking": {"enabled": False}}))
    result = CliRunner().invoke(main, ["tune", "--device", "cpu", "--storage", url,
                                       "--params", str(folder / "params.yaml")])
    assert result.exit_code == 1 and "Traceback" not in result.output and "s3cr3t" not in result.output
    assert "error: tune: cannot connect to the study's database postgresql://meiscope:***@" in result.output


@needs_postgres
def test_a_cluster_without_passwords_or_without_its_password_file_is_refused_untouched(tmp_path, monkeypatch):
    """A cluster made by an older meiscope (trust) or one whose password file is lost: one line, no change."""
    monkeypatch.setenv(services.SECRETS_ENV, str(tmp_path / "secrets"))
    root = _enterable_folder()
    try:
        cfg, _ = _project(root)
        data = root / cfg.dir / "postgres" / "data"
        data.mkdir(parents=True)
        (data / "PG_VERSION").write_text("15\n")
        for hba, why in [("local all all trust\n", "without a password"),
                         ("local all all scram-sha-256\n", "missing or incomplete")]:
            (data / "pg_hba.conf").write_text(hba)
            with pytest.raises(MeiscopeError, match=why) as err:
                services.start_postgres(cfg, root)
            assert len(str(err.value).splitlines()) == 1 and "move" in str(err.value)
            assert (data / "pg_hba.conf").read_text() == hba and not services.postgres_running(cfg, root)
        assert not services.password_file(cfg, root).exists()
    finally:
        shutil.rmtree(root)
