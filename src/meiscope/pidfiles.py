"""Pid files that name one process: its pid and its start time.

A pid alone names another process once the first exits (or after a reboot); pid and start time
(field 22 of ``/proc/<pid>/stat``) together name one. A pid file that does not match the running
process is removed and reported, and never acted on with a signal.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from meiscope.atomic import write_text


def process_start_ticks(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot); None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # the command name, in parentheses, may hold spaces
    return int(fields[19])  # fields[0] is field 3 (state), so field 22 is fields[19]


def write_pid_file(path: Path, pid: int) -> None:
    """Record ``pid`` and its start time."""
    write_text(path, f"{pid} {process_start_ticks(pid)}\n")


def own_process(pid_file: Path) -> tuple[int | None, list[str]]:
    """The pid in ``pid_file`` if that process is still the one recorded, and notes for the user.

    An empty, garbled or stale pid file is removed and reported; nothing is signalled.
    """
    if not pid_file.is_file():
        return None, []
    text = pid_file.read_text(errors="replace").strip()
    fields = text.split()
    if len(fields) != 2 or not all(f.isdigit() for f in fields) or int(fields[0]) < 2:  # 0 and 1: never ours
        what = "empty" if not text else f"not '<pid> <start time>' ({text[:40]!r})"
        pid_file.unlink(missing_ok=True)
        return None, [f"removed {pid_file}: {what}; nothing was signalled"]
    pid, ticks = int(fields[0]), int(fields[1])
    if process_start_ticks(pid) != ticks:
        pid_file.unlink(missing_ok=True)
        return None, [f"removed stale {pid_file}: pid {pid} is gone or is another process than the server "
                      "meiscope started; nothing was signalled"]
    return pid, []


def _group_alive(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our child (a zombie still counts as a member)
    except ChildProcessError:
        pass
    try:
        os.killpg(pid, 0)
        return True
    except ProcessLookupError:
        return False


def stop_group(pid: int, pid_file: Path, wait_s: float = 20.0) -> None:
    """SIGTERM the process group led by ``pid`` (verified by :func:`own_process`), SIGKILL after
    ``wait_s``; then remove its pid file."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + wait_s
    while _group_alive(pid):
        if time.monotonic() > deadline:
            os.killpg(pid, signal.SIGKILL)
            break
        time.sleep(0.2)
    pid_file.unlink(missing_ok=True)
