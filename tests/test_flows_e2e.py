"""End to end: the real stack (Prefect server, MLflow server, cpu + gpu workers) on free ports.

Runs are started the way the UI starts them -- ``POST /api/deployments/{id}/create_flow_run`` --
and the event triggers are exercised with ``sdd concepts publish`` and by a promotion from the
``promote`` form, which the guard (MLflow's alias webhook) turns into ``sdd.model.promoted``, which
starts ``promoted-check``. Everything (databases, task
results, run folders) lives in a temporary folder; the stack is always torn down.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import (
    GATES_OFF,
    TINY,
    api,
    artifact_text,
    deployment_id,
    registry,
    runs_of,
    start_run,
    wait_for_run,
)

from sdd.prompts import concept_set_hash

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

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

    small_promoted_checks(stack)  # the promotion below starts one (through the guard)
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


PROMOTED = "sdd.model.promoted"


def automation_failures(stack, automation: str) -> list[str]:
    """Why ``automation``'s actions failed (``prefect.automation.action.failed`` events), if they did."""
    events = api(stack, "POST", "/events/filter",
                 {"filter": {"event": {"name": ["prefect.automation.action.failed"]}}, "limit": 50})["events"]
    return [e["payload"].get("reason", "") for e in events if e["resource"].get("prefect.resource.name") == automation]


def promote_from_form(stack, version: str) -> None:
    promoted = start_run(stack, "promote/promote", {"model": "sdd-erased", "version": int(version),
                                                    "alias": "production"})
    assert promoted["state_type"] == "COMPLETED", promoted["state"]
    assert registry(stack)[1]["production"] == version


def small_promoted_checks(stack) -> None:
    """The tests' promoted-check settings: a small sample and no red-team rerun (test_flows.py covers it)."""
    check_id = deployment_id(stack, "promoted-check/promoted-check")
    api(stack, "PATCH", f"/deployments/{check_id}", {"parameters": {"check": {"samples": 4, "redteam": False}}})


def guard_holder(stack, alias: str = "production") -> str | None:
    """The version the guard last let hold ``alias`` (its record on the registered model)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(stack["mlflow_ui"], stack["mlflow_ui"]).get_registered_model("sdd-erased").tags.get(
        f"guard.{alias}.holder")


def wait_until(condition, what: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout_s:.0f} s: {what}"
        time.sleep(1)


def test_promoted_check_runs_on_the_promotion_event_and_passes_on_the_demo_model(stack):
    runs_dir = str(stack["root"] / "runs")
    tiny = {**TINY, "gates": GATES_OFF, "runs_dir": runs_dir}
    # the demo model: every stage cached when the test above ran, else erased now
    erased = start_run(stack, "erase-concepts/erase-concepts", {"concepts": ["red"], **tiny})
    assert erased["state_type"] == "COMPLETED", erased["state"]
    versions, aliases = registry(stack)
    version = str(next(v for v, mv in versions.items() if mv.tags["concepts"] == "red"))
    small_promoted_checks(stack)
    if aliases.get("production") == version:  # the test above promoted it: production moves away first
        other = str(next(v for v, mv in versions.items() if str(v) != version))
        promote_from_form(stack, other)
        wait_until(lambda: guard_holder(stack) == other, f"the guard records version {other} as the holder")
    before = {r["id"] for r in runs_of(stack, "promoted-check/promoted-check")}

    # an allowed promotion, from the `promote` deployment's form (what the Prefect UI sends); the rest
    # is the stack's own chain: MLflow's alias webhook -> the guard -> sdd.model.promoted -> the trigger
    promote_from_form(stack, version)

    deadline = time.monotonic() + 300
    triggered = []
    while not triggered and time.monotonic() < deadline:
        triggered = [r for r in runs_of(stack, "promoted-check/promoted-check")
                     if r["id"] not in before and str(r["parameters"].get("version")) == version
                     and r["parameters"].get("reason", "").startswith(f"event {PROMOTED}")]
        assert not (failed := automation_failures(stack, "promoted-check-on-model-promoted")), failed
        time.sleep(2)
    assert triggered, "the event trigger started no promoted-check run"
    parameters = triggered[0]["parameters"]
    assert (parameters["name"], str(parameters["version"]), parameters["alias"]) == \
        ("sdd-erased", str(version), "production")
    assert len(triggered) == 1, triggered  # one promotion, one event, one check
    assert registry(stack)[0][int(version)].tags["guard.production.promoted_at"]  # the guard allowed it
    assert guard_holder(stack) == version
    check = wait_for_run(stack, triggered[0]["id"])
    assert check["state_type"] == "COMPLETED", check["state"]
    report = artifact_text(stack, check["id"], "promoted-check")
    assert f"sdd-erased@production (version {version}): **PASS**" in report
    assert "red: erased presence rate" in report and "benign correctness" in report
