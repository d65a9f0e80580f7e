"""Fixtures shared by several test files, and how the suite is spread over pytest-xdist workers.

``make test`` runs two workers (``-n 2 --dist loadscope``, one per core). Each test module is one
work unit (its module-scoped fixtures are built once); the modules that drive the real local stack
form one unit together, so they share one stack (:func:`stack`): :func:`pytest_xdist_make_scheduler`.
Units are handed out heaviest first (:data:`HEAVY_FIRST`), so the long ones start at once and the
short ones fill in around them.
"""

import json
import os
import time
from contextlib import nullcontext
from pathlib import Path

import pytest
from tiny_models import one_thread, save_tiny_pipelines

#: Test modules that share one stack (the ``stack`` fixture), in the order they run on their worker.
STACK_MODULES = ("test_worker_kill", "test_queue", "test_ui_browser", "test_flows_e2e", "test_postgres_stack")
#: Work units by their measured length, longest first (tests not named here follow, in file order).
HEAVY_FIRST = ("stack", "test_demo", "test_registry", "test_stack_auth", "test_dvc", "test_guard", "test_faults",
               "test_flows", "test_full_disk", "test_infra", "test_redteam")


def pytest_configure(config):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # Two workers share two cores: one thread each, in this process and in what it starts.
        os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        import torch

        torch.set_num_threads(1)


def work_unit(nodeid: str) -> str:
    """The xdist work unit of a test: its module, or ``stack`` for the modules sharing the stack."""
    module = Path(nodeid.split("::")[0]).stem
    return "stack" if module in STACK_MODULES else module


def pytest_xdist_make_scheduler(config, log):
    """``--dist loadscope`` with :func:`work_unit` as the scope. (xdist's ``loadgroup`` marks cannot
    do it: xdist 3.8 renames ``item._nodeid``, which pytest 9 no longer reads.)"""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ByWorkUnit(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return ByWorkUnit(config, log)


def pytest_collection_modifyitems(config, items):
    """The heaviest units first; the stack modules in the order of :data:`STACK_MODULES`."""
    rank = {unit: i for i, unit in enumerate(HEAVY_FIRST)}
    stack_rank = {module: i for i, module in enumerate(STACK_MODULES)}
    items.sort(key=lambda item: (rank.get(work_unit(item.nodeid), len(rank)),
                                 stack_rank.get(Path(item.fspath).stem, 0)))  # stable: file order within


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """With ``SDD_TEST_TIMELINE=FILE``: one JSON line per test (worker, unit, start, end, setup included),
    for ``bench/suite_timeline.py`` to show how the workers were loaded and what the critical path is."""
    path = os.environ.get("SDD_TEST_TIMELINE")
    start = time.time()
    try:
        return (yield)
    finally:
        if path:
            line = {"worker": os.environ.get("PYTEST_XDIST_WORKER", "main"), "unit": work_unit(item.nodeid),
                    "test": item.nodeid, "start": start, "end": time.time()}
            with open(path, "a") as f:
                f.write(json.dumps(line) + "\n")


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """Every tiny random-weight pipeline of tests/tiny_models.py (SD 1.x/2.x, SDXL, SD3, SD3.5, FLUX.1), saved once."""
    return save_tiny_pipelines(tmp_path_factory.mktemp("tiny_pipelines"))


@pytest.fixture
def sd1(tiny_dirs):
    """A fresh tiny SD 1.x pipeline (tests train its UNet in place)."""
    from sdd.models import load_pipeline

    return load_pipeline(str(tiny_dirs["sd1"]))


@pytest.fixture
def one_torch_thread():
    """torch on one thread for the test: tiny models are faster so, and results do not depend on it."""
    with one_thread():
        yield


@pytest.fixture(scope="session")
def erased_toy(tmp_path_factory) -> Path:
    """The toy pipeline with seeded noise on its cross-attention keys and values: a stand-in erased model."""
    from sdd.models import save_standin_erased

    return save_standin_erased(tmp_path_factory.mktemp("erased") / "model")


@pytest.fixture(scope="session")
def shared_stack(tmp_path_factory):
    """The whole local stack (Prefect and MLflow servers, cpu + gpu workers) on free ports, started once
    for the tests of :data:`STACK_MODULES` (one xdist worker runs them all); torn down after.

    Its two servers run on fresh PostgreSQL databases (``tests/postgres.py``), as the team stack does;
    where no PostgreSQL server answers they run on SQLite, ``databases`` is None and ``no_postgres``
    says why (the tests that look at the rows skip with that reason).
    """
    from postgres import database_url, fresh_databases, unreachable
    from servers import free_port

    from sdd.stack import StackConfig, down, up

    root = tmp_path_factory.mktemp("stack")
    no_postgres = unreachable()
    with nullcontext() if no_postgres else fresh_databases() as databases:
        on_postgres = {} if databases is None else {
            "prefect_db_url": database_url(databases["prefect"], "postgresql+asyncpg"),
            "mlflow_backend_uri": database_url(databases["mlflow"], "postgresql+psycopg2")}
        cfg = StackConfig(project=Path(__file__).resolve().parents[1], state_dir=root / "state",
                          prefect_port=free_port(), mlflow_port=free_port(), guard_port=free_port(),
                          mlflow_db=root / "mlflow.db", mlflow_artifacts=root / "artifacts", **on_postgres,
                          env={"PREFECT_HOME": str(root / "prefect-home"), "PREFECT_WORKER_QUERY_SECONDS": "2"},
                          timeout_s=300)
        try:
            info = up(cfg)
            yield {**info, "root": root, "cfg": cfg, "databases": databases, "no_postgres": no_postgres}
        finally:
            down(cfg.state_dir)


@pytest.fixture(scope="module")
def stack(shared_stack):
    """The shared stack as this test module's own: no registered model, no run of an earlier module
    still going or listed (``helpers.reset_stack``). The tests of one module share it as they find it."""
    from helpers import reset_stack

    return reset_stack(shared_stack)
