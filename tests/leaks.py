"""Processes started by tests that outlive them: found through an environment marker.

Every process a test starts inherits the test process's environment, including
``CLUSTERODM_TEST_PROCESS=<pid of the pytest process>`` (set per process, so each xdist worker
has its own). A process that still carries the marker once every fixture of the session is
torn down was left behind, even if it was re-parented to PID 1 meanwhile (started in a new
session, its parent gone). Linux ``/proc`` only; elsewhere the check does nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

MARK = "CLUSTERODM_TEST_PROCESS"
PROC = Path("/proc")


def mark_this_process() -> None:
    os.environ[MARK] = str(os.getpid())


def _alive(entry: Path) -> bool:
    try:
        state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def marked() -> dict[int, str]:
    """pid -> command line of every live process carrying this process's marker."""
    if not PROC.is_dir():
        return {}
    me = os.getpid()
    wanted = f"{MARK}={me}".encode()
    found: dict[int, str] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            if wanted not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if _alive(entry):
            found[int(entry.name)] = cmd.strip()[:200]
    return found


def children() -> set[int]:
    """This process's children now (``/proc/self/task/*/children``)."""
    out: set[int] = set()
    for task in (PROC / "self" / "task").glob("*"):
        try:
            out.update(int(p) for p in (task / "children").read_text().split())
        except (OSError, ValueError):
            continue
    return out
