"""End to end: the real stack (Prefect server, MLflow server, cpu + gpu workers) on free ports.

Runs are started the way the UI starts them -- ``POST /api/deployments/{id}/create_flow_run`` --
and the event trigger is exercised with ``sdd concepts publish``. Everything (databases, task
results, run folders) lives in a temporary folder; the stack is always torn down.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import uuid
from pathlib import Path

import pytest
import yaml
from servers import free_port
from test_flows import GATES_OFF, TINY

from sdd.concepts import concept_set_hash
from sdd.stack import StackConfig, down, http_json, up

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

PROJECT = Path(__file__).resolve().parents[1]
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("stack")
    cfg = StackConfig(project=PROJECT, state_dir=root / "state", prefect_port=free_port(),
                      mlflow_port=free_port(), mlflow_db=root / "mlflow.db", mlflow_artifacts=root / "artifacts",
                      env={"PREFECT_HOME": str(root / "prefect-home"), "PREFECT_WORKER_QUERY_SECONDS": "2"},
                      timeout_s=300)
    try:
        info = up(cfg)
        yield {**info, "root": root, "cfg": cfg}
    finally:
        down(cfg.state_dir)


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
    body = {"flow_runs": {"deployment_id": {"any_": [deployment_id(stack, deployment)]}}}
    return api(stack, "POST", "/flow_runs/filter", body)


def artifact_text(stack, run_id: str, key: str) -> str:
    found = api(stack, "POST", "/artifacts/filter",
                {"artifacts": {"key": {"any_": [key]}, "flow_run_id": {"any_": [run_id]}}})
    return found[0]["data"]


def registry(stack):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(stack["mlflow_ui"], stack["mlflow_ui"])
    return {int(v.version): v for v in client.search_model_versions("name = 'sdd-erased'")}, \
        client.get_registered_model("sdd-erased").aliases


def test_stack_runs_erasure_and_reerasure_like_the_ui(stack):
    runs_dir = str(stack["root"] / "runs")
    tiny = {**TINY, "gates": GATES_OFF, "runs_dir": runs_dir}

    # 1. erase-concepts from the UI: distillation is handed to the gpu pool, the rest runs on cpu
    run = start_run(stack, "erase-concepts/erase-concepts", {"concepts": ["red"], **tiny})
    assert run["state_type"] == "COMPLETED", run["state"]
    assert run["work_pool_name"] == "cpu"
    [distill_run] = runs_of(stack, "distill/distill-gpu")
    assert distill_run["state_type"] == "COMPLETED" and distill_run["work_pool_name"] == "gpu"
    assert "alias `candidate`" in artifact_text(stack, run["id"], "erasure-report")

    versions, aliases = registry(stack)
    assert list(versions) == [1] and aliases == {"candidate": "1"}
    tags = versions[1].tags
    assert tags["concepts"] == "red" and tags["base_model"] == "toy" and tags["gates"] == "passed"
    assert tags["concepts_sha256"] == concept_set_hash("toy", ["red"])

    from sdd.registry import promote

    promote("sdd-erased", 1, "production", tracking_uri=stack["mlflow_ui"])

    # 2. publishing an unchanged concept set triggers re-erase, which does nothing
    concepts_file = stack["root"] / "concepts.yaml"
    concepts_file.write_text(yaml.safe_dump({"active": "colors", "sets": {"colors": ["red"]}}))
    sdd = Path(sys.executable).parent / "sdd"
    published = subprocess.run([str(sdd), "concepts", "publish", "--file", str(concepts_file),
                                "--api-url", stack["prefect_api"]], capture_output=True, text=True, timeout=300)
    assert published.returncode == 0, published.stderr
    deadline = time.monotonic() + 300
    triggered = []
    while not triggered and time.monotonic() < deadline:
        triggered = [r for r in runs_of(stack, "re-erase/re-erase")
                     if r["parameters"].get("reason", "").startswith("event sdd.concepts.updated")]
        time.sleep(2)
    assert triggered, "the event trigger started no re-erase run"
    assert triggered[0]["parameters"]["concepts_file"] == str(concepts_file)
    noop = wait_for_run(stack, triggered[0]["id"])
    assert noop["state_type"] == "COMPLETED", noop["state"]
    assert "Nothing to do" in artifact_text(stack, noop["id"], "re-erase")
    assert list(registry(stack)[0]) == [1]

    # 3. a changed active set: re-erase leaves a new candidate, production stays where it was
    concepts_file.write_text(yaml.safe_dump({"active": "shapes", "sets": {"shapes": ["triangle"]}}))
    changed = start_run(stack, "re-erase/re-erase", {"concepts_file": str(concepts_file), **tiny})
    assert changed["state_type"] == "COMPLETED", changed["state"]
    versions, aliases = registry(stack)
    assert sorted(versions) == [1, 2] and aliases == {"production": "1", "candidate": "2"}
    assert versions[2].tags["concepts"] == "triangle"
