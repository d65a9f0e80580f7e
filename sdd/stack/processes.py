"""The stack's processes: started in their own process group with a pid file and a log, found again,
stopped with everything below them (a worker's flow runs included)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sdd.errors import StackError


def tool(name: str) -> str:
    """The ``prefect`` / ``mlflow`` executable of this environment (next to sys.executable), else PATH."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if not found:
        raise StackError(f"'{name}' not found; install the project (pip install -e .) in this environment")
    return found


def pid_path(state_dir: Path, name: str) -> Path:
    return state_dir / f"{name}.pid"


def _log_file(state_dir: Path, name: str) -> Path:
    return state_dir / "logs" / f"{name}.log"


def _cmdline(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None


def _proc_state(pid: int) -> str | None:
    """The state letter of /proc/<pid>/stat (R, S, Z...), None if unreadable."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def is_alive(record: dict[str, Any]) -> bool:
    """Whether the process of a pid record still runs (and is ours, where /proc can tell)."""
    pid = record["pid"]
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    cmdline = _cmdline(pid)
    if cmdline is None:  # no /proc here: trust kill(0)
        return True
    if not cmdline:  # empty for a zombie, and for a moment while the child execs (just after spawn)
        return _proc_state(pid) not in ("Z", "X")
    return record["marker"] in cmdline  # a reused pid runs something else


def spawn(name: str, cmd: list[str], env: dict[str, str], state_dir: Path, cwd: Path) -> dict[str, Any]:
    """Start ``cmd`` in its own process group, logging to ``logs/<name>.log``; write ``<name>.pid``."""
    log = _log_file(state_dir, name)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_default_interrupt)
    record = {"name": name, "pid": proc.pid, "marker": Path(cmd[0]).name, "cmd": cmd, "log": str(log)}
    pid_path(state_dir, name).write_text(json.dumps(record))
    return record


def _default_interrupt() -> None:
    """In the child, before exec: SIGINT back to its default action.

    A shell starts background jobs (``sdd stack up &``, a CI step) with SIGINT ignored, and children
    inherit that. A Prefect worker stops on SIGTERM by sending itself SIGINT: ignored, it ran on until
    ``stop`` killed it 20 s later, and its flow runs were killed rather than told to stop.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux /proc; empty elsewhere), e.g. a worker's flow runs."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _signal_groups(groups: set[int], sig: int) -> set[int]:
    """Send ``sig`` to each process group; return the groups that still exist."""
    alive = set()
    for group in groups:
        try:
            os.killpg(group, sig)
            alive.add(group)
        except (ProcessLookupError, PermissionError):
            pass
    return alive


def stop(record: dict[str, Any], timeout_s: float = 20.0) -> None:
    """SIGTERM the process's group and those of its descendants, wait, then SIGKILL what is left.

    A worker starts each flow run in a process group of its own, so the run would outlive a
    signal to the worker's group alone; it is stopped too (it shows as Crashed, and a re-run
    resumes it: see flows/erase.py).
    """
    if not is_alive(record):
        return
    groups = {record["pid"]}  # start_new_session: the group id is the leader's pid
    for pid in descendants(record["pid"]):
        try:
            groups.add(os.getpgid(pid))
        except ProcessLookupError:
            pass
    groups = _signal_groups(groups, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while groups and time.monotonic() < deadline:
        _reap(record["pid"])
        time.sleep(0.2)
        groups = _signal_groups(groups, 0)
    _signal_groups(groups, signal.SIGKILL)
    _reap(record["pid"])


def _reap(pid: int) -> None:
    """Collect a child we started in this process, so it does not linger as a zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def read_records(state_dir: Path) -> list[dict[str, Any]]:
    records = []
    for pid_file in sorted(Path(state_dir).glob("*.pid")):
        try:
            records.append(json.loads(pid_file.read_text()))
        except (OSError, ValueError):
            pid_file.unlink(missing_ok=True)
    return records



def run_tool(args: list[str], env: dict[str, str], cwd: Path, what: str, timeout_s: float) -> str:
    try:
        out = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise StackError(f"{what} took over {timeout_s:.0f} s") from None
    if out.returncode != 0:
        raise StackError(f"{what} failed (exit {out.returncode}):\n{(out.stdout + out.stderr)[-3000:]}")
    return out.stdout



def exit_status(record: dict[str, Any]) -> str:
    """How a process we spawned ended (reaping it), e.g. ``exit code 1`` or ``killed by SIGKILL``."""
    try:
        pid, status = os.waitpid(record["pid"], os.WNOHANG)
    except ChildProcessError:  # not our child (another `sdd stack` process started it)
        return "exit status unknown"
    if pid == 0:
        return "still running"
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit code {os.WEXITSTATUS(status)}"


