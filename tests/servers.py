"""Real servers as pytest fixtures: a moto S3 server and an MLflow tracking server proxying to it.

Each server is a subprocess in its own process group on a free local port; the fixture waits
until it answers, and on teardown terminates (then kills) exactly that group. The S3 credentials
are dummies; :data:`PLANTED_SECRET` is the secret access key, so tests can check it never shows
up in anything logged.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PLANTED_SECRET = "sdd-planted-secret-9f3b2c7e"
BUCKET = "sdd-artifacts"
ARTIFACTS_DESTINATION = f"s3://{BUCKET}/mlartifacts"
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing-key-id", "AWS_SECRET_ACCESS_KEY": PLANTED_SECRET,
          "AWS_DEFAULT_REGION": "us-east-1", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status < 500:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"{url} not up after {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    """Terminate the server's process group (it may have workers), then kill it if it lingers."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


@dataclass
class MotoServer:
    endpoint: str


@dataclass
class MlflowServer:
    url: str
    artifacts_destination: str
    s3_endpoint: str


def start_moto(root: Path, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """A moto S3 server with bucket :data:`BUCKET`; the process (stop it with :func:`stop`) and endpoint."""
    import boto3

    port, log = free_port(), root / "moto.log"
    proc = start([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], {**S3_ENV, **(env or {})},
                 log)
    try:
        endpoint = f"http://127.0.0.1:{port}"
        wait_until_up(f"{endpoint}/moto-api/", proc, log, timeout=120)
        s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=S3_ENV["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=PLANTED_SECRET, region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
    except BaseException:
        stop(proc)
        raise
    return proc, endpoint


def start_mlflow(root: Path, s3_endpoint: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """``mlflow server`` on SQLite, serving artifacts from ``s3://BUCKET/mlartifacts`` at ``s3_endpoint``."""
    port, log = free_port(), root / "server.log"
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
           "--artifacts-destination", ARTIFACTS_DESTINATION, "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]
    proc = start(cmd, {**S3_ENV, "MLFLOW_S3_ENDPOINT_URL": s3_endpoint, **(env or {})}, log)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_up(f"{url}/health", proc, log, timeout=240)
    except BaseException:
        stop(proc)
        raise
    return proc, url


@pytest.fixture(scope="module")
def moto_server(tmp_path_factory) -> Iterator[MotoServer]:
    """A moto S3 server with bucket :data:`BUCKET`."""
    proc, endpoint = start_moto(tmp_path_factory.mktemp("moto"))
    try:
        yield MotoServer(endpoint)
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def mlflow_server(moto_server, tmp_path_factory) -> Iterator[MlflowServer]:
    """``mlflow server`` on SQLite, serving artifacts from ``s3://BUCKET/mlartifacts`` (moto)."""
    proc, url = start_mlflow(tmp_path_factory.mktemp("mlflow_server"), moto_server.endpoint)
    try:
        yield MlflowServer(url, ARTIFACTS_DESTINATION, moto_server.endpoint)
    finally:
        stop(proc)
