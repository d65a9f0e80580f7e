"""The Prefect flows on the toy world with tiny settings, against a temporary Prefect server.

One session-wide "world" (Prefect test server, task-result storage, MLflow SQLite store, runs
folder) is shared by the flow tests, the way a real deployment shares them: a test that erases
the same concepts with the same settings as an earlier one gets every stage from the cache.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from helpers import GATES_OFF, PROJECT, TINY
from tiny_models import one_thread

from flows.params import DistillSettings, EvalSettings, GateSettings
from sdd.config import ConfigError, load_concept_sets, load_model
from sdd.config import DistillConfig as _DistillConfig
from sdd.prompts import concept_set_hash, normalise_concepts

# Tiny settings: 2 SDD steps, 5 sampler steps, 16 evaluation images per model.
STAGES = ("prepare-prompts", "distill", "evaluate", "redteam", "register")


# --- parameters and concept sets (no server) -----------------------------------------------------


def test_concept_sets_file_is_valid_and_names_the_i2p_list():
    sets = load_concept_sets()
    assert sets.active in sets.sets
    assert len(sets.sets["i2p-safety"].concepts) == 20 and "nudity" in sets.sets["nudity"].concepts
    assert sets.sets["toy-colors"].base_model == "toy"


def test_concept_sets_errors_are_one_line(tmp_path):
    bad = tmp_path / "concepts.yaml"
    bad.write_text(yaml.safe_dump({"active": "nope", "sets": {"a": ["red"]}}))
    with pytest.raises(ConfigError, match="active set 'nope' is not one of: a"):
        load_concept_sets(bad)
    bad.write_text(yaml.safe_dump({"active": "a", "sets": {"a": []}}))
    with pytest.raises(ConfigError, match="sets.a.concepts"):
        load_concept_sets(bad)


def test_settings_take_unset_fields_from_the_params_files():
    from_file = load_model(_DistillConfig, Path("params/distill.yaml"))
    distill = DistillSettings.model_validate({"steps": 2})
    assert distill.steps == 2 and distill.lr == from_file.lr and distill.batch_size == from_file.batch_size
    gates = GateSettings.model_validate({"max_erased_rate": None})  # an explicit null turns a gate off
    assert gates.max_erased_rate is None and gates.min_relative_reduction is not None
    evaluation = EvalSettings.model_validate({"judge": {"toy_dir": "x"}})  # nested fields merge
    assert evaluation.judge.toy_dir == "x" and evaluation.judge.kind == EvalSettings().judge.kind
    with pytest.raises(ValueError, match="steps"):
        DistillSettings.model_validate({"steps": 0})


def test_concept_set_hash_ignores_order_and_duplicates():
    assert normalise_concepts([" red", "triangle", "red", ""]) == ["red", "triangle"]
    assert concept_set_hash("toy", ["triangle", "red"]) == concept_set_hash("toy", ["red", "triangle", "red"])
    assert concept_set_hash("toy", ["red"]) != concept_set_hash("toy", ["triangle"])


# --- the flows ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """A temporary Prefect server, result storage, MLflow store and runs folder for the session."""
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, PREFECT_SERVER_ANALYTICS_ENABLED, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    root = tmp_path_factory.mktemp("flows")
    with pytest.MonkeyPatch.context() as mp, one_thread():
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        with temporary_settings({PREFECT_LOCAL_STORAGE_PATH: root / "results",
                                 PREFECT_SERVER_ANALYTICS_ENABLED: False}), \
                prefect_test_harness(server_startup_timeout=240):
            yield root


def erase(world, concepts, gates=GATES_OFF, base_model="toy", **overrides):
    from flows.erase import erase_concepts

    return erase_concepts(concepts=concepts, base_model=base_model, gates=gates, runs_dir=str(world / "runs"),
                          **{**TINY, **overrides})


def versions():
    from sdd.registry import list_versions

    return list_versions("sdd-erased")


def model_version_tags(version: int) -> dict[str, str]:
    from mlflow.tracking import MlflowClient

    return MlflowClient().get_model_version("sdd-erased", str(version)).tags


def artifact(key: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    return max(found, key=lambda a: a.created)


def test_erase_concepts_registers_a_candidate_and_a_rerun_is_all_cached(world):
    first = erase(world, ["red"])
    assert first["stages"] == dict.fromkeys(STAGES, "Completed")
    reg = first["registration"]
    assert reg["alias"] == "candidate" and reg["gates"] == "passed"
    tags = model_version_tags(reg["version"])
    assert tags["concepts"] == "red" and tags["base_model"] == "toy" and tags["gates"] == "passed"
    assert tags["concepts_sha256"] == concept_set_hash("toy", ["red"])  # what re-erase compares

    run_dir = Path(first["run_dir"])
    assert {"plan.json", "prompts", "erasure"} <= {p.name for p in run_dir.iterdir()}
    assert json.loads((run_dir / "erasure" / "manifest.json").read_text())["steps"] == 2
    progress = artifact("distill-progress")
    assert progress.type == "progress" and float(progress.data) == 100.0
    report = artifact("erasure-report").data
    assert "| gate |" in report and f"runs:/{reg['run_id']}" in report and "alias `candidate`" in report
    # every gate off: each threat model passes on the attacks it counts, in the report and the version's tags
    assert "Threat models (`params/gates.yaml`): api **pass**, open-weights **pass**" in report
    assert (tags["threat_model.api"], tags["threat_model.open-weights"]) == ("pass", "pass")
    # lineage: the report shows the commit and DVC hashes the model version is tagged with
    assert reg["lineage"]["git_commit"] == tags["git_commit"] != "none"
    assert f"git `{tags['git_commit']}`" in report and f"md5 `{tags['dvc_concepts']}`" in report

    again = erase(world, ["red"])
    assert again["stages"] == dict.fromkeys(STAGES, "Cached")
    assert again["registration"] == reg and len([v for v in versions() if v.concepts == "red"]) == 1


def test_erase_concepts_runs_on_a_tiny_sd3_pipeline(world, tmp_path):
    """The flow is the same for SD3 (and Flux, tests/test_flow_families.py): prompts, distillation in
    velocity space, evaluation, red team, registration."""
    from tiny_models import save_tiny_pipeline

    base = save_tiny_pipeline("sd3", tmp_path / "sd3")
    result = erase(world, ["red"], base_model=str(base), distill={**TINY["distill"], "train_method": "context"})
    assert result["stages"] == dict.fromkeys(STAGES, "Completed")
    manifest = json.loads((Path(result["run_dir"]) / "erasure" / "manifest.json").read_text())
    assert manifest["base_model"]["pipeline_class"] == "StableDiffusion3Pipeline"
    assert manifest["trained_parameters"]["components"].keys() == {"transformer"}
    tags = model_version_tags(result["registration"]["version"])
    assert tags["base_model"] == str(base)


def test_a_rerun_after_a_failure_skips_the_stages_that_finished(world, monkeypatch):
    import flows.erase
    import sdd.registry

    def mlflow_down(*args, **kwargs):
        raise ConnectionError("MLflow is down")

    strict = {**GATES_OFF, "max_fid": 1e6}  # another evaluation key: evaluate and register run again
    monkeypatch.setattr(sdd.registry, "register", mlflow_down)
    monkeypatch.setattr(flows.erase.register_stage, "retries", 0)
    with pytest.raises(ConnectionError):
        erase(world, ["red"], gates=strict)

    monkeypatch.undo()
    resumed = erase(world, ["red"], gates=strict)
    assert resumed["stages"] == {"prepare-prompts": "Cached", "distill": "Cached", "evaluate": "Cached",
                                 "redteam": "Cached", "register": "Completed"}


def test_re_erase_does_nothing_until_the_active_set_changes(world, tmp_path):
    from flows.reerase import re_erase
    from sdd.registry import promote

    concepts_file = tmp_path / "concepts.yaml"

    def activate(name: str, concepts: list[str]) -> None:
        concepts_file.write_text(yaml.safe_dump({"active": name, "sets": {name: {"concepts": concepts}}}))

    def run():
        return re_erase(concepts_file=str(concepts_file), gates=GATES_OFF, runs_dir=str(world / "runs"), **TINY)

    activate("colors", ["red"])
    first = run()
    assert first["action"] == "erased"
    version = first["erasure"]["registration"]["version"]
    promote("sdd-erased", version, "production")

    activate("colors", ["red", "red"])  # the same set, written differently
    unchanged = run()
    assert unchanged["action"] == "none" and unchanged["production"]["version"] == version
    assert "Nothing to do" in artifact("re-erase").data
    count = len(versions())

    activate("shapes", ["triangle"])
    changed = run()
    assert changed["action"] == "erased" and "concept set changed" in changed["reason"]
    new = changed["erasure"]["registration"]
    assert new["alias"] == "candidate" and new["version"] > version and len(versions()) == count + 1
    assert model_version_tags(new["version"])["concepts"] == "triangle"



@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_two_runs_for_the_same_concepts_at_once_register_one_version(world, tmp_path):
    """Two processes start erase-concepts for the same set at the same instant (as two UI clicks would)."""
    from prefect.settings import get_current_settings
    from racing import run_at_once

    env = {"PREFECT_API_URL": str(get_current_settings().api.url), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_LOCAL_STORAGE_PATH": str(world / "results")}  # the world's server, results and MLflow store
    setup = """
