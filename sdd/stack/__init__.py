"""The local orchestration stack as subprocesses: Prefect server, MLflow server, one worker per pool.

``sdd stack up`` starts, in order:

1. the **Prefect server** (``prefect server start``) -- SQLite in ``PREFECT_HOME`` by default, or
   the database of ``StackConfig.prefect_db_url`` (``sdd stack up --prefect-db-url``, e.g.
   ``postgresql+asyncpg://user:pw@host:5432/prefect``), else whatever
   ``PREFECT_SERVER_DATABASE_CONNECTION_URL`` / ``PREFECT_API_DATABASE_CONNECTION_URL`` in the
   environment points at;
2. the **MLflow server** (``mlflow server``) on the same SQLite store and artifact folder that
   ``sdd register`` uses without a server (``.sdd/mlflow.db``, ``.sdd/artifacts``), or on the
   backend store of ``StackConfig.mlflow_backend_uri`` (``--mlflow-backend-uri``, e.g.
   ``postgresql://user:pw@host:5432/mlflow``); artifacts stay in the artifact folder;
3. the **promotion guard** (``python -m sdd.registry.receiver serve``, :mod:`sdd.registry.guard`) on
   ``guard_port``, and its MLflow webhook (``model_version_alias.created``, registered idempotently
   with the HMAC secret of ``guard-secret``); MLflow gets ``MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS`` and
   ``http`` webhook URLs, since the receiver is on this machine, and a fixed key
   (``mlflow-webhook-key``) to encrypt stored webhook secrets across restarts;
4. the **work pools** ``cpu`` and ``gpu`` (process pools; ``gpu`` runs one flow at a time), the
   **deployments** of ``prefect.yaml`` (``prefect deploy --all``), and one **process worker** per
   pool, started from the project folder with ``PREFECT_API_URL`` and ``MLFLOW_TRACKING_URI`` set.

``sdd stack down`` stops the workers first, then the servers (a server stopped under a live worker
leaves the worker's runs crashed). ``sdd stack status`` says what is running.

Everything lives in ``.sdd/stack/``: ``<service>.pid``, ``guard-secret`` and ``mlflow-webhook-key``
(mode 0600, made once; they reach their processes by environment or file, never a command line),
``logs/<service>.log``, ``stack.json`` (the URLs, for ``sdd concepts publish`` and ``status``) and
``prefect-home/`` (``PREFECT_HOME``: the Prefect SQLite database and task results), unless
``PREFECT_HOME`` is set. ``prefect_db_url`` and
``mlflow_backend_uri`` go to their server only, through its environment (not its command line,
which ``ps`` and the pid files show): workers and flow runs talk to the servers' APIs and need no
database credentials. This package does not import Prefect or MLflow; it runs their command-line
tools, found next to the running Python first.

**Authentication** (``sdd stack up --auth``, :class:`StackAuth`): one ``user:password`` from
``$SDD_STACK_AUTH`` or the file named by ``$SDD_STACK_AUTH_FILE`` -- never a command-line argument.
The Prefect server then requires HTTP basic auth (``PREFECT_SERVER_API_AUTH_STRING``) on its API,
which is also what the UI's data calls use; MLflow runs its ``basic-auth`` app with that user as its
admin (users in ``<state>/mlflow-auth.db``). Workers, their flow runs and ``prefect`` commands get
``PREFECT_API_AUTH_STRING`` and ``MLFLOW_TRACKING_USERNAME`` / ``_PASSWORD``, all by environment.

Its modules: :mod:`sdd.stack.config` (:class:`StackConfig`, :class:`StackAuth`),
:mod:`sdd.stack.processes` (spawn, find, stop), :mod:`sdd.stack.api` (HTTP calls, waiting, the
zombie automation), :mod:`sdd.stack.services` (:func:`up`, :func:`down`, :func:`status`).
"""

from sdd.stack.api import (
    HEARTBEAT_S,
    ZOMBIE_AUTOMATION,
    ensure_zombie_automation,
    http_json,
    port_is_free,
    wait_for,
    wait_for_worker,
    zombie_automation,
)
from sdd.stack.config import AUTH_ENV, AUTH_FILE_ENV, DEFAULT_CRON, POOLS, STATE_DIR, STATE_FILE, StackAuth, StackConfig
from sdd.stack.processes import descendants, exit_status, is_alive, read_records, spawn, stop
from sdd.stack.services import (
    api_url,
    create_pools,
    create_zombie_automation,
    deploy,
    down,
    guard_secret_file,
    mlflow_auth_ini,
    stack_env,
    start_guard,
    state_secret,
    status,
    up,
    webhook_env,
)

__all__ = [
    "AUTH_ENV", "AUTH_FILE_ENV", "DEFAULT_CRON", "HEARTBEAT_S", "POOLS", "STATE_DIR", "STATE_FILE", "ZOMBIE_AUTOMATION",
    "StackAuth", "StackConfig", "api_url", "create_pools", "create_zombie_automation", "deploy", "descendants", "down",
    "ensure_zombie_automation", "exit_status", "guard_secret_file", "http_json", "is_alive", "mlflow_auth_ini",
    "port_is_free", "read_records", "spawn", "stack_env", "start_guard", "state_secret", "status", "stop", "up",
    "wait_for", "wait_for_worker", "webhook_env", "zombie_automation",
]
