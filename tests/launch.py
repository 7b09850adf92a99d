"""Launching torchrun from tests, with a watchdog: never a silent hang.

Every torchrun test starts its launchers with ``start`` and waits with ``wait``. A launcher that
outlives its bound gets its ranks' stacks dumped (Pasture ranks register ``faulthandler`` on
SIGUSR1, ``pasture.parallel.mesh``), then the launcher and all its ranks are killed, and the
test fails with each log's tail, the stacks included. torchrun puts every rank in a session of
its own, so the ranks are found through ``/proc`` (children of the launcher), not by group.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (Linux ``/proc``), children first."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry))
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(0), []):
            found.append(child)
            queue.append(child)
    return found


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def start(command: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start a launcher in a new session, its output (and its ranks') appended to ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
        )


def kill(launcher: subprocess.Popen) -> None:
    """SIGKILL the launcher, its process group and every rank below it."""
    ranks = descendants(launcher.pid)
    for pid in [launcher.pid, *ranks]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(launcher.pid, signal.SIGKILL)
    launcher.wait()


def tail(logs: list[Path], chars: int = 6000) -> str:
    return "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-chars:]}" for log in logs)


def wait(launchers: list[subprocess.Popen], logs: list[Path], timeout: float) -> list[int]:
    """Exit codes of ``launchers`` once all have exited; past ``timeout`` seconds, the ranks'
    stacks go to the logs, everything is killed and the test fails with the logs' tails."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(launcher.poll() is not None for launcher in launchers):
            return [launcher.returncode for launcher in launchers]
        time.sleep(0.05)
    ranks = [pid for launcher in launchers for pid in descendants(launcher.pid)]
    for pid in ranks:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGUSR1)  # faulthandler: every thread's stack to stderr
    time.sleep(3.0)  # the dumps reach the log (through torchrun's --tee where used)
    for launcher in launchers:
        kill(launcher)
    pytest.fail(f"torchrun did not finish within {timeout:.0f} s; stacks:\n{tail(logs)}")


def run(command: list[str], log: Path, timeout: float, env: dict[str, str] | None = None) -> int:
    """``start`` then ``wait`` one launcher; its exit code."""
    return wait([start(command, log, env)], [log], timeout)[0]