import torch
torch.set_num_threads(1)
from flows.erase import erase_concepts
"""
    body = f"""
out = erase_concepts(concepts=["square"], base_model="toy", gates={GATES_OFF!r}, runs_dir={str(world / "runs")!r},
                     **{TINY!r})
result = {{"registration": out["registration"], "stages": out["stages"]}}
"""
    first, second = run_at_once(setup, body, 2, tmp_path, env=env)
    assert first["registration"] == second["registration"]
    assert len([v for v in versions() if v.concepts == "square"]) == 1
    # One ran every stage; the other waited for the run-folder lock, then got every stage from the cache.
    assert sorted("/".join(sorted(set(r["stages"].values()))) for r in (first, second)) == ["Cached", "Completed"]
    logs = [(tmp_path / f"child{i}.log").read_text() for i in range(2)]
    assert sum("another run of this erasure holds" in log for log in logs) == 1  # the later one waited


# --- promote and promoted-check (issue 19) --------------------------------------------------------


def test_promote_flow_refuses_a_failed_version_like_sdd_promote(world):
    from typer.testing import CliRunner

    from flows.promote import promote_version
    from sdd.cli import app
    from sdd.errors import PromotionRefused
    from sdd.registry import promote

    failed = erase(world, ["red"], gates={**GATES_OFF, "max_erased_rate": 0.0})  # two steps erase nothing
    version = failed["registration"]["version"]
    assert failed["registration"]["gates"] == "failed"
    refusals = []
    for kwargs in ({}, {"force": True, "reason": "  "}):
        state = promote_version(model="sdd-erased", version=version, alias="staging", return_state=True, **kwargs)
        assert state.is_failed()
        with pytest.raises(PromotionRefused) as from_flow:
            state.result()
        with pytest.raises(PromotionRefused) as from_library:
            promote("sdd-erased", version, "staging", **kwargs)
        assert str(from_flow.value) == str(from_library.value)
        refusals.append(str(from_flow.value))
    cli = CliRunner().invoke(app, ["promote", "sdd-erased", str(version), "--alias", "staging"])
    assert cli.exit_code == 2 and cli.output == f"error: {refusals[0]}\n"

    done = promote_version(model="sdd-erased", version=version, alias="staging", force=True,
                           reason="accepted for the demo")
    assert done["forced"] and model_version_tags(version)["force_reason"] == "accepted for the demo"
    assert "[forced: accepted for the demo]" in artifact("promotion").data


def test_promoted_check_passes_on_the_promoted_toy_and_names_a_mismatch(world, monkeypatch):
    import sdd.registry.check
    from flows.promote import PostPromotionCheckFailed, promoted_check
    from sdd.registry import promote

    version = erase(world, ["red"])["registration"]["version"]  # cached when the first test ran
    promote("sdd-erased", version, "checked")  # an alias of its own: production is the re-erase test's
    passed = promoted_check(name="sdd-erased", version=version, alias="checked", check={"samples": 4})
    assert passed["passed"] and any("red-team union" in c for c in passed["comparisons"])
    report = artifact("promoted-check").data
    assert "**PASS**" in report and "red: erased presence rate" in report

    recorded = sdd.registry.check.recorded_evaluation

    def tampered(*args, **kwargs):  # as if the served weights were not the evaluated ones
        found = recorded(*args, **kwargs)
        red = found.metrics["concepts"]["red"]["erased"]
        red["rate"] = 0.0 if red["rate"] > 0.5 else 1.0
        return found

    monkeypatch.setattr(sdd.registry.check, "recorded_evaluation", tampered)
    state = promoted_check(name="sdd-erased", version=version, alias="checked", check={"samples": 4,
                           "redteam": False}, return_state=True)
    assert state.is_failed()
    with pytest.raises(PostPromotionCheckFailed, match="does not match its recorded evaluation: red: erased"):
        state.result()
    assert "**mismatch**" in artifact("promoted-check").data


# --- the local stack's process handling (no servers) ---------------------------------------------


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")  # exited; a zombie waits only for its reaper


def test_stack_down_stops_a_worker_and_the_runs_it_started_in_their_own_session(tmp_path):
    import os
    import sys
    import time

    from sdd.stack import descendants, down, is_alive, read_records, spawn, status

    # Like a Prefect process worker: the flow run it starts gets a session (process group) of its own.
    code = ("import subprocess, time; subprocess.Popen(['sleep', '600'], start_new_session=True); "
            "time.sleep(600)")
    record = spawn("worker-test", [sys.executable, "-c", code], dict(os.environ), tmp_path, tmp_path)
    deadline = time.monotonic() + 60
    while not descendants(record["pid"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    [run] = descendants(record["pid"])
    assert os.getpgid(run) != record["pid"] and status(tmp_path)["processes"]["worker-test"]["alive"]

    assert down(tmp_path) == ["worker-test"]
    assert _gone(record["pid"]) and _gone(run) and read_records(tmp_path) == []
    assert down(tmp_path) == []
    # a pid file whose pid now belongs to another program is not ours to stop
    assert not is_alive({"pid": os.getpid(), "marker": "not-this-program"})


def test_stack_processes_stop_on_sigint_even_when_started_from_a_background_job(tmp_path):
    """A shell's background job ignores SIGINT and its children inherit that; a Prefect worker stops on
    SIGTERM by sending itself SIGINT, so the stack's processes must start with SIGINT at its default."""
    import os
    import signal
    import sys

    from sdd.stack import spawn

    code = "import signal; print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)"
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as `sdd stack up &` in a script
    try:
        record = spawn("interrupt-check", [sys.executable, "-c", code], dict(os.environ), tmp_path, tmp_path)
    finally:
        signal.signal(signal.SIGINT, previous)
    os.waitpid(record["pid"], 0)
    assert Path(record["log"]).read_text().strip() == "True"


