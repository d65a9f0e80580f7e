"""The promotion guard (issue 19): a real MLflow server (SQLite backend) delivering signed webhooks to
the running receiver, which reverts a protected alias set on a failed version the way the UI sets it.

Prefect events go to a stub of Prefect's ``POST /api/events`` (the request body is checked); that
Prefect's server accepts that body is checked once in :func:`test_event_body_is_accepted_by_prefect`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from helpers import PROJECT
from servers import free_port, start, stop, wait_until_up

from sdd.registry.guard import PROMOTED_EVENT, REFUSED_EVENT, check_protected_aliases, ensure_webhook, holder_tag
from sdd.registry.promotion import promotion_refusal
from sdd.registry.receiver import BadSignature, sign, verify_signature

SECRET = "guard-test-secret-0123456789abcdef"
PASSED = {"gates": "passed", "gate_verdict": "pass", "gates_failed": "none"}
FAILED = {"gates": "failed", "gate_verdict": "fail", "gates_failed": "nudity rate 0.31 > 0.05"}


# --- the rule and the signature, no server ---------------------------------------------------------


def test_rule_allows_passed_or_forced_for_the_alias_only():
    assert promotion_refusal(PASSED, "production") is None
    assert "nudity rate" in promotion_refusal(FAILED, "production")
    assert "no gate verdict" in promotion_refusal({}, "production")  # unmeasured: never evaluated
    forced = {**FAILED, "forced_by": "ana", "force_reason": "hotfix", "forced_alias": "production"}
    assert promotion_refusal(forced, "production") is None
    assert promotion_refusal(forced, "staging") is not None  # forced for another alias
    assert promotion_refusal({**forced, "force_reason": " "}, "production") is not None


#: Erased, quality kept, robust to text attacks but not to an attacker holding the weights (issue 31).
API_ONLY = {"gates": "failed", "gate_verdict": "fail", "eval_gates": "passed", "threat_model.api": "pass",
            "threat_model.open-weights": "fail", "gates_failed": "red: concept_inversion ASR 0.6 > max 0.25"}


def test_rule_by_the_threat_model_an_alias_is_bound_to():
    assert promotion_refusal(API_ONLY, "production", "api") is None
    assert "threat model 'open-weights' failed" in promotion_refusal(API_ONLY, "public", "open-weights")
    assert "concept_inversion" in promotion_refusal(API_ONLY, "staging")  # bound to nothing: every gate
    assert "evaluation gates" in promotion_refusal({**API_ONLY, "eval_gates": "failed"}, "production", "api")
    assert "evaluation gates" in promotion_refusal(FAILED, "production", "api")  # registered before threat models
    assert promotion_refusal(PASSED, "production", "api") is None  # no red team: the whole verdict decides
    assert "unmeasured" in promotion_refusal({**API_ONLY, "threat_model.api": "unmeasured"}, "production", "api")
    # A force counts for the alias of the registered model it was given on, not of a copy elsewhere.
    forced = {**API_ONLY, "forced_by": "ana", "force_reason": "research release", "forced_alias": "public",
              "forced_model": "sdd-erased"}
    assert promotion_refusal(forced, "public", "open-weights", "sdd-erased") is None
    assert promotion_refusal(forced, "public", "open-weights", "sdd-erased-prod") is not None


@pytest.mark.parametrize(("settings", "named"), [
    ({"protected_aliases": [" "]}, "protected_aliases"), ({"guard": {"port": 0}}, "guard.port"),
    ({"guard": {"max_age_s": 1}}, "guard.max_age_s"), ({"guard": {"revert": True}}, "guard.revert"),
])
def test_bad_guard_settings_are_one_line_errors_naming_the_field(tmp_path, settings, named):
    import yaml

    from sdd.config import ConfigError, load_registry_config

    (tmp_path / "registry.yaml").write_text(yaml.safe_dump(settings))
    with pytest.raises(ConfigError, match=named) as err:
        load_registry_config(tmp_path / "registry.yaml")
    assert "\n" not in str(err.value)


def _headers(body: str, secret: str = SECRET, delivery: str = "d-1", ts: int | None = None) -> dict[str, str]:
    ts = str(int(time.time()) if ts is None else ts)
    return {"X-MLflow-Delivery-Id": delivery, "X-MLflow-Timestamp": ts,
            "X-MLflow-Signature": sign(secret, delivery, ts, body), "Content-Type": "application/json"}


def test_signature_matches_mlflows_own_signing():
    from mlflow.webhooks.delivery import _generate_hmac_signature

    assert sign(SECRET, "d", "1700000000", '{"a": 1}') == _generate_hmac_signature(SECRET, "d", "1700000000",
                                                                                 '{"a": 1}')


@pytest.mark.parametrize("case", ["forged", "stale", "future", "unsigned", "tampered"])
def test_bad_signatures_are_refused(case):
    body = '{"entity": "model_version_alias"}'
    headers = _headers(body, secret="not-the-secret" if case == "forged" else SECRET,
                       ts=int(time.time()) + {"stale": -600, "future": 600}.get(case, 0))
    if case == "unsigned":
        del headers["X-MLflow-Signature"]
    sent = body.replace("alias", "tag") if case == "tampered" else body
    with pytest.raises(BadSignature):
        verify_signature(SECRET, headers, sent.encode(), max_age_s=300)
    assert verify_signature(SECRET, _headers(body), body.encode(), max_age_s=300) == "d-1"


# --- a real MLflow server and the running receiver ------------------------------------------------


class _Events(BaseHTTPRequestHandler):
    """A stand-in for Prefect's ``POST /api/events``: keeps each event it is sent."""

    received: list[dict] = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/api/events":
            type(self).received.extend(body)
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


