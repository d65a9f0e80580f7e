"""Talking to the stack's servers over HTTP: JSON calls retried while a server is busy, waiting until a
server answers or a worker has registered, and Prefect's zombie-flow automation."""

from __future__ import annotations

import base64
import json
import os
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from sdd.errors import StackError, WorkerExitedError
from sdd.stack.config import StackAuth, StackConfig
from sdd.stack.processes import exit_status, is_alive


def _auth_header(auth: StackAuth | None) -> dict[str, str]:
    """The Authorization header for ``auth``, else for ``$PREFECT_API_AUTH_STRING`` when set."""
    if auth is not None:
        return {"Authorization": auth.header()}
    basic = os.environ.get("PREFECT_API_AUTH_STRING")
    return {"Authorization": "Basic " + base64.b64encode(basic.encode()).decode()} if basic else {}



RETRYABLE_STATUS = {429, 503}  # Prefect answers 503 when SQLite is locked: "retry", not "failed"


def http_json(method: str, url: str, body: Any = None, timeout: float = 10.0, retries: int = 6,
              auth: StackAuth | None = None) -> Any:
    """One JSON call, retried with backoff while the server says it is busy (429/503).

    A POST that creates something should carry an idempotency key so that a retry cannot create
    it twice. It authenticates as ``auth``, else with ``$PREFECT_API_AUTH_STRING`` when that is set.
    """
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **_auth_header(auth)}
    for attempt in range(retries + 1):
        request = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                text = response.read().decode()
            return json.loads(text) if text else None
        except urllib.error.HTTPError as exc:
            if exc.code not in RETRYABLE_STATUS or attempt == retries:
                raise
            time.sleep(min(2 ** attempt, 15))


def _tail(path: str | Path, chars: int = 2000) -> str:
    try:
        return Path(path).read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def wait_for(url: str, record: dict[str, Any], timeout_s: float) -> None:
    """Poll ``url`` until it answers below 500; fail early when the process dies."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not is_alive(record):
            raise StackError(f"{record['name']} exited; log {record['log']}:\n{_tail(record['log'])}")
        try:
            with urllib.request.urlopen(url, timeout=3) as response:
                if response.status < 500:
                    return
        except (OSError, urllib.error.HTTPError):
            pass
        time.sleep(1.0)
    raise StackError(f"{record['name']} did not answer at {url} within {timeout_s:.0f} s; "
                     f"log {record['log']}:\n{_tail(record['log'])}")


def wait_for_worker(cfg: StackConfig, pool: str, record: dict[str, Any]) -> None:
    """Wait until the pool's worker has sent its first heartbeat to the server."""
    deadline = time.monotonic() + cfg.timeout_s
    while time.monotonic() < deadline:
        if not is_alive(record):
            raise WorkerExitedError(f"worker for pool {pool} exited ({exit_status(record)}); log {record['log']}:\n"
                                    f"{_tail(record['log'])}")
        try:
            workers = http_json("POST", f"{cfg.prefect_url}/api/work_pools/{pool}/workers/filter", {},
                                auth=cfg.auth)
            if any(w.get("name") == f"sdd-{pool}" for w in workers or []):
                return
        except (OSError, ValueError):
            pass
        time.sleep(1.0)
    raise StackError(f"worker for pool {pool} did not register within {cfg.timeout_s:.0f} s; "
                     f"log {record['log']}")


def port_is_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((host, port)) != 0


#: Seconds between flow-run heartbeats (Prefect's minimum is 30); a run silent for 3 beats is Crashed.
HEARTBEAT_S = 30
ZOMBIE_AUTOMATION = "sdd: crash flow runs whose heartbeats stopped"


def zombie_automation(heartbeat_s: int = HEARTBEAT_S) -> dict[str, Any]:
    """Prefect's "detect zombie flows" automation, as a REST body.

    A worker killed with its flow-run process leaves the run Running for ever: nothing else ends it,
    and the erase-concepts run waiting on it keeps the run folder's lock. When a Running flow run
    misses three heartbeats, this marks it Crashed; the waiting distill task then retries, and the
    new distill run resumes from the checkpoint.
    """
    return {
        "name": ZOMBIE_AUTOMATION,
        "description": "Mark flow runs Crashed when their heartbeats stop (worker or machine lost).",
        "enabled": True,
        "trigger": {
            "type": "event", "posture": "Proactive", "threshold": 1, "within": 3 * heartbeat_s,
            "after": ["prefect.flow-run.heartbeat"],
            "expect": ["prefect.flow-run.heartbeat", "prefect.flow-run.Completed", "prefect.flow-run.Failed",
                       "prefect.flow-run.Cancelled", "prefect.flow-run.Crashed"],
            "match": {"prefect.resource.id": ["prefect.flow-run.*"]},
            "for_each": ["prefect.resource.id"],
        },
        "actions": [{"type": "change-flow-run-state", "state": "CRASHED",
                     "message": f"no heartbeat for {3 * heartbeat_s} s: its worker or machine was lost"}],
    }


def ensure_zombie_automation(api_url: str, auth: StackAuth | None = None) -> bool:
    """Create the zombie automation on the Prefect API at ``api_url`` unless it exists; True if created.

    The team stack's init script runs ``python -m sdd.stack zombie-automation`` to do the same.
    """
    api_url = api_url.rstrip("/")
    existing = http_json("POST", f"{api_url}/automations/filter", {}, timeout=30, auth=auth) or []
    if any(a.get("name") == ZOMBIE_AUTOMATION for a in existing):
        return False
    http_json("POST", f"{api_url}/automations/", zombie_automation(), timeout=30, auth=auth)
    return True