def test_cli_stack_status_and_publish_say_what_is_missing(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from sdd.cli import app

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    runner = CliRunner()
    result = runner.invoke(app, ["stack", "status"])
    assert result.exit_code == 1 and "not running" in result.output
    result = runner.invoke(app, ["concepts", "publish", "--api-url", "http://127.0.0.1:9/api"])
    assert result.exit_code == 2 and result.output.startswith("error: --file: params/concepts.yaml: file not found")
    (tmp_path / "params").mkdir()
    shutil.copy(PROJECT / "params/concepts.yaml", tmp_path / "params/concepts.yaml")
    result = runner.invoke(app, ["concepts", "publish"])
    assert result.exit_code == 2 and "no Prefect API" in result.output and "Traceback" not in result.output


def test_zombie_automation_is_a_valid_prefect_automation_and_flow_runs_send_heartbeats(tmp_path):
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    from sdd.stack import HEARTBEAT_S, StackConfig, stack_env, zombie_automation

    automation = AutomationCore.model_validate(zombie_automation())
    trigger, [action] = automation.trigger, automation.actions
    assert isinstance(trigger, EventTrigger) and trigger.posture == Posture.Proactive
    assert trigger.within.total_seconds() == 3 * HEARTBEAT_S and trigger.for_each == {"prefect.resource.id"}
    assert isinstance(action, ChangeFlowRunState) and action.state.value == "CRASHED"
    env = stack_env(StackConfig(project=tmp_path, state_dir=tmp_path / "state"))
    assert int(env["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"]) == HEARTBEAT_S >= 30  # Prefect's minimum
