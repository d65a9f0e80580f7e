"""Authentication for real: ``sdd stack up --auth`` against running Prefect and MLflow servers.

Fast tests check where the credentials come from (``$SDD_STACK_AUTH`` or the file
``$SDD_STACK_AUTH_FILE`` names; a bad value is one line naming it) and that they reach the servers
and workers by environment only. The slow test starts the whole stack with auth on, on free ports,
and shows: no credentials -> 401 on the Prefect API (the UI's data calls are API calls) and on
MLflow's REST and UI (``ajax-api``) endpoints; wrong credentials -> 401; the right ones -> an
``erase-concepts`` run (its distillation on the gpu pool) completes and registers. The password is
then looked for -- as is, and base64-encoded as in a basic-auth header -- in every server's command
line, every file under the stack's state folder (logs, pid files, ``stack.json``), the run folder,
the MLflow artifacts and database, Prefect's home (its database included), and in every MLflow run
param and tag and model-version tag: it is in none of them.
"""

from __future__ import annotations

import base64
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from helpers import GATES_OFF, TINY, create_run, registry, wait_for_run
from servers import free_port
from typer.testing import CliRunner

import sdd.stack.services
from sdd.cli import app
from sdd.errors import ConfigError
from sdd.stack import StackAuth, StackConfig, down, read_records, up

PROJECT = Path(__file__).resolve().parents[1]
USER, SECRET = "sdd-admin", "sdd-stack-pw-4e81c0d9b2"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# --- where the credentials come from (no servers) ------------------------------------------------


def test_credentials_come_from_the_environment_or_a_file(tmp_path):
    assert StackAuth.from_environment({"SDD_STACK_AUTH": f"{USER}:{SECRET}"}) == StackAuth(USER, SECRET)
    secret_file = tmp_path / "auth"
    secret_file.write_text(f"{USER}:{SECRET}\n")
    assert StackAuth.from_environment({"SDD_STACK_AUTH_FILE": str(secret_file)}) == StackAuth(USER, SECRET)
    assert SECRET not in repr(StackAuth(USER, SECRET))
    bad = {"nothing": {}, "no colon": {"SDD_STACK_AUTH": "admin"}, "no user": {"SDD_STACK_AUTH": ":pw"},
           "no password": {"SDD_STACK_AUTH": "admin:"}, "missing file": {"SDD_STACK_AUTH_FILE": str(tmp_path / "x")}}
    for case, environ in bad.items():
        with pytest.raises(ConfigError) as refused:
            StackAuth.from_environment(environ)
        message = str(refused.value)
        assert "\n" not in message and "SDD_STACK_AUTH" in message, (case, message)


