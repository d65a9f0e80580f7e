"""The error hierarchy (sdd/errors.py): which errors are the user's, their exit codes, what flows retry."""

from __future__ import annotations

import pytest
import typer
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, RESOURCE_DOES_NOT_EXIST

from sdd import errors
from sdd.cli import exit_on_error
from sdd.registry.store import Store, client_for

USER = [errors.ConfigError, errors.RegistryInputError, errors.PromotionRefused, errors.ShardCountError,
        errors.ProtectedAliasViolation]
TRANSIENT = [errors.TransientError, errors.RegistryUnavailable, errors.ConcurrentPromotionError,
             errors.ArtifactUploadError, errors.StackError, errors.ShardError]


@pytest.mark.parametrize("kind", USER)
def test_user_errors_exit_2_and_are_never_retried(kind):
    assert errors.exit_code(kind("x")) == 2 and errors.is_user_error(kind("x"))


@pytest.mark.parametrize("kind", TRANSIENT)
def test_transient_errors_exit_1_and_are_retried(kind):
    assert errors.exit_code(kind("x")) == 1 and not errors.is_user_error(kind("x"))


def test_the_old_import_paths_still_name_the_same_classes():
    from sdd.config import ConfigError, one_line
    from sdd.errors import ShardError, StackError
    from sdd.registry import ArtifactUploadError, RegistryError

    assert (ConfigError, one_line, ArtifactUploadError, ShardError, StackError) == (
        errors.ConfigError, errors.one_line, errors.ArtifactUploadError, errors.ShardError, errors.StackError)
    assert issubclass(errors.ArtifactUploadError, RegistryError) and issubclass(errors.ConfigError, ValueError)


@pytest.mark.parametrize(("kind", "status"), [(errors.ConfigError, 2), (errors.StackError, 1)])
def test_the_cli_prints_one_line_and_exits_with_the_kind_s_status(kind, status, capsys):
    with pytest.raises(typer.Exit) as exit_info, exit_on_error():
        raise kind("bad\nthing")
    assert exit_info.value.exit_code == status
    assert capsys.readouterr().err == "error: bad\\nthing\n"


@pytest.mark.parametrize(("code", "kind"), [(INTERNAL_ERROR, errors.RegistryUnavailable),
                                            (RESOURCE_DOES_NOT_EXIST, errors.RegistryInputError)])
def test_mlflow_failures_are_transient_only_when_the_server_failed(code, kind, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(kind, match="MLflow"), client_for(Store(uri, uri, None)):
        raise MlflowException("boom", error_code=code)


def test_every_stage_of_erase_concepts_retries_only_what_is_not_the_user_s():
    import flows.erase as erase

    stages = [erase.prepare_prompts, erase.distill_stage, erase.evaluate_stage, erase.register_stage]
    assert all(stage.retry_condition_fn is erase._not_a_user_error for stage in stages)


def test_a_process_with_an_empty_cmdline_is_alive_unless_a_zombie(monkeypatch):
    """/proc/<pid>/cmdline is empty for a zombie, and for a moment while a just-spawned child execs:
    `sdd stack up` took the guard for dead right after starting it."""
    import os

    from sdd.stack import processes as stack

    record = {"pid": os.getpid(), "marker": "python"}
    monkeypatch.setattr(stack, "_cmdline", lambda pid: "")
    for state, alive in [("R", True), ("S", True), ("D", True), ("Z", False), ("X", False)]:
        monkeypatch.setattr(stack, "_proc_state", lambda pid, s=state: s)
        assert stack.is_alive(record) is alive, state
    monkeypatch.setattr(stack, "_cmdline", lambda pid: "/usr/bin/something-else")
    assert not stack.is_alive(record)  # a reused pid


def test_exit_status_says_how_a_spawned_process_ended(tmp_path):
    import os
    import signal
    import sys
    import time

    from sdd.stack import exit_status, is_alive, spawn

    exited = spawn("exits", [sys.executable, "-c", "raise SystemExit(3)"], dict(os.environ), tmp_path, tmp_path)
    sleeper = spawn("sleeps", [sys.executable, "-c", "import time; time.sleep(60)"], dict(os.environ), tmp_path,
                    tmp_path)
    assert exit_status(sleeper) == "still running"
    os.kill(sleeper["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 30
    # Wait on the exit itself (exit_status reaps it).
    while (status := exit_status(exited)) == "still running" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert status == "exit code 3"
    assert not is_alive(exited)
    while (status := exit_status(sleeper)) == "still running" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert status == "killed by SIGKILL"  # reaped now: a later call cannot tell
    assert exit_status(sleeper) == "exit status unknown"
