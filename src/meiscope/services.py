"""The team stack on one machine: a real PostgreSQL server and an MLflow tracking server backed by it.

``make services`` (``meiscope services start``) brings both up on ``services.host``; everything
they write stays in ``services.dir`` under the repository:

    .services/postgres/data      the database cluster (initdb), databases ``optuna`` and ``mlflow``
    .services/postgres           also the server's Unix socket (mode 700) and server.log
    .services/mlflow-artifacts   the artifacts the tracking server stores for every client
    .services/mlflow.log, mlflow.pid

Safe by default:

* **Passwords.** The cluster authenticates every connection, local socket and TCP, with
  scram-sha-256. Its bootstrap superuser ``meiscope_admin`` is for administration only; meiscope's
  URLs use the role ``meiscope`` (no superuser, cannot create roles or databases), which owns the
  databases ``optuna`` and ``mlflow``. Both passwords are generated and kept in one pgpass file
  (mode 600) outside the repository, keyed by the project's path (:mod:`meiscope.pgpass`); libpq
  reads it through ``PGPASSFILE``, so no URL, log, printout or MLflow param carries a password.
  The server itself only ever sees SCRAM verifiers (hashes), never the passwords.
* **Loopback only** unless ``--expose``: the MLflow server has no authentication.
* **Pid files** record the process start time (:mod:`meiscope.pidfiles`); a pid file that does not
  match the running process is reported and removed, never acted on with a signal. A server on
  the MLflow port that this project did not start is reported and not used.

meiscope uses the stack only when asked: ``tune --storage`` / ``MEISCOPE_TUNE_STORAGE`` for the
Optuna study, ``MLFLOW_TRACKING_URI`` (or ``tracking.uri``) for the runs.

PostgreSQL refuses to run as root: under root the server runs as the ``postgres`` system user
(Debian's package creates it), which then owns ``.services/postgres``.
"""

from __future__ import annotations

import glob
import ipaddress
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from meiscope import pgpass
from meiscope.config import ServicesConfig
from meiscope.errors import MeiscopeError
from meiscope.pgpass import SECRETS_ENV, Passwords, redact, scram_verifier  # noqa: F401 (part of this module's API)
from meiscope.pidfiles import own_process, process_start_ticks, stop_group, write_pid_file  # noqa: F401

DB_USER = "meiscope"  # meiscope's URLs: owns the databases, no superuser
ADMIN_USER = "meiscope_admin"  # the cluster's bootstrap superuser: administration only
DATABASES = ("optuna", "mlflow")
SERVER_USER = "postgres"  # who runs the server when meiscope runs as root
MLFLOW_START_S = 120.0  # the first start runs MLflow's database migrations: ~20 s idle, more under load
STATUS_WAIT_S = 10.0  # how long `status` retries a server it started before calling it down
LOG_TAIL = 8  # log lines quoted when a server does not come up


# ---------------------------------------------------------------- URLs


@dataclass(frozen=True)
class ServiceUrls:
    """Where the running stack answers (no passwords: libpq reads them from ``PGPASSFILE``)."""

    optuna_storage: str  # for `meiscope tune --storage` / MEISCOPE_TUNE_STORAGE
    tracking_uri: str  # for MLFLOW_TRACKING_URI
    mlflow_backend: str  # the tracking server's own database
    postgres_admin: str  # the cluster's maintenance database, as the superuser (administration only)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host  # an IPv6 address needs brackets in a URL


