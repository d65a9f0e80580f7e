"""The team stack's database for real: Prefect and MLflow servers on PostgreSQL, an erasure through them.

The stack the stack tests share (``shared_stack`` in ``conftest.py``) runs its two servers on two
fresh databases of a real PostgreSQL server (the ones infra/compose runs on; ``tests/postgres.py``).
Here an ``erase-concepts`` run is started the way the UI starts it, and the outcome is checked three
ways: the run's state, the MLflow registry through the server, and the rows in Postgres itself (so
nothing quietly went to a SQLite file instead). Without a reachable server the shared stack runs on
SQLite and this test is skipped, saying why.

The distill stage runs inside the erase-concepts flow run (``distill_deployment`` empty) and the
evaluation is tinier than ``TINY``'s, to keep the test short: the gpu pool hand-off is
tests/test_flows_e2e.py's subject, the database is this one's.
"""

from __future__ import annotations

import pytest
from helpers import GATES_OFF, TINY, artifact_text, create_run, registry, runs_of, wait_for_run
from postgres import query

from sdd.prompts import concept_set_hash
from sdd.stack import StackConfig

# --- where the database URLs go (no servers) ------------------------------------------------------


def test_database_urls_reach_their_server_by_environment_only(tmp_path, monkeypatch):
    import sdd.stack.services

    spawned = {}
    monkeypatch.setattr(sdd.stack.services, "spawn", lambda name, cmd, env, *_: spawned.setdefault(name, (cmd, env)))
    monkeypatch.setattr(sdd.stack.services, "wait_for", lambda *_: None)
    secret = "pw-5c1e7d"
    cfg = StackConfig(project=tmp_path, prefect_db_url=f"postgresql+asyncpg://u:{secret}@db:5432/prefect",
                      mlflow_backend_uri=f"postgresql://u:{secret}@db:5432/mlflow")
    env = sdd.stack.stack_env(cfg)
    sdd.stack.services._start_servers(cfg, env)
    (prefect_cmd, prefect_env), (mlflow_cmd, mlflow_env) = spawned["prefect-server"], spawned["mlflow-server"]
    assert prefect_env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] == cfg.prefect_db_url
    assert mlflow_env["MLFLOW_BACKEND_STORE_URI"] == cfg.mlflow_backend_uri
    assert secret not in " ".join(prefect_cmd + mlflow_cmd) and secret not in str(env)  # ps, pid files, workers
    default = StackConfig(project=tmp_path)  # unchanged default: SQLite next to the project
    assert default.mlflow_store_uri == f"sqlite:///{tmp_path.resolve() / '.sdd' / 'mlflow.db'}"
    assert default.prefect_db_url is None


def test_cli_stack_up_takes_the_urls_from_options_or_environment(monkeypatch):
    from typer.testing import CliRunner

    import sdd.stack
    from sdd.cli import app

    seen = []
    monkeypatch.setattr(sdd.stack, "up", lambda cfg: seen.append(cfg) or
                        {"prefect_ui": "p", "prefect_api": "p/api", "mlflow_ui": "m", "pools": [], "logs": "l"})
    monkeypatch.setenv("SDD_MLFLOW_BACKEND_URI", "postgresql://u@db/mlflow")
    result = CliRunner().invoke(app, ["stack", "up", "--prefect-db-url", "postgresql+asyncpg://u@db/prefect"])
    assert result.exit_code == 0, result.output
    assert seen[0].prefect_db_url == "postgresql+asyncpg://u@db/prefect"
    assert seen[0].mlflow_backend_uri == "postgresql://u@db/mlflow"


# --- the stack on PostgreSQL --------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(1800)  # generous: on 2 cores shared with other work every process start takes minutes
def test_erasure_through_a_stack_on_postgres(stack, tmp_path):
    if stack["databases"] is None:
        pytest.skip(stack["no_postgres"])
    root, dbs = stack["root"], stack["databases"]
    tiny = {**TINY, "gates": GATES_OFF, "runs_dir": str(tmp_path / "runs"), "distill_deployment": "",
            "evaluation": {**TINY["evaluation"], "fid_features": "none"},
            "prompts": {**TINY["prompts"], "max_eval_prompts": 4}}

    # what the UI's "Run" button does
    run = wait_for_run(stack, create_run(stack, "erase-concepts/erase-concepts", {"concepts": ["red"], **tiny}),
                       timeout_s=1200)
    assert run["state_type"] == "COMPLETED", run["state"]
    assert run["work_pool_name"] == "cpu" and runs_of(stack, "distill/distill-gpu") == []
    assert "alias `candidate`" in artifact_text(stack, run["id"], "erasure-report")

    # the registry, through the MLflow server
    versions, aliases = registry(stack)
    assert list(versions) == [1] and aliases == {"candidate": "1"}
    tags = versions[1].tags
    assert tags["concepts"] == "red" and tags["base_model"] == "toy" and tags["gates"] == "passed"
    assert tags["concepts_sha256"] == concept_set_hash("toy", ["red"])

    # ... and the same facts as rows in PostgreSQL (the stack's other tests left rows of their own there)
    prefect_runs = dict(query(dbs["prefect"], "SELECT id::text, state_type::text FROM flow_run"))
    assert prefect_runs[run["id"]] == "COMPLETED"
    task_runs = dict(query(dbs["prefect"], "SELECT task_key, state_type::text FROM task_run WHERE flow_run_id = %s",
                           (run["id"],)))
    assert set(task_runs.values()) == {"COMPLETED"} and len(task_runs) >= 4  # prompts, distill, evaluate, register
    deployments = {name for (name,) in query(dbs["prefect"], "SELECT name FROM deployment")}
    assert {"erase-concepts", "distill-gpu", "re-erase"} <= deployments
    assert query(dbs["mlflow"], "SELECT name, version FROM model_versions WHERE name = 'sdd-erased'") \
        == [("sdd-erased", 1)]
    pg_tags = dict(query(dbs["mlflow"], "SELECT key, value FROM model_version_tags "
                                        "WHERE name = 'sdd-erased' AND version = 1"))
    assert pg_tags["concepts"] == "red" and pg_tags["gates"] == "passed"
    assert query(dbs["mlflow"], "SELECT alias, version FROM registered_model_aliases WHERE name = 'sdd-erased'") \
        == [("candidate", 1)]
    assert query(dbs["mlflow"], "SELECT count(*) FROM runs WHERE status = 'FINISHED'")[0][0] >= 1

    # no SQLite store was created on the side
    assert not (root / "mlflow.db").exists()
    assert not list((root / "prefect-home").rglob("*.db"))
