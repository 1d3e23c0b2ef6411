"""The team stack on one machine: a real PostgreSQL server and an MLflow tracking server backed by it.

``make services`` (``meiscope services start``) brings both up on ``services.host``; everything
they write stays in ``services.dir`` under the repository:

    .services/postgres/data      the database cluster (initdb), databases ``optuna`` and ``mlflow``
    .services/postgres/server.log
    .services/mlflow-artifacts   the artifacts the tracking server stores for every client
    .services/mlflow.log, mlflow.pid

meiscope uses them only when asked: ``tune --storage`` / ``MEISCOPE_TUNE_STORAGE`` for the Optuna
study, ``MLFLOW_TRACKING_URI`` (or ``tracking.uri``) for the runs. The defaults stay the embedded
journal file and sqlite store.

PostgreSQL refuses to run as root: under root the server runs as the ``postgres`` system user
(Debian's package creates it), which then owns ``.services/postgres``. Authentication is ``trust``
for connections from this machine only (the server listens on ``services.host``): a local
development stack, not a hardened deployment.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from meiscope.config import ServicesConfig
from meiscope.errors import MeiscopeError

DB_USER = "meiscope"
DATABASES = ("optuna", "mlflow")
SERVER_USER = "postgres"  # who runs the server when meiscope runs as root


@dataclass(frozen=True)
class ServiceUrls:
    """Where the running stack answers."""

    optuna_storage: str  # for `meiscope tune --storage` / MEISCOPE_TUNE_STORAGE
    tracking_uri: str  # for MLFLOW_TRACKING_URI
    mlflow_backend: str  # the tracking server's own database
    postgres_admin: str  # the cluster's maintenance database


def urls(cfg: ServicesConfig) -> ServiceUrls:
    """The URLs of the stack that ``cfg`` describes (running or not)."""
    base = f"postgresql://{DB_USER}@{cfg.host}:{cfg.postgres_port}"
    return ServiceUrls(optuna_storage=f"{base}/optuna", tracking_uri=f"http://{cfg.host}:{cfg.mlflow_port}",
                       mlflow_backend=f"{base}/mlflow", postgres_admin=f"{base}/postgres")


@dataclass(frozen=True)
class _Paths:
    root: Path

    @property
    def postgres(self) -> Path:
        return self.root / "postgres"

    @property
    def data(self) -> Path:
        return self.postgres / "data"

    @property
    def postgres_log(self) -> Path:
        return self.postgres / "server.log"

    @property
    def artifacts(self) -> Path:
        return self.root / "mlflow-artifacts"

    @property
    def mlflow_log(self) -> Path:
        return self.root / "mlflow.log"

    @property
    def mlflow_pid(self) -> Path:
        return self.root / "mlflow.pid"


def _paths(cfg: ServicesConfig, root: Path) -> _Paths:
    return _Paths(Path(root).resolve() / cfg.dir)


def postgres_binary(name: str) -> str:
    """``initdb`` / ``pg_ctl`` / ``postgres`` from PATH or Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if candidates:
        return candidates[-1]
    raise MeiscopeError(f"PostgreSQL's server program {name!r} was not found: install the server "
                        "(Debian: apt-get install postgresql) or put its bin/ folder on PATH")


def _as_server_user(command: list[str]) -> list[str]:
    """``command`` run as the postgres system user when we are root (the server refuses root)."""
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", SERVER_USER, "--", *command]


def _run(command: list[str], what: str) -> str:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise MeiscopeError(f"{what} failed: {detail[-1] if detail else f'exit code {done.returncode}'}")
    return done.stdout


def _give_to_server_user(path: Path) -> None:
    """Under root, the server's folder belongs to the server's user, who must also reach it."""
    if os.geteuid() != 0:
        return
    import pwd

    try:
        entry = pwd.getpwnam(SERVER_USER)
    except KeyError:
        raise MeiscopeError(f"running as root, and the system user {SERVER_USER!r} that would run PostgreSQL "
                            "does not exist (Debian's postgresql package creates it)") from None
    for folder, _, files in os.walk(path):
        os.chown(folder, entry.pw_uid, entry.pw_gid)
        for name in files:
            os.chown(os.path.join(folder, name), entry.pw_uid, entry.pw_gid)
    blocked = subprocess.run(_as_server_user(["test", "-w", str(path)])).returncode
    if blocked:
        raise MeiscopeError(f"{path}: the {SERVER_USER!r} user cannot reach this folder (a parent folder is not "
                            "readable by others); put the repository where other users can enter it")


def postgres_running(cfg: ServicesConfig, root: Path) -> bool:
    """Whether this project's PostgreSQL cluster is up."""
    paths = _paths(cfg, root)
    if not (paths.data / "PG_VERSION").is_file():
        return False
    status = subprocess.run(_as_server_user([postgres_binary("pg_ctl"), "status", "-D", str(paths.data)]),
                            capture_output=True)
    return status.returncode == 0


