"""The team stack's database passwords: generated, kept in one private pgpass file outside the
repository, and given to PostgreSQL only as SCRAM verifiers.

libpq (psql, psycopg, SQLAlchemy, Optuna, the MLflow server) reads passwords from the file that
``PGPASSFILE`` names, so no URL needs to carry one. The file lives under ``$MEISCOPE_SECRETS_DIR``,
else ``$XDG_CONFIG_HOME/meiscope`` (``~/.config/meiscope``), in a folder keyed by the services
folder's resolved path: two checkouts never share one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from meiscope.atomic import atomic_path
from meiscope.errors import MeiscopeError

SECRETS_ENV = "MEISCOPE_SECRETS_DIR"  # where the password files go instead of ~/.config/meiscope
SCRAM_ITERATIONS = 4096  # PostgreSQL's default scram_iterations


@dataclass(frozen=True)
class Passwords:
    """The cluster's two passwords (never printed, logged or passed on a command line)."""

    admin: str
    user: str

    def __repr__(self) -> str:  # a traceback or a debugger must not show them
        return "Passwords(***)"

    @classmethod
    def generate(cls) -> "Passwords":
        """Two fresh random passwords (URL-safe: no ':' or '\\' to escape in a pgpass line)."""
        return cls(admin=secrets.token_urlsafe(32), user=secrets.token_urlsafe(32))


def password_file(services_dir: Path) -> Path:
    """The private pgpass file of the cluster in ``services_dir`` (a resolved path), outside its repository."""
    base = os.environ.get(SECRETS_ENV) or os.path.join(
        os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config", "meiscope")
    key = hashlib.sha256(str(services_dir).encode()).hexdigest()[:16]
    path = Path(base).resolve() / "services" / f"{services_dir.parent.name}-{key}" / "pgpass"
    if services_dir.parent in path.parents:
        raise MeiscopeError(f"the password file {path} would be inside the repository: set {SECRETS_ENV} "
                            "(or XDG_CONFIG_HOME) to a folder outside it")
    return path


def _field(text: str) -> str:
    return text.replace("\\", "\\\\").replace(":", "\\:")


def write_pgpass(path: Path, hosts: list[str], port: int, logins: dict[str, str]) -> None:
    """Write ``logins`` (role -> password) for ``hosts`` on ``port`` (mode 600 from the first byte) in a
    private folder (mode 700)."""
    for folder in (path.parent.parent, path.parent):
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        folder.chmod(0o700)
    lines = ["# meiscope services: written by `meiscope services start`; private (libpq reads it as PGPASSFILE)"]
    for host in dict.fromkeys(hosts):
        lines += [f"{_field(host)}:{port}:*:{_field(role)}:{_field(pw)}" for role, pw in logins.items()]
    with atomic_path(path) as tmp:
        tmp.chmod(0o600)
        tmp.write_text("\n".join(lines) + "\n")


def read_pgpass(path: Path) -> dict[str, str]:
    """role -> password from a pgpass file meiscope wrote (the first line of each role); {} if missing."""
    try:
        text = path.read_text()
    except OSError:
        return {}
    found: dict[str, str] = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            *_, role, password = line.rsplit(":", 2)  # roles and generated passwords hold no ':'
            found.setdefault(role, password)
    return found


def scram_verifier(password: str, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS) -> str:
    """PostgreSQL's stored form of a scram-sha-256 password (RFC 5802/7677): what the server keeps.

    Given to the server instead of the password, so the password appears in no server file, log
    line or statement. (Generated passwords are ASCII: SASLprep leaves them unchanged.)
    """
    salt = salt if salt is not None else os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***`` (``user:***@host``, ``?password=***``).

    Everything between ``user:`` and the last ``@`` counts as the password (an unescaped ``@`` in a
    password must not leak its tail); a URL without user info is returned unchanged.
    """
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest:
        userinfo, _, hostpart = rest.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        if colon and "/" not in user:
            rest = f"{user}:***@{hostpart}"
    return re.sub(r"(?i)([?&]password=)[^&#]*", r"\1***", f"{scheme}{sep}{rest}")