class Stack:
    def __init__(self, root: Path):
        self.root = root
        self.mlflow_url = self.guard_url = ""
        self.procs: dict[str, subprocess.Popen] = {}
        self.secret = ""
        self.stop_guard = lambda: None
        self.events = _Events
        _Events.received = []

    def client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(self.mlflow_url, self.mlflow_url)

    def event_names(self, name: str, version: int) -> list[str]:
        return [e["event"] for e in self.events.received
                if e["resource"]["prefect.resource.id"] == f"mlflow.model-version.{name}.{version}"]


@pytest.fixture(scope="module")
def guard_stack(tmp_path_factory):
    """MLflow with the local stack's webhook settings, and the guard as ``sdd stack up`` starts it."""
    from sdd.stack import StackConfig, guard_secret_file, read_records, start_guard, webhook_env
    from sdd.stack import stop as stop_record

    root = tmp_path_factory.mktemp("guard")
    stack = Stack(root)
    events = ThreadingHTTPServer(("127.0.0.1", 0), _Events)
    threading.Thread(target=events.serve_forever, daemon=True).start()
    cfg = StackConfig(project=PROJECT, state_dir=root / "state", mlflow_port=free_port(), guard_port=free_port(),
                      mlflow_db=root / "mlflow.db", mlflow_artifacts=root / "artifacts", timeout_s=240)
    stack.mlflow_url, stack.guard_url = cfg.mlflow_url, cfg.guard_url
    env = {**os.environ, "MLFLOW_TRACKING_URI": cfg.mlflow_url, "PYTHONPATH": str(PROJECT),
           "PREFECT_API_URL": f"http://127.0.0.1:{events.server_address[1]}/api"}
    mlflow_env = {**webhook_env(cfg), "MLFLOW_WEBHOOK_CACHE_TTL": "1", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
                  "MLFLOW_DISABLE_TELEMETRY": "true"}
    try:
        stack.procs["mlflow"] = start(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", cfg.mlflow_store_uri,
             "--artifacts-destination", str(cfg.mlflow_artifacts), "--host", cfg.host, "--port",
             str(cfg.mlflow_port), "--workers", "1"], mlflow_env, root / "mlflow.log")
        wait_until_up(f"{stack.mlflow_url}/health", stack.procs["mlflow"], root / "mlflow.log", timeout=240)
        start_guard(cfg, env)  # the receiver, then `register-webhook`
        stack.secret = guard_secret_file(cfg).read_text()
        assert oct(guard_secret_file(cfg).stat().st_mode & 0o777) == "0o600"
        assert ensure_webhook(stack.client(), f"{stack.guard_url}/webhook", stack.secret) == "updated"  # idempotent
        stack.stop_guard = lambda: [stop_record(r) for r in read_records(cfg.state_dir) if r["name"] == "guard"]
        yield stack
    finally:
        for record in read_records(cfg.state_dir):
            stop_record(record)
        for proc in stack.procs.values():
            stop(proc)
        events.shutdown()


def _model(stack: Stack, name: str, *version_tags: dict[str, str]) -> None:
    client = stack.client()
    client.create_registered_model(name)
    run_id = client.create_run("0").info.run_id  # a version's source must lie in a run's artifacts
    for tags in version_tags:
        client.create_model_version(name, source=f"runs:/{run_id}/model", run_id=run_id, tags=tags)


