"""Where MLflow lives and how to talk to it: the store, clients, the fluent API, a local write lock.

The tracking URI is ``--tracking-uri`` > ``$MLFLOW_TRACKING_URI`` > ``params/registry.yaml`` > a
local SQLite store ``sqlite:///<project>/.sdd/mlflow.db`` (artifacts in ``.sdd/artifacts``). MLflow
failures leave here as one-line errors: :class:`~sdd.errors.RegistryUnavailable` when the server
failed (retried), :class:`~sdd.errors.RegistryInputError` when the request was wrong. This is the one module that
touches MLflow's private state (the fluent API's URIs), to restore it exactly after each use.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.tracking._model_registry import utils as _registry_state
from mlflow.tracking._tracking_service import utils as _tracking_state

from sdd.config import RegistryConfig
from sdd.errors import RegistryInputError, RegistryUnavailable

#: MLflow error codes that say the server (or the way to it) failed, not the request.
SERVER_SIDE_ERRORS = {"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED"}


@dataclass(frozen=True)
class Store:
    tracking_uri: str
    registry_uri: str
    artifact_location: str | None  # for experiments this module creates


def resolve_store(cfg: RegistryConfig | None = None, tracking_uri: str | None = None) -> Store:
    """Tracking URI: argument > $MLFLOW_TRACKING_URI > cfg.tracking_uri > local SQLite store."""
    cfg = cfg or RegistryConfig()
    uri = (tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking_uri
           or cfg.default_tracking_uri())
    artifacts = cfg.artifact_location
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        db.parent.mkdir(parents=True, exist_ok=True)
        artifacts = artifacts or (db.parent / "artifacts").resolve().as_uri()
    return Store(uri, cfg.registry_uri or os.environ.get("MLFLOW_REGISTRY_URI") or uri, artifacts)


@contextmanager
def _mlflow_errors(store: Store) -> Iterator[None]:
    """Turn MLflow failures (unreachable server, invalid name or alias...) into one-line errors."""
    try:
        yield
    except MlflowException as e:
        message = (str(e.message).strip().splitlines() or [type(e).__name__])[0]
        kind = RegistryUnavailable if e.error_code in SERVER_SIDE_ERRORS else RegistryInputError
        raise kind(f"MLflow ({store.tracking_uri.split('://')[0]}): {message}") from e


@contextmanager
def client_for(store: Store) -> Iterator[MlflowClient]:
    """A client bound to ``store``; touches no global state, so it is safe in threads."""
    with _mlflow_errors(store):
        yield MlflowClient(store.tracking_uri, store.registry_uri)


_FLUENT_LOCK = threading.RLock()


@contextmanager
def mlflow_at(store: Store) -> Iterator[MlflowClient]:
    """Point MLflow's fluent API (runs, log_model, load_model) at ``store``, then restore it.

    MLflow keeps the URIs in module globals and also exports them as environment variables; both
    are put back exactly (an unset URI stays unset). A lock keeps threads from interleaving here.
    """
    with _FLUENT_LOCK, _mlflow_errors(store):
        env_before = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
        previous = (_tracking_state._tracking_uri, _registry_state._registry_uri)
        mlflow.set_tracking_uri(store.tracking_uri)
        mlflow.set_registry_uri(store.registry_uri)
        try:
            yield MlflowClient(store.tracking_uri, store.registry_uri)
        finally:
            mlflow.set_tracking_uri(previous[0])
            _registry_state._registry_uri = previous[1]
            for key, value in env_before.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


@contextmanager
def store_lock(store: Store) -> Iterator[None]:
    """For a local SQLite store, an exclusive file lock next to the database (``<db>.register.lock``).

    It serialises :func:`register` across threads and processes of this machine, so a concurrent
    registration of the same erasure waits and then finds the first one's version instead of logging a
    second run. A tracking server has no such lock; there the version-key check in
    :func:`register_erasure` keeps the registry to one version (see :func:`register`).
    """
    if not store.tracking_uri.startswith("sqlite:///"):
        yield
        return
    lock = Path(store.tracking_uri.removeprefix("sqlite:///") + ".register.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as f:  # each open is its own lock owner, so threads exclude each other too
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_experiment(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except MlflowException:  # created concurrently
        return client.get_experiment_by_name(name).experiment_id
