"""Run the same Python snippet in several processes at the same instant (real concurrency for tests).

Each child runs ``setup`` (imports, clients: the slow part), says it is ready, waits for a shared
"go" file, runs ``body`` and prints one line ``RESULT <json>`` (``body`` assigns the dict ``result``).
The parent starts every child, waits until all are ready, creates the go file, and returns each
child's result. Threads would not do: ``sdd.registry`` serialises MLflow's fluent API behind a
process-wide lock, and a file lock between threads of one process proves less than between processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_CHILD = """\
import json, os, sys, time
{setup}
open({ready!r}, "w").close()
while not os.path.exists({go!r}):
    time.sleep(0.002)
result = {{}}
{body}
print("RESULT " + json.dumps(result), flush=True)
"""


def run_at_once(setup: str, body: str, n: int, folder: Path, env: dict[str, str] | None = None,
                timeout: float = 600) -> list[dict]:
    """Run ``setup`` then, all together, ``body`` in ``n`` processes; each child's ``result`` dict."""
    folder.mkdir(parents=True, exist_ok=True)
    go = folder / "go"
    children = []
    child_env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
                 **(env or {})}
    for i in range(n):
        script = folder / f"child{i}.py"
        ready = folder / f"ready{i}"
        script.write_text(_CHILD.format(setup=textwrap.dedent(setup), body=textwrap.dedent(body),
                                        ready=str(ready), go=str(go)))
        log = folder / f"child{i}.log"
        with open(log, "wb") as out:  # a file, not a pipe: a full pipe would stall the child
            proc = subprocess.Popen([sys.executable, str(script), str(i)], cwd=REPO, env=child_env, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        children.append((proc, ready, log))
    try:
        deadline = time.monotonic() + timeout
        while not all(ready.exists() for _, ready, _ in children):
            for proc, _, log in children:
                if proc.poll() is not None:
                    raise AssertionError(f"child exited before the start:\n{log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError("children not ready in time")
            time.sleep(0.05)
        go.touch()
        results = []
        for proc, _, log in children:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            lines = [line for line in log.read_text().splitlines() if line.startswith("RESULT ")]
            assert proc.returncode == 0 and lines, f"child failed ({proc.returncode}):\n{log.read_text()[-4000:]}"
            results.append(json.loads(lines[-1].removeprefix("RESULT ")))
        return results
    finally:
        for proc, _, _ in children:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