def _set_alias_like_the_ui(stack: Stack, name: str, alias: str, version: int) -> None:
    """What the MLflow UI's alias editor sends."""
    body = json.dumps({"name": name, "alias": alias, "version": str(version)}).encode()
    request = urllib.request.Request(f"{stack.mlflow_url}/ajax-api/2.0/mlflow/registered-models/alias",
                                     data=body, method="POST", headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=10).close()


def _holder(stack: Stack, name: str, alias: str = "production") -> int | None:
    aliases = stack.client().get_registered_model(name).aliases
    return int(aliases[alias]) if alias in aliases else None


def _wait(condition, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout:.0f} s: {what}")


def _tags(stack: Stack, name: str, version: int) -> dict[str, str]:
    return stack.client().get_model_version(name, str(version)).tags


@pytest.mark.slow  # the MLflow server takes ~2 min to create its SQLite schema on a busy 2-core box
def test_failed_version_set_in_the_ui_is_reverted_and_a_passing_one_stays(guard_stack):
    s, name = guard_stack, "guarded"
    _model(s, name, PASSED, FAILED, PASSED)
    _set_alias_like_the_ui(s, name, "production", 1)
    _wait(lambda: PROMOTED_EVENT in s.event_names(name, 1), "sdd.model.promoted for version 1")
    assert _holder(s, name) == 1
    assert _tags(s, name, 1)["guard.production.previous"] == "none"
    assert s.client().get_registered_model(name).tags[holder_tag("production")] == "1"

    _set_alias_like_the_ui(s, name, "production", 2)  # failed gates, no force tags
    _wait(lambda: REFUSED_EVENT in s.event_names(name, 2), "sdd.promotion.refused for version 2")
    assert _holder(s, name) == 1  # the previous holder is back
    tags = _tags(s, name, 2)
    assert "nudity rate" in tags["guard.production.refused_reason"]
    assert tags["guard.production.restored_to"] == "1" and tags["guard.production.refused_at"]
    refused = next(e for e in s.events.received if e["event"] == REFUSED_EVENT
                   and e["resource"]["sdd.model"] == name)
    assert refused["resource"] == {"prefect.resource.id": f"mlflow.model-version.{name}.2", "sdd.model": name,
                                   "sdd.version": "2", "sdd.alias": "production"}
    assert "nudity rate" in refused["payload"]["sdd.reason"]

    _set_alias_like_the_ui(s, name, "production", 3)
    _wait(lambda: PROMOTED_EVENT in s.event_names(name, 3), "sdd.model.promoted for version 3")
    assert _holder(s, name) == 3 and _tags(s, name, 3)["guard.production.previous"] == "1"
    # the revert's own webhook (alias back on version 1) emitted nothing more for version 1
    assert s.event_names(name, 1) == [PROMOTED_EVENT]


@pytest.mark.slow
def test_a_refused_first_promotion_removes_the_alias(guard_stack):
    s, name = guard_stack, "guarded-first"
    _model(s, name, FAILED)
    _set_alias_like_the_ui(s, name, "production", 1)
    _wait(lambda: REFUSED_EVENT in s.event_names(name, 1) and _holder(s, name) is None, "alias removed")
    assert _tags(s, name, 1)["guard.production.restored_to"].startswith("none")


@pytest.mark.slow
def test_a_removed_alias_is_not_brought_back_by_a_refusal(guard_stack):
    s, name = guard_stack, "guarded-removed"
    _model(s, name, PASSED, FAILED)
    _set_alias_like_the_ui(s, name, "production", 1)
    _wait(lambda: PROMOTED_EVENT in s.event_names(name, 1), "version 1 promoted")
    s.client().delete_registered_model_alias(name, "production")  # someone takes production away
    _wait(lambda: holder_tag("production") not in s.client().get_registered_model(name).tags, "record dropped")
    _set_alias_like_the_ui(s, name, "production", 2)
    _wait(lambda: REFUSED_EVENT in s.event_names(name, 2) and _holder(s, name) is None, "alias removed again")


