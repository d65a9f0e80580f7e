"""A real PostgreSQL server for the stack tests: fresh databases for Prefect and MLflow, and queries.

The server is ``$SDD_TEST_POSTGRES_URL`` (a superuser URL; default
``postgresql://postgres@127.0.0.1:5432/postgres``, the trust-auth server of our machines and CI).
:func:`fresh_databases` creates two uniquely named databases (``sdd_test_<unix time>_<random>_prefect``
/ ``_mlflow``) and drops them afterwards, also when the tests fail; ones left behind by a killed run
(no ``finally`` runs on SIGKILL) are dropped by a later run once they are a day old.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager

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


def unreachable() -> str | None:
    """Why no test database can be made here (psycopg2 missing, no server answering), or None."""
    try:
        import psycopg2
    except ImportError:
        return "psycopg2 is not installed (pip install -e '.[dev]')"
    from sqlalchemy.engine import make_url

    try:
        connect().close()
    except psycopg2.OperationalError as e:
        shown = make_url(ADMIN_URL).render_as_string(hide_password=True)
        return f"PostgreSQL is not reachable at {shown} (set SDD_TEST_POSTGRES_URL): {str(e).strip().splitlines()[0]}"
    return None


@contextmanager
def fresh_databases() -> Iterator[dict[str, str]]:
    """Two fresh, uniquely named databases (``{"prefect": name, "mlflow": name}``), always dropped afterwards."""
    import psycopg2

    admin = connect()
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