def start_postgres(cfg: ServicesConfig, root: Path) -> None:
    """Create the cluster on first use, start it, and create the meiscope databases."""
    paths = _paths(cfg, root)
    paths.postgres.mkdir(parents=True, exist_ok=True)
    _give_to_server_user(paths.postgres)
    if not (paths.data / "PG_VERSION").is_file():
        _run(_as_server_user([postgres_binary("initdb"), "-D", str(paths.data), "-U", DB_USER, "-A", "trust",
                              "-E", "UTF8", "--no-instructions"]), f"initdb {paths.data}")
    if not postgres_running(cfg, root):
        options = f"-p {cfg.postgres_port} -k {paths.postgres} -c listen_addresses={cfg.host}"
        _run(_as_server_user([postgres_binary("pg_ctl"), "start", "-D", str(paths.data), "-l",
                              str(paths.postgres_log), "-w", "-t", "60", "-o", options]),
             f"starting PostgreSQL on {cfg.host}:{cfg.postgres_port} (log: {paths.postgres_log})")
    _create_databases(urls(cfg).postgres_admin)


def _create_databases(admin_url: str) -> None:
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    engine = sqlalchemy.create_engine(admin_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            existing = {row[0] for row in conn.execute(sqlalchemy.text("SELECT datname FROM pg_database"))}
            for name in DATABASES:
                if name not in existing:
                    conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()


def stop_postgres(cfg: ServicesConfig, root: Path) -> bool:
    """Stop the cluster (fast shutdown). Returns whether one was running."""
    if not postgres_running(cfg, root):
        return False
    _run(_as_server_user([postgres_binary("pg_ctl"), "stop", "-D", str(_paths(cfg, root).data), "-m", "fast",
                          "-w"]), "stopping PostgreSQL")
    return True


def mlflow_healthy(cfg: ServicesConfig, timeout: float = 2.0) -> bool:
    """Whether a tracking server answers on ``services.host:mlflow_port``."""
    try:
        with urllib.request.urlopen(f"{urls(cfg).tracking_uri}/health", timeout=timeout) as reply:
            return reply.status == 200
    except OSError:
        return False


def start_mlflow(cfg: ServicesConfig, root: Path, wait_s: float = 120.0) -> None:
    """Start ``mlflow server`` on the PostgreSQL backend, serving artifacts from the services folder."""
    if mlflow_healthy(cfg):
        return
    paths = _paths(cfg, root)
    paths.artifacts.mkdir(parents=True, exist_ok=True)
    mlflow = Path(sys.executable).with_name("mlflow")
    command = [str(mlflow) if mlflow.exists() else "mlflow", "server",
               "--backend-store-uri", urls(cfg).mlflow_backend,
               "--artifacts-destination", str(paths.artifacts), "--serve-artifacts",
               "--host", cfg.host, "--port", str(cfg.mlflow_port), "--workers", "2"]
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "GIT_PYTHON_REFRESH": "quiet"}
    with open(paths.mlflow_log, "ab") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=paths.root,
                                   start_new_session=True)
    paths.mlflow_pid.write_text(f"{process.pid}\n")
    deadline = time.monotonic() + wait_s
    while not mlflow_healthy(cfg):
        if process.poll() is not None:
            raise MeiscopeError(f"mlflow server exited with code {process.returncode}; see {paths.mlflow_log}")
        if time.monotonic() > deadline:
            raise MeiscopeError(f"mlflow server did not answer within {wait_s:.0f} s; see {paths.mlflow_log}")
        time.sleep(0.5)


def stop_mlflow(cfg: ServicesConfig, root: Path, wait_s: float = 20.0) -> bool:
    """Stop the tracking server this project started (its whole process group). Returns whether one ran."""
    pid_file = _paths(cfg, root).mlflow_pid
    if not pid_file.is_file():
        return False
    pid = int(pid_file.read_text())
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pid_file.unlink()
        return False
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.killpg(pid, signal.SIGKILL)
    pid_file.unlink()
    return True


def start(cfg: ServicesConfig, root: Path) -> ServiceUrls:
    """PostgreSQL, then the MLflow tracking server on it. Idempotent: running services are kept."""
    start_postgres(cfg, root)
    start_mlflow(cfg, root)
    return urls(cfg)


def stop(cfg: ServicesConfig, root: Path) -> list[str]:
    """Stop both (tracking server first: it holds database connections). Returns what was stopped."""
    stopped = []
    if stop_mlflow(cfg, root):
        stopped.append("mlflow server")
    if stop_postgres(cfg, root):
        stopped.append("postgresql")
    return stopped