def urls(cfg: ServicesConfig) -> ServiceUrls:
    """The URLs of the stack that ``cfg`` describes (running or not)."""
    at = f"{_url_host(cfg.host)}:{cfg.postgres_port}"
    return ServiceUrls(optuna_storage=f"postgresql://{DB_USER}@{at}/optuna",
                       tracking_uri=f"http://{_url_host(cfg.host)}:{cfg.mlflow_port}",
                       mlflow_backend=f"postgresql://{DB_USER}@{at}/mlflow",
                       postgres_admin=f"postgresql://{ADMIN_USER}@{at}/postgres")


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (a loopback address or ``localhost``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name may resolve to anything: only --expose allows it


def require_exposure(cfg: ServicesConfig, expose: bool) -> None:
    """Refuse a non-loopback ``services.host`` unless the user asked for it (``--expose``)."""
    if not expose and not is_loopback(cfg.host):
        raise MeiscopeError(f"services.host {cfg.host} is not a loopback address: PostgreSQL (port "
                            f"{cfg.postgres_port}) and the MLflow server (port {cfg.mlflow_port}, no authentication) "
                            "would be reachable from other machines; pass --expose to do that on purpose")


def exposure_lines(cfg: ServicesConfig) -> list[str]:
    """What a non-loopback ``services.host`` exposes (empty on a loopback address)."""
    if is_loopback(cfg.host):
        return []
    return [f"exposed on {cfg.host}: PostgreSQL port {cfg.postgres_port} (scram-sha-256 passwords; other "
            "machines also need a `host` line in .services/postgres/data/pg_hba.conf) and MLflow port "
            f"{cfg.mlflow_port}",
            "the MLflow server has NO authentication: whoever reaches that port can read, change and delete "
            "every run and artifact"]


# ---------------------------------------------------------------- folders


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


def _tail(log: Path) -> str:
    """The last lines of ``log``, indented, for an error message."""
    try:
        lines = log.read_text(errors="replace").splitlines()[-LOG_TAIL:]
    except OSError:
        return f" ({log} is missing)"
    return f"; last lines of {log}:\n" + "\n".join(f"  {line}" for line in lines)


# ---------------------------------------------------------------- passwords


# ---------------------------------------------------------------- passwords


def password_file(cfg: ServicesConfig, root: Path) -> Path:
    """The private pgpass file of this project's cluster (``PGPASSFILE``), outside the repository
    (see :mod:`meiscope.pgpass`)."""
    return pgpass.password_file(_paths(cfg, root).root)


def client_env(cfg: ServicesConfig, root: Path) -> dict[str, str]:
    """The environment a client of the stack needs besides its URLs: ``PGPASSFILE``."""
    return {"PGPASSFILE": str(password_file(cfg, root))}


def _read_passwords(path: Path) -> Passwords | None:
    logins = pgpass.read_pgpass(path)
    if DB_USER not in logins or ADMIN_USER not in logins:
        return None
    return Passwords(admin=logins[ADMIN_USER], user=logins[DB_USER])


# ---------------------------------------------------------------- PostgreSQL


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


def _run(command: list[str], what: str, log: Path | None = None) -> str:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        detail = (done.stderr or done.stdout).strip().splitlines()
        message = f"{what} failed: {detail[-1] if detail else f'exit code {done.returncode}'}"
        raise MeiscopeError(message + (_tail(log) if log is not None else ""))
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


def _cluster_passwords(cfg: ServicesConfig, root: Path) -> Passwords:
    """The passwords of the existing cluster (refusing one made with trust by an older meiscope), or
    new ones for a cluster about to be created. Writes the pgpass file for the current host and port."""
    paths, path = _paths(cfg, root), password_file(cfg, root)
    move_away = (f"stop it (`meiscope services stop`) and move {paths.postgres} away to start a new cluster "
                 "(its databases stay there)")
    if not (paths.data / "PG_VERSION").is_file():
        passwords = Passwords.generate()
    else:
        hba = paths.data / "pg_hba.conf"
        rules = [line.split() for line in hba.read_text().splitlines() if line.strip() and not line.lstrip()
                 .startswith("#")]
        if any("trust" in rule for rule in rules):
            raise MeiscopeError(f"{hba}: this cluster lets every local account in without a password (made by an "
                                f"older meiscope); {move_away}")
        known = _read_passwords(path)
        if known is None:
            raise MeiscopeError(f"the password file {path} of the cluster in {paths.data} is missing or incomplete: "
                                f"restore it, or {move_away}")
        passwords = known
    # "localhost" and the socket's folder: how libpq names a Unix-socket connection in a pgpass file
    pgpass.write_pgpass(path, [cfg.host, "localhost", str(paths.postgres)], cfg.postgres_port,
                        {DB_USER: passwords.user, ADMIN_USER: passwords.admin})
    return passwords


def _init_cluster(paths: _Paths, passwords: Passwords) -> None:
    """initdb with scram-sha-256 for local and TCP connections and the superuser's verifier."""
    scratch = Path(tempfile.mkdtemp(dir=paths.postgres, prefix=".initdb-"))  # inside the private folder
    try:
        pwfile = scratch / "superuser"
        pwfile.write_text(scram_verifier(passwords.admin) + "\n")  # PostgreSQL stores a verifier as given
        _give_to_server_user(scratch)
        _run(_as_server_user([postgres_binary("initdb"), "-D", str(paths.data), "-U", ADMIN_USER,
                              f"--pwfile={pwfile}", "--auth=scram-sha-256", "-E", "UTF8", "--no-instructions"]),
             f"initdb {paths.data}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def start_postgres(cfg: ServicesConfig, root: Path) -> None:
    """Create the cluster on first use, start it, and provision the meiscope role and databases."""
    paths = _paths(cfg, root)
    paths.postgres.mkdir(parents=True, exist_ok=True)
    paths.postgres.chmod(0o700)  # the socket's folder: nobody else may connect, or plant a socket
    _give_to_server_user(paths.postgres)
    passwords = _cluster_passwords(cfg, root)
    if not (paths.data / "PG_VERSION").is_file():
        _init_cluster(paths, passwords)
    if not postgres_running(cfg, root):
        options = " ".join(["-p", str(cfg.postgres_port), "-k", shlex.quote(str(paths.postgres)),
                            "-c", f"listen_addresses={shlex.quote(cfg.host)}", "-c", "unix_socket_permissions=0700"])
        _run(_as_server_user([postgres_binary("pg_ctl"), "start", "-D", str(paths.data), "-l",
                              str(paths.postgres_log), "-w", "-t", "60", "-o", options]),
             f"starting PostgreSQL on {cfg.host}:{cfg.postgres_port}", log=paths.postgres_log)
    _provision(paths, cfg, passwords, password_file(cfg, root))


def _provision(paths: _Paths, cfg: ServicesConfig, passwords: Passwords, passfile: Path) -> None:
    """As the superuser, over the Unix socket: the meiscope role (no superuser) owning both databases."""
    import psycopg
    from psycopg import sql

    role = sql.Identifier(DB_USER)
    try:
        conn = psycopg.connect(host=str(paths.postgres), port=cfg.postgres_port, user=ADMIN_USER, dbname="postgres",
                               passfile=str(passfile), autocommit=True,
                               connect_timeout=30)
    except psycopg.OperationalError as err:
        raise MeiscopeError(f"connecting to PostgreSQL as {ADMIN_USER} failed: {str(err).splitlines()[0]}"
                            + _tail(paths.postgres_log)) from None
    with conn:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (DB_USER,)).fetchone()
        conn.execute(sql.SQL("{} ROLE {} LOGIN NOSUPERUSER NOCREATEROLE NOCREATEDB NOREPLICATION NOBYPASSRLS "
                             "PASSWORD {}").format(sql.SQL("ALTER" if exists else "CREATE"), role,
                                                   sql.Literal(scram_verifier(passwords.user))))
        owners = dict(conn.execute("SELECT datname, pg_get_userbyid(datdba) FROM pg_database").fetchall())
        for name in DATABASES:
            if name not in owners:
                conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), role))
            elif owners[name] != DB_USER:
                conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(name), role))


