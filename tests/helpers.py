"""Helpers shared by several test modules (fixtures shared by several are in ``conftest.py``).

* running ``sdd`` as a subprocess: :func:`sdd_command`, :func:`sdd_env`;
* an erasure interrupted mid-step and compared with an uninterrupted one: :func:`interrupt_at_loss`,
  :func:`assert_same_run`;
* what an evaluation has drawn so far: :func:`indexed_keys`, :func:`image_stamps`;
* tiny flow settings: :data:`TINY`, :data:`GATES_OFF`; a small toy prompt set: :func:`toy_prompt_set`;
* the real local stack (``stack`` fixture in ``conftest.py``) driven like the UI: :func:`api`,
  :func:`create_run`, :func:`wait_for_run`, :func:`runs_of`, :func:`artifact_text`, :func:`registry`;
  one stack shared by several tests, each finding it as if alone: :func:`reset_stack`.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import urllib.error
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sdd.evaluation import read_index
from sdd.evaluation.generate import INDEX_FILE
from sdd.stack import http_json

PROJECT = Path(__file__).resolve().parents[1]


def sdd_command(*args: str) -> list[str]:
    return [sys.executable, "-c", "from sdd.cli import app; app()", *args]


@contextmanager
def interrupt_at_loss(monkeypatch, call: int) -> Iterator[None]:
    """Ctrl-C inside the ``call``-th SDD loss computed in the block (after that step's draws and
    teacher sampling); the block must end with that KeyboardInterrupt."""
    import sdd.erasure.engine as engine

    calls, real_loss = [], engine.sdd_loss

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(engine, "sdd_loss", interrupted)
    try:
        with pytest.raises(KeyboardInterrupt):
            yield
    finally:
        monkeypatch.setattr(engine, "sdd_loss", real_loss)


def assert_same_run(a: Path, b: Path) -> None:
    """Two erasure folders hold the same patch, loss curve and checkpoint, bit for bit."""
    for name in ("patch.safetensors", "checkpoint/state.safetensors"):
        ta, tb = load_file(str(a / name)), load_file(str(b / name))
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta), name
    assert (a / "loss.csv").read_text() == (b / "loss.csv").read_text()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def indexed_keys(folder: Path) -> list[str]:
    """The keys of the index's complete lines, in order, duplicates kept (an image drawn twice is there twice)."""
    path = folder / INDEX_FILE
    lines = path.read_bytes().split(b"\n")[:-1] if path.is_file() else []  # [-1]: "" or a line being written
    return [json.loads(line)["key"] for line in lines]


def image_stamps(folder: Path) -> dict[str, tuple[int, int, str]]:
    """Inode, mtime and digest of each finished image: one drawn again is a new file (an atomic rename)."""
    stamps = {}
    for record in read_index(folder).values():
        path = folder / record["file"]
        stamps[record["file"]] = (path.stat().st_ino, path.stat().st_mtime_ns, digest(path))
    return stamps


def sdd_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
            "TQDM_DISABLE": "1"}


TINY = {"distill": {"steps": 2, "ddim_steps": 5, "batch_size": 2, "checkpoint_every": 1},
        "evaluation": {"num_inference_steps": 2, "batch_size": 16, "grid_images": 2},
        "prompts": {"seeds_per_prompt": 1, "max_eval_prompts": 16},
        "redteam": {"num_inference_steps": 2, "transfer": {"per_prompt": 1},
                    "adversarial_tokens": {"steps": 2, "max_prompts": 2, "check_every": 1},
                    "concept_inversion": {"steps": 2, "images": 2, "batch_size": 2},
                    "relearning": {"steps": 2, "images": 2, "batch_size": 2}, "cost_curves": None}}


def toy_prompt_set(n: int = 16):
    """``n`` rows spread over the toy world's eval (concept ``red``) and benign prompts, one seed each."""
    from sdd.prompts import concat, limit_rows, toy_benign_prompts, toy_eval_prompts

    full = concat("toy-red", [toy_eval_prompts(["red"], 1), toy_benign_prompts(["red"], 1)])
    return limit_rows(full, n)


# Two steps cannot erase anything; with every gate off the verdict is "pass", so a candidate is set.
GATES_OFF = {"max_erased_rate": None, "min_relative_reduction": None, "max_quality_drop_points": None,
             "robustness": {"max_attack_success": None, "max_union_success": None}}


FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def api(stack, method: str, path: str, body=None):
    """One REST call, retried on timeouts, since a server sharing 2 busy cores can answer slowly.

    ``http_json`` itself retries the server's "busy" answers (503 while SQLite is locked); run
    creation carries an idempotency key, so neither retry can start a second run.
    """
    retries = 4
    for attempt in range(retries + 1):
        try:
            return http_json(method, f"{stack['prefect_api']}{path}", body, timeout=60)
        except urllib.error.HTTPError:
            raise
        except OSError:
            if attempt == retries:
                raise
            time.sleep(5)


def deployment_id(stack, name: str) -> str:
    return api(stack, "GET", f"/deployments/name/{name}")["id"]


def wait_for_run(stack, run_id: str, timeout_s: float = 900) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run = api(stack, "GET", f"/flow_runs/{run_id}")
        if run["state_type"] in FINAL:
            return run
        time.sleep(3)
    raise AssertionError(f"flow run {run_id} not finished after {timeout_s:.0f} s")


def create_run(stack, deployment: str, parameters: dict) -> str:
    """What the UI's "Run" button does; returns the new flow run's id."""
    run = api(stack, "POST", f"/deployments/{deployment_id(stack, deployment)}/create_flow_run",
              {"parameters": parameters, "idempotency_key": uuid.uuid4().hex})
    return run["id"]


def start_run(stack, deployment: str, parameters: dict) -> dict:
    return wait_for_run(stack, create_run(stack, deployment, parameters))


def runs_of(stack, deployment: str) -> list[dict]:
    """The deployment's flow runs, less those of earlier tests on a shared stack (:func:`reset_stack`)."""
    runs = {"deployment_id": {"any_": [deployment_id(stack, deployment)]}}
    if stack.get("earlier_runs"):
        runs["id"] = {"not_any_": stack["earlier_runs"]}
    return api(stack, "POST", "/flow_runs/filter", {"flow_runs": runs})


def all_run_ids(stack, states: list[str] | None = None) -> list[str]:
    """Every flow run's id (in one of ``states``, if given), page by page."""
    body = {"flow_runs": {"state": {"type": {"any_": states}}}} if states else {}
    ids, page = [], 200
    while batch := api(stack, "POST", "/flow_runs/filter", {**body, "limit": page, "offset": len(ids)}):
        ids += [r["id"] for r in batch]
        if len(batch) < page:
            break
    return ids


def cancel_runs(stack, run_ids: list[str], timeout_s: float = 90) -> None:
    """Cancel the runs as the UI's Cancel does (their worker stops them); force it where no worker does."""
    for run_id in run_ids:
        api(stack, "POST", f"/flow_runs/{run_id}/set_state", {"state": {"type": "CANCELLING"}, "force": True})
    deadline = time.monotonic() + timeout_s
    pending = set(run_ids)
    while pending and time.monotonic() < deadline:
        pending = {r for r in pending if api(stack, "GET", f"/flow_runs/{r}")["state_type"] not in FINAL}
        time.sleep(1)
    for run_id in pending:  # its worker is gone (a killed one's orphan): nobody else will end it
        api(stack, "POST", f"/flow_runs/{run_id}/set_state",
            {"state": {"type": "CANCELLED", "name": "Cancelled"}, "force": True})


def reset_stack(stack) -> dict:
    """The shared stack as a test would find a stack of its own: nothing of an earlier test still
    running, a live worker on each pool, no registered model, and only the test's own flow runs
    listed by :func:`runs_of`. Returns the stack's dict for the test."""
    from dataclasses import replace

    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from sdd.stack import is_alive, read_records, stack_env
    from sdd.stack.services import _start_workers

    cancel_runs(stack, all_run_ids(stack, ["RUNNING", "PENDING", "CANCELLING", "PAUSED"]))
    cfg = stack["cfg"]
    alive = {r["name"] for r in read_records(cfg.state_dir) if is_alive(r)}
    if dead := tuple(pool for pool in cfg.pools if f"worker-{pool}" not in alive):  # a kill test failed mid-way
        _start_workers(replace(cfg, pools=dead), stack_env(cfg))
    client = MlflowClient(stack["mlflow_ui"], stack["mlflow_ui"])
    try:
        client.delete_registered_model("sdd-erased")
    except MlflowException as e:
        if e.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
    return {**stack, "earlier_runs": all_run_ids(stack)}


def artifact_text(stack, run_id: str, key: str) -> str:
    found = api(stack, "POST", "/artifacts/filter",
                {"artifacts": {"key": {"any_": [key]}, "flow_run_id": {"any_": [run_id]}}})
    return found[0]["data"]


def registry(stack):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(stack["mlflow_ui"], stack["mlflow_ui"])
    return {int(v.version): v for v in client.search_model_versions("name = 'sdd-erased'")}, \
        client.get_registered_model("sdd-erased").aliases
