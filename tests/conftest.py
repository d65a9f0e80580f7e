"""Fixtures shared by several test files."""

from pathlib import Path

import pytest
from tiny_models import one_thread, save_tiny_pipelines


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """Tiny random-weight SD 1.x, SD 2.x and SDXL pipelines saved once per session."""
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
    from sdd.toy import save_standin_erased

    return save_standin_erased(tmp_path_factory.mktemp("erased") / "model")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """The whole local stack (Prefect and MLflow servers, cpu + gpu workers) on free ports; torn down after."""
    from servers import free_port

    from sdd.stack import StackConfig, down, up

    root = tmp_path_factory.mktemp("stack")
    cfg = StackConfig(project=Path(__file__).resolve().parents[1], state_dir=root / "state", prefect_port=free_port(),
                      mlflow_port=free_port(), guard_port=free_port(),
                      mlflow_db=root / "mlflow.db", mlflow_artifacts=root / "artifacts",
                      env={"PREFECT_HOME": str(root / "prefect-home"), "PREFECT_WORKER_QUERY_SECONDS": "2"},
                      timeout_s=300)
    try:
        info = up(cfg)
        yield {**info, "root": root, "cfg": cfg}
    finally:
        down(cfg.state_dir)