def stop_postgres(cfg: ServicesConfig, root: Path) -> bool:
    """Stop the cluster (fast shutdown). Returns whether one was running."""
    if not postgres_running(cfg, root):
        return False
    _run(_as_server_user([postgres_binary("pg_ctl"), "stop", "-D", str(_paths(cfg, root).data), "-m", "fast",
                          "-w"]), "stopping PostgreSQL")
    return True


# ---------------------------------------------------------------- the MLflow server's process


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=3):
            return True
    except OSError:
        return False


def mlflow_healthy(cfg: ServicesConfig, timeout: float = 5.0) -> bool:
    """Whether an HTTP server answers /health on ``services.host:mlflow_port`` (whoever runs it)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through an http_proxy
    try:
        with opener.open(f"{urls(cfg).tracking_uri}/health", timeout=timeout) as reply:
            return reply.status == 200
    except OSError:
        return False


def _foreign_server(cfg: ServicesConfig) -> str | None:
    """A line about a server on the MLflow port that this project did not start; None if the port is free."""
    if not _port_open(cfg.host, cfg.mlflow_port):
        return None
    what = "it answers /health" if mlflow_healthy(cfg) else "it does not answer /health"
    return (f"port {cfg.mlflow_port} is used by another server (not started by meiscope): {urls(cfg).tracking_uri} "
            f"({what}); stop it or set services.mlflow_port to a free port")


def _wait_healthy(cfg: ServicesConfig, pid: int, wait_s: float) -> bool:
    """Wait up to ``wait_s`` for /health while process ``pid`` lives; whether it answered."""
    deadline = time.monotonic() + wait_s
    while True:
        if mlflow_healthy(cfg):
            return True
        if time.monotonic() > deadline or process_start_ticks(pid) is None:
            return False
        time.sleep(0.5)


def start_mlflow(cfg: ServicesConfig, root: Path, wait_s: float = MLFLOW_START_S) -> list[str]:
    """Start ``mlflow server`` on the PostgreSQL backend, serving artifacts from the services folder.

    Returns only once it answers /health (notes about a removed stale pid file); a server this
    project started is kept, any other server on the port is refused.
    """
    paths = _paths(cfg, root)
    pid, notes = own_process(paths.mlflow_pid)
    if pid is not None:
        if _wait_healthy(cfg, pid, wait_s):
            return notes
        raise MeiscopeError(f"the mlflow server meiscope started (pid {pid}) does not answer on "
                            f"{urls(cfg).tracking_uri}; stop it with `meiscope services stop`"
                            + _tail(paths.mlflow_log))
    foreign = _foreign_server(cfg)
    if foreign:
        raise MeiscopeError(foreign)
    paths.artifacts.mkdir(parents=True, exist_ok=True)
    mlflow = Path(sys.executable).with_name("mlflow")
    command = [str(mlflow) if mlflow.exists() else "mlflow", "server",
               "--backend-store-uri", urls(cfg).mlflow_backend,
               "--artifacts-destination", str(paths.artifacts), "--serve-artifacts",
               "--host", cfg.host, "--port", str(cfg.mlflow_port), "--workers", "2"]
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "GIT_PYTHON_REFRESH": "quiet",
           "PGPASSFILE": str(password_file(cfg, root))}
    with open(paths.mlflow_log, "ab") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=paths.root,
                                   start_new_session=True)
    write_pid_file(paths.mlflow_pid, process.pid)
    deadline = time.monotonic() + wait_s
    while not mlflow_healthy(cfg):
        if process.poll() is not None:
            paths.mlflow_pid.unlink(missing_ok=True)
            raise MeiscopeError(f"mlflow server exited with code {process.returncode}" + _tail(paths.mlflow_log))
        if time.monotonic() > deadline:
            stop_group(process.pid, paths.mlflow_pid)  # exit 1 leaves nothing half-started behind
            raise MeiscopeError(f"mlflow server did not answer within {wait_s:.0f} s (stopped it)"
                                + _tail(paths.mlflow_log))
        time.sleep(0.5)
    return notes


def stop_mlflow(cfg: ServicesConfig, root: Path, wait_s: float = 20.0) -> tuple[bool, list[str]]:
    """Stop the tracking server this project started (its whole process group), and only that.

    Returns whether one ran, and notes (a stale pid file removed).
    """
    pid_file = _paths(cfg, root).mlflow_pid
    pid, notes = own_process(pid_file)
    if pid is None:
        return False, notes
    stop_group(pid, pid_file, wait_s)
    return True, notes


def mlflow_state(cfg: ServicesConfig, root: Path, wait_s: float = STATUS_WAIT_S) -> tuple[bool, list[str]]:
    """Whether this project's tracking server answers, retrying ``wait_s`` while its process lives
    (a loaded machine answers late), and notes (a stale pid file, a foreign server on the port)."""
    pid, notes = own_process(_paths(cfg, root).mlflow_pid)
    if pid is not None:
        if _wait_healthy(cfg, pid, wait_s):
            return True, notes
        return False, [*notes, f"the mlflow server meiscope started (pid {pid}) does not answer /health"]
    foreign = _foreign_server(cfg)
    return False, [*notes, *([foreign] if foreign else [])]


# ---------------------------------------------------------------- the stack


@dataclass(frozen=True)
class State:
    """Whether each server is up, and what the user should know (stale pid files, foreign servers)."""

    postgres: bool
    mlflow: bool
    notes: list[str] = field(default_factory=list)


def start(cfg: ServicesConfig, root: Path, expose: bool = False) -> State:
    """PostgreSQL, then the MLflow tracking server on it; returns once both answer (else MeiscopeError).

    Idempotent: the servers this project started are kept. ``expose``: allow a ``services.host``
    that is not a loopback address.
    """
    require_exposure(cfg, expose)
    pid, notes = own_process(_paths(cfg, root).mlflow_pid)
    foreign = None if pid is not None else _foreign_server(cfg)
    if foreign:  # before anything starts
        raise MeiscopeError(foreign)
    start_postgres(cfg, root)
    notes += start_mlflow(cfg, root)
    return State(postgres=True, mlflow=True, notes=notes)


def status(cfg: ServicesConfig, root: Path) -> State:
    """Whether each server is up (a tracking server of ours gets :data:`STATUS_WAIT_S` to answer)."""
    up, notes = mlflow_state(cfg, root)
    return State(postgres=postgres_running(cfg, root), mlflow=up, notes=notes)


def stop(cfg: ServicesConfig, root: Path) -> State:
    """Stop both (tracking server first: it holds database connections). Returns what was running."""
    mlflow, notes = stop_mlflow(cfg, root)
    return State(postgres=stop_postgres(cfg, root), mlflow=mlflow, notes=notes)