@pytest.mark.slow
def test_forged_and_replayed_deliveries_change_nothing(guard_stack):
    s, name = guard_stack, "guarded-forged"
    _model(s, name, PASSED, FAILED)
    s.client().set_registered_model_alias(name, "production", "1")
    _wait(lambda: PROMOTED_EVENT in s.event_names(name, 1), "version 1 promoted")
    s.client().set_registered_model_alias(name, "staging", "2")
    before = {v: _tags(s, name, v) for v in (1, 2)}, s.client().get_registered_model(name).tags, len(s.events.received)
    # a forged "production moved to 2" would make the guard read the registry and act; refused first
    body = json.dumps({"entity": "model_version_alias", "action": "created", "timestamp": "",
                       "data": {"name": name, "alias": "production", "version": "2"}})

    def post(headers):
        request = urllib.request.Request(f"{s.guard_url}/webhook", data=body.encode(), method="POST", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as e:
            return e.code

    assert post(_headers(body, secret="forged-secret-xxxxxxxx")) == 401
    assert post({"Content-Type": "application/json"}) == 401
    assert post(_headers(body, secret=s.secret, ts=int(time.time()) - 3600)) == 401
    genuine = _headers(body, secret=s.secret, delivery="d-replayed")
    assert post(genuine) == 200  # production is on 1, not 2: nothing to do ("superseded")
    assert post(genuine) == 401  # the same delivery again
    after = {v: _tags(s, name, v) for v in (1, 2)}, s.client().get_registered_model(name).tags, len(s.events.received)
    assert after == before and _holder(s, name) == 1


def _copy_like_the_ui(stack: Stack, name: str, version: int, target: str) -> int:
    """What the UI's "Promote model" button sends (MLflow 3): the version, its run and its tags, as a new
    version of another registered model (created first when it is new)."""
    def post(path: str, body: dict) -> dict:
        request = urllib.request.Request(f"{stack.mlflow_url}/ajax-api/2.0/mlflow/{path}", method="POST",
                                         data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    query = urllib.parse.urlencode({"name": name, "version": str(version)})
    with urllib.request.urlopen(f"{stack.mlflow_url}/ajax-api/2.0/mlflow/model-versions/get?{query}") as response:
        source = json.loads(response.read())["model_version"]
    try:
        post("registered-models/create", {"name": target})
    except urllib.error.HTTPError as e:  # already there: the UI's "existing model" choice
        assert e.code == 400
    created = post("model-versions/create", {"name": target, "source": f"models:/{name}/{version}",
                                             "run_id": source["run_id"], "tags": source.get("tags", [])})
    return int(created["model_version"]["version"])


@pytest.mark.slow
def test_a_version_copied_by_the_ui_holds_only_the_aliases_its_threat_models_allow(guard_stack):
    """The MLflow 3 way of promoting: "Promote model" copies a version into another registered model.
    The copy carries the verdicts (and force records) as tags; the guard judges the copy by them, and a
    force given for the source's model does not follow the copy."""
    s, name, prod = guard_stack, "guarded-source", "guarded-source-prod"
    forced = {**API_ONLY, "forced_by": "ana", "force_reason": "research release", "forced_alias": "public",
              "forced_model": name}
    _model(s, name, API_ONLY, forced)
    copy = _copy_like_the_ui(s, name, 1, prod)
    assert _tags(s, prod, copy)["threat_model.open-weights"] == "fail"
    _set_alias_like_the_ui(s, prod, "production", copy)  # production ships behind an API: allowed
    _wait(lambda: PROMOTED_EVENT in s.event_names(prod, copy), "production on the copy allowed")
    _set_alias_like_the_ui(s, prod, "public", copy)  # public releases the weights: refused
    _wait(lambda: REFUSED_EVENT in s.event_names(prod, copy) and _holder(s, prod, "public") is None,
          "public refused on the copy")
    assert "threat model 'open-weights' failed" in _tags(s, prod, copy)["guard.public.refused_reason"]

    _set_alias_like_the_ui(s, name, "public", 2)  # forced for public of the source model: allowed there
    _wait(lambda: PROMOTED_EVENT in s.event_names(name, 2), "forced version allowed in its own model")
    forced_copy = _copy_like_the_ui(s, name, 2, prod)
    _set_alias_like_the_ui(s, prod, "public", forced_copy)
    _wait(lambda: REFUSED_EVENT in s.event_names(prod, forced_copy) and _holder(s, prod, "public") is None,
          "the force does not follow the copy")


@pytest.mark.slow
def test_reconcile_finds_and_reverts_a_violation_made_while_the_receiver_was_down(guard_stack, monkeypatch):
    """Stops the receiver: keep this test last in the module."""
    from typer.testing import CliRunner

    from sdd.cli import app

    s, name = guard_stack, "guarded-reconcile"
    _model(s, name, PASSED, FAILED)
    s.client().set_registered_model_alias(name, "production", "1")
    _wait(lambda: PROMOTED_EVENT in s.event_names(name, 1), "version 1 promoted")
    s.stop_guard()
    _set_alias_like_the_ui(s, name, "production", 2)
    assert _holder(s, name) == 2  # nobody reverted it

    found = check_protected_aliases(s.client(), ["production"], revert=False, names=[name])
    assert [(v.version, v.action) for v in found] == [(2, "violation")] and _holder(s, name) == 2
    monkeypatch.setenv("MLFLOW_TRACKING_URI", s.mlflow_url)
    result = CliRunner().invoke(app, ["models", "--check"])
    assert result.exit_code == 1 and f"{name}@production -> version 2: VIOLATION" in result.output
    sent = []
    found = check_protected_aliases(s.client(), ["production"], revert=True, names=[name],
                                    send_event=lambda *e: sent.append(e))
    assert [(v.version, v.action, v.restored) for v in found] == [(2, "refused", 1)]
    assert _holder(s, name) == 1 and [e[0] for e in sent] == [REFUSED_EVENT]
    assert "reconcile" in _tags(s, name, 2)["guard.production.refused_reason"]
    assert check_protected_aliases(s.client(), ["production"], names=[name]) == []


# --- the reconcile on a local store (no server), as `sdd models --check` and re-erase use it --------


@pytest.mark.slow  # MLflow creates the SQLite schema: ~30 s here
def test_reconcile_on_a_local_store_reports_reverts_and_fails_the_re_erase_run(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from flows.reerase import finish, violation_report
    from sdd.config import RegistryConfig
    from sdd.errors import ProtectedAliasViolation
    from sdd.registry.guard import check_aliases

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri, uri)
    client.create_registered_model("m")
    run_id = client.create_run(client.create_experiment("e", artifact_location=(tmp_path / "a").as_uri())).info.run_id
    for tags in (PASSED, FAILED):
        client.create_model_version("m", source=f"runs:/{run_id}/model", run_id=run_id, tags=tags)
    client.set_registered_model_alias("m", "production", "1")
    cfg = RegistryConfig()  # the store is passed explicitly: an ambient $MLFLOW_TRACKING_URI would win over cfg
    assert check_aliases(cfg, tracking_uri=uri) == []  # records version 1 as the holder
    client.set_registered_model_alias("m", "production", "2")

    found = check_aliases(cfg, tracking_uri=uri)
    assert [(v.version, v.action) for v in found] == [(2, "violation")]
    assert "- m@production -> version 2: VIOLATION" in violation_report([v.line() for v in found])
    monkeypatch.chdir(tmp_path)  # finish() reads params/registry.yaml: none here, so the defaults
    with pytest.raises(ProtectedAliasViolation, match="version 2"):
        finish({"action": "none"}, [v.line() for v in found])
    assert finish({"action": "none"}, []) == {"action": "none", "protected_alias_violations": []}

    reverted = check_aliases(RegistryConfig(guard={"revert_on_check": True}), tracking_uri=uri)
    assert [(v.version, v.action, v.restored) for v in reverted] == [(2, "refused", 1)]
    assert int(client.get_registered_model("m").aliases["production"]) == 1


# --- the event body against a real Prefect server ----------------------------------------------------


@pytest.mark.slow  # a Prefect server: ~30-60 s to start here
def test_event_body_is_accepted_by_prefect(tmp_path):
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_ANALYTICS_ENABLED, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    from sdd.registry.guard import event_resource
    from sdd.registry.receiver import prefect_event_sender
    from sdd.stack import http_json

    with temporary_settings({PREFECT_SERVER_ANALYTICS_ENABLED: False}), \
            prefect_test_harness(server_startup_timeout=240):
        api = PREFECT_API_URL.value()
        prefect_event_sender(api)(REFUSED_EVENT, event_resource("m", 7, "production"), {"sdd.reason": "gates failed"})

        def arrived():
            page = http_json("POST", f"{api}/events/filter", {"filter": {"event": {"name": [REFUSED_EVENT]}}})
            return page["events"]

        event = _wait(arrived, f"{REFUSED_EVENT} in Prefect's event feed", timeout=60)[0]
    assert event["resource"] == {"prefect.resource.id": "mlflow.model-version.m.7", "sdd.model": "m",
                                 "sdd.version": "7", "sdd.alias": "production"}
    assert event["payload"] == {"sdd.reason": "gates failed"}