def test_cli_stack_up_auth_reads_the_environment_and_refuses_without_it(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(sdd.stack, "up", lambda cfg: seen.append(cfg) or
                        {"prefect_ui": "p", "prefect_api": "p/api", "mlflow_ui": "m", "pools": [], "logs": "l"})
    monkeypatch.delenv("SDD_STACK_AUTH", raising=False)
    monkeypatch.delenv("SDD_STACK_AUTH_FILE", raising=False)
    refused = CliRunner().invoke(app, ["stack", "up", "--auth"])
    assert refused.exit_code == 2 and not seen, refused.output
    assert refused.output.count("\n") == 1 and refused.output.startswith("error: --auth: set SDD_STACK_AUTH")
    (tmp_path / "auth").write_text(f"{USER}:{SECRET}")
    monkeypatch.setenv("SDD_STACK_AUTH_FILE", str(tmp_path / "auth"))
    result = CliRunner().invoke(app, ["stack", "up", "--auth"])
    assert result.exit_code == 0, result.output
    assert seen[0].auth == StackAuth(USER, SECRET) and SECRET not in result.output


def test_credentials_reach_servers_and_workers_by_environment_only(tmp_path, monkeypatch):
    spawned = {}
    monkeypatch.setattr(sdd.stack.services, "spawn", lambda name, cmd, env, *_: spawned.setdefault(name, (cmd, env)))
    monkeypatch.setattr(sdd.stack.services, "wait_for", lambda *_: None)
    cfg = StackConfig(project=tmp_path, auth=StackAuth(USER, SECRET))
    cfg.state_dir.mkdir(parents=True)
    env = sdd.stack.stack_env(cfg)
    sdd.stack.services._start_servers(cfg, env)
    (prefect_cmd, prefect_env), (mlflow_cmd, mlflow_env) = spawned["prefect-server"], spawned["mlflow-server"]
    assert prefect_env["PREFECT_SERVER_API_AUTH_STRING"] == f"{USER}:{SECRET}"
    assert mlflow_cmd[2:4] == ["--app-name", "basic-auth"]
    assert mlflow_env["MLFLOW_AUTH_ADMIN_PASSWORD"] == SECRET and mlflow_env["MLFLOW_AUTH_ADMIN_USERNAME"] == USER
    assert env["PREFECT_API_AUTH_STRING"] == f"{USER}:{SECRET}" and env["MLFLOW_TRACKING_PASSWORD"] == SECRET
    assert SECRET not in " ".join(prefect_cmd + mlflow_cmd)
    assert SECRET not in Path(mlflow_env["MLFLOW_AUTH_CONFIG_PATH"]).read_text()


# --- the stack with auth on -----------------------------------------------------------------------


def status_of(method: str, url: str, authorization: str | None, body: bytes | None = None) -> int:
    headers = {"Content-Type": "application/json", **({"Authorization": authorization} if authorization else {})}
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


def data_calls(info: dict) -> list[tuple[str, str, bytes | None]]:
    """API calls the Prefect UI and the MLflow UI make for their pages, and MLflow's REST API."""
    prefect, mlflow = info["prefect_api"], info["mlflow_ui"]
    return [("POST", f"{prefect}/flow_runs/filter", b"{}"),
            ("POST", f"{prefect}/deployments/filter", b"{}"),
            ("POST", f"{prefect}/ui/flow_runs/history", b"{}"),
            ("GET", f"{prefect}/admin/settings", None),
            ("GET", f"{mlflow}/api/2.0/mlflow/experiments/search?max_results=10", None),
            ("GET", f"{mlflow}/ajax-api/2.0/mlflow/experiments/search?max_results=10", None),
            ("GET", f"{mlflow}/api/2.0/mlflow/registered-models/search", None)]


def files_holding(roots: list[Path], needles: list[bytes]) -> list[str]:
    found = []
    for root in roots:
        for path in [root] if root.is_file() else root.rglob("*"):
            if path.is_file() and any(n in path.read_bytes() for n in needles):
                found.append(str(path))
    return found


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_stack_with_auth_refuses_without_or_with_wrong_credentials_and_runs_with_them(tmp_path, monkeypatch):
    root = tmp_path
    cfg = StackConfig(project=PROJECT, state_dir=root / "state", prefect_port=free_port(),
                      mlflow_port=free_port(), mlflow_db=root / "mlflow.db", mlflow_artifacts=root / "artifacts",
                      env={"PREFECT_HOME": str(root / "prefect-home"), "PREFECT_WORKER_QUERY_SECONDS": "2"},
                      timeout_s=300, auth=StackAuth(USER, SECRET))
    runs_dir = root / "runs"
    try:
        info = up(cfg)
        stack = {**info, "root": root, "cfg": cfg}
        command_lines = {r["name"]: Path(f"/proc/{r['pid']}/cmdline").read_bytes() for r in read_records(cfg.state_dir)}
        assert {"prefect-server", "mlflow-server", "worker-cpu", "worker-gpu"} <= set(command_lines)

        # 1. no credentials, wrong ones: refused; the health checks stay open
        refused = 0
        for authorization in (None, basic(USER, "wrong-password"), basic("intruder", SECRET)):
            for method, url, body in data_calls(info):
                code = status_of(method, url, authorization, body)
                assert code == 401, f"{method} {url} with {'no' if authorization is None else 'wrong'} " \
                                    f"credentials answered {code}"
                refused += 1
        assert status_of("GET", f"{info['prefect_api']}/health", None) == 200
        assert status_of("GET", f"{info['mlflow_ui']}/health", None) == 200
        allowed = [status_of(m, u, basic(USER, SECRET), b) for m, u, b in data_calls(info)]
        assert allowed == [200] * len(allowed), allowed

        # 2. the right ones: a run from the API completes and registers (helpers' calls send them)
        monkeypatch.setenv("PREFECT_API_AUTH_STRING", f"{USER}:{SECRET}")
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", USER)
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", SECRET)
        params = {"concepts": ["red"], **TINY, "gates": GATES_OFF, "runs_dir": str(runs_dir),
                  "evaluation": {**TINY["evaluation"], "fid_features": "none"},  # as tests/test_postgres_stack.py
                  "prompts": {**TINY["prompts"], "max_eval_prompts": 4}}
        run = wait_for_run(stack, create_run(stack, "erase-concepts/erase-concepts", params))
        assert run["state_type"] == "COMPLETED", run["state"]
        versions, aliases = registry(stack)
        assert list(versions) == [1] and aliases == {"candidate": "1"}

        # 3. the password is nowhere it could leak to
        from mlflow.tracking import MlflowClient

        client = MlflowClient(info["mlflow_ui"], info["mlflow_ui"])
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        values = [str(v) for r in runs for v in (*r.data.params.values(), *r.data.tags.values())]
        values += [str(v) for mv in versions.values() for v in mv.tags.values()]
        encoded = base64.b64encode(f"{USER}:{SECRET}".encode())
        needles = [SECRET.encode(), encoded]
        assert not [v for v in values if SECRET in v or encoded.decode() in v]
        assert not [n for n, line in command_lines.items() if any(x in line for x in needles)]
        leaks = files_holding([cfg.state_dir, runs_dir, cfg.mlflow_artifacts, cfg.mlflow_db, root / "prefect-home"],
                              needles)
        assert not leaks, f"the password is in {leaks}"
        print(f"auth: {refused} requests without or with wrong credentials refused (401), "
              f"{len(allowed)} with the right ones answered 200; the run registered version 1; "
              f"password in 0 command lines, files, params or tags")
    finally:
        down(cfg.state_dir)
