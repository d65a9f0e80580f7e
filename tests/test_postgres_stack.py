"""The team stack's database for real: Prefect and MLflow servers on PostgreSQL, an erasure through them.

``sdd stack up`` is started with ``prefect_db_url`` / ``mlflow_backend_uri`` pointing at two fresh
databases on a real PostgreSQL server (the ones infra/compose runs on), an ``erase-concepts`` run is
started the way the UI starts it, and the outcome is checked three ways: the run's state, the
MLflow registry through the server, and the rows in Postgres itself (so nothing quietly went to a
SQLite file instead).

The server is ``$SDD_TEST_POSTGRES_URL`` (a superuser URL; default
``postgresql://postgres@127.0.0.1:5432/postgres``, the trust-auth server of our machines and CI).
The databases are named ``sdd_test_<unix time>_<random>_prefect`` / ``_mlflow`` and dropped
afterwards, also when the test fails; ones left behind by a killed run (no ``finally`` runs on
SIGKILL) are dropped by a later run once they are a day old. Without a reachable server the test is
skipped, saying why.

The distill stage runs inside the erase-concepts flow run (``distill_deployment`` empty) and the
evaluation is tinier than ``TINY``'s, to keep the test short: the gpu pool hand-off is
tests/test_flows_e2e.py's subject, the database is this one's.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from pathlib import Path

import pytest
from helpers import GATES_OFF, TINY, artifact_text, create_run, registry, runs_of, wait_for_run
from servers import free_port

from sdd.prompts import concept_set_hash
from sdd.stack import StackConfig, down, up

PROJECT = Path(__file__).resolve().parents[1]
ADMIN_URL = os.environ.get("SDD_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
STALE_AFTER_S = 24 * 3600  # a test database this old belongs to a run that was killed


def connect(database: str | None = None):
    """An autocommit psycopg2 connection to the test server (its admin database, or ``database``)."""
    import psycopg2

    conn = psycopg2.connect(ADMIN_URL, connect_timeout=5, **({"dbname": database} if database else {}))
    conn.autocommit = True  # CREATE / DROP DATABASE cannot run inside a transaction
    return conn


def query(database: str, sql: str, args: tuple = ()) -> list[tuple]:
    conn = connect(database)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall()
    finally:
        conn.close()


def database_url(name: str, driver: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(ADMIN_URL).set(drivername=driver, database=name).render_as_string(hide_password=False)


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


@pytest.fixture(scope="module")
def postgres_databases():
    """Two fresh, uniquely named databases (Prefect's and MLflow's), always dropped afterwards."""
    pytest.importorskip("psycopg2", reason="psycopg2 is not installed (pip install -e '.[dev]')")
    import psycopg2
    from sqlalchemy.engine import make_url

    shown = make_url(ADMIN_URL).render_as_string(hide_password=True)
    try:
        admin = connect()
    except psycopg2.OperationalError as e:
        pytest.skip(f"PostgreSQL is not reachable at {shown} (set SDD_TEST_POSTGRES_URL): "
                    f"{str(e).strip().splitlines()[0]}")
    prefix = f"sdd_test_{int(time.time())}_{secrets.token_hex(4)}"
    names = {"prefect": f"{prefix}_prefect", "mlflow": f"{prefix}_mlflow"}
    created = []
    try:
        with admin.cursor() as cur:
            cur.execute("SELECT datname FROM pg_database WHERE datname LIKE 'sdd\\_test\\_%'")
            for (stale,) in cur.fetchall():
                made = re.fullmatch(r"sdd_test_(\d+)_[0-9a-f]+_(prefect|mlflow)", stale)
                if made and time.time() - int(made[1]) > STALE_AFTER_S:
                    cur.execute(f'DROP DATABASE IF EXISTS "{stale}" WITH (FORCE)')
            for name in names.values():
                cur.execute(f'CREATE DATABASE "{name}"')
                created.append(name)
        yield names
    finally:
        errors = []
        with admin.cursor() as cur:
            for name in created:
                try:
                    cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                except psycopg2.Error as e:  # drop the other one all the same
                    errors.append(f"{name}: {e}")
        admin.close()
        assert not errors, f"could not drop test databases: {errors}"


@pytest.fixture(scope="module")
def pg_stack(postgres_databases, tmp_path_factory):
    root = tmp_path_factory.mktemp("pg_stack")
    cfg = StackConfig(project=PROJECT, state_dir=root / "state", prefect_port=free_port(), mlflow_port=free_port(),
                      guard_port=free_port(), mlflow_db=root / "mlflow.db", mlflow_artifacts=root / "artifacts",
                      prefect_db_url=database_url(postgres_databases["prefect"], "postgresql+asyncpg"),
                      mlflow_backend_uri=database_url(postgres_databases["mlflow"], "postgresql+psycopg2"),
                      env={"PREFECT_HOME": str(root / "prefect-home"), "PREFECT_WORKER_QUERY_SECONDS": "2",
                           # MLflow's GenAI job runner: 8 idle processes we do not need on 2 cores
                           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
                      timeout_s=300)
    try:
        info = up(cfg)
        yield {**info, "root": root, "cfg": cfg, "databases": postgres_databases}
    finally:
        down(cfg.state_dir)


@pytest.mark.slow
@pytest.mark.timeout(1800)  # generous: on 2 cores shared with other work every process start takes minutes
def test_erasure_through_a_stack_on_postgres(pg_stack):
    root, dbs = pg_stack["root"], pg_stack["databases"]
    tiny = {**TINY, "gates": GATES_OFF, "runs_dir": str(root / "runs"), "distill_deployment": "",
            "evaluation": {**TINY["evaluation"], "fid_features": "none"},
            "prompts": {**TINY["prompts"], "max_eval_prompts": 4}}

    # what the UI's "Run" button does
    run = wait_for_run(pg_stack, create_run(pg_stack, "erase-concepts/erase-concepts", {"concepts": ["red"], **tiny}),
                       timeout_s=1200)
    assert run["state_type"] == "COMPLETED", run["state"]
    assert run["work_pool_name"] == "cpu" and runs_of(pg_stack, "distill/distill-gpu") == []
    assert "alias `candidate`" in artifact_text(pg_stack, run["id"], "erasure-report")

    # the registry, through the MLflow server
    versions, aliases = registry(pg_stack)
    assert list(versions) == [1] and aliases == {"candidate": "1"}
    tags = versions[1].tags
    assert tags["concepts"] == "red" and tags["base_model"] == "toy" and tags["gates"] == "passed"
    assert tags["concepts_sha256"] == concept_set_hash("toy", ["red"])

    # ... and the same facts as rows in PostgreSQL
    prefect_runs = dict(query(dbs["prefect"], "SELECT id::text, state_type::text FROM flow_run"))
    assert prefect_runs[run["id"]] == "COMPLETED"
    task_runs = dict(query(dbs["prefect"], "SELECT task_key, state_type::text FROM task_run WHERE flow_run_id = %s",
                           (run["id"],)))
    assert set(task_runs.values()) == {"COMPLETED"} and len(task_runs) >= 4  # prompts, distill, evaluate, register
    deployments = {name for (name,) in query(dbs["prefect"], "SELECT name FROM deployment")}
    assert {"erase-concepts", "distill-gpu", "re-erase"} <= deployments
    assert query(dbs["mlflow"], "SELECT name, version FROM model_versions") == [("sdd-erased", 1)]
    pg_tags = dict(query(dbs["mlflow"], "SELECT key, value FROM model_version_tags "
                                        "WHERE name = 'sdd-erased' AND version = 1"))
    assert pg_tags["concepts"] == "red" and pg_tags["gates"] == "passed"
    assert query(dbs["mlflow"], "SELECT alias, version FROM registered_model_aliases") == [("candidate", 1)]
    assert query(dbs["mlflow"], "SELECT count(*) FROM runs WHERE status = 'FINISHED'")[0][0] >= 1

    # no SQLite store was created on the side
    assert not (root / "mlflow.db").exists()
    assert not list((root / "prefect-home").rglob("*.db"))
