"""Fixtures shared by several test files."""

import pytest
from tiny_models import save_tiny_pipelines


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """Tiny random-weight SD 1.x, SD 2.x and SDXL pipelines saved once per session."""
    return save_tiny_pipelines(tmp_path_factory.mktemp("tiny_pipelines"))
