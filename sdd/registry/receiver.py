"""The promotion guard's webhook receiver: a small HTTP server MLflow posts alias moves to.

``python -m sdd.registry.receiver serve`` (``sdd stack up`` starts it; the compose stack runs it as
the ``guard`` service) listens on ``guard.host:guard.port`` of ``params/registry.yaml``:

* ``POST /webhook`` -- an MLflow webhook delivery. Its HMAC signature is checked exactly as MLflow
  signs (:func:`verify_signature`: ``X-MLflow-Signature: v1,<base64 HMAC-SHA256 of
  "<delivery id>.<timestamp>.<body>">``); an unsigned, forged, stale (older than ``guard.max_age_s``)
  or replayed delivery is answered 401 and changes nothing. A valid ``model_version_alias.created``
  goes to :func:`sdd.registry.guard.guard_promotion`, one at a time (a ``.deleted`` one drops the
  alias's holder record);
* ``GET /health`` -- 200 when up.

``python -m sdd.registry.receiver register-webhook`` registers the webhook with MLflow (idempotent)
and records the current valid holders of protected aliases; the stack's init runs it.

The secret is read from the file ``$SDD_GUARD_SECRET_FILE``, else ``$SDD_GUARD_SECRET`` (never a
command line or a log); the MLflow server from ``$MLFLOW_TRACKING_URI`` (with
``MLFLOW_TRACKING_USERNAME`` / ``_PASSWORD`` where MLflow's auth is on: the guard sets aliases and
tags, so it needs edit rights on every model); Prefect from ``$PREFECT_API_URL`` (and
``PREFECT_API_AUTH_STRING``): events go to ``POST <api>/events`` as plain HTTP, so ``sdd/`` does not
import Prefect. Without a Prefect API the guard still reverts and tags, and logs that no event was
sent.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import sys
import threading
import time
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from sdd.config import PARAMS_DIR, RegistryConfig, load_checked_registry_config
from sdd.errors import ConfigError
from sdd.registry.guard import (
    ALIAS_CREATED,
    ALIAS_DELETED,
    EventSender,
    check_protected_aliases,
    ensure_webhook,
    forget_holder,
    guard_promotion,
)

SIGNATURE_HEADER = "X-MLflow-Signature"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
DELIVERY_HEADER = "X-MLflow-Delivery-Id"
SECRET_FILE_ENV = "SDD_GUARD_SECRET_FILE"
SECRET_ENV = "SDD_GUARD_SECRET"
MAX_BODY = 1 << 20

log = logging.getLogger("sdd.guard")


class BadSignature(Exception):
    """A delivery that is not MLflow's: unsigned, forged, stale or replayed."""


def sign(secret: str, delivery_id: str, timestamp: str, body: str) -> str:
    """MLflow's signature of a delivery (mlflow/webhooks/delivery.py): ``v1,<base64 HMAC-SHA256>``."""
    digest = hmac.new(secret.encode(), f"{delivery_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify_signature(secret: str, headers: Any, body: bytes, max_age_s: float, now: float | None = None) -> str:
    """Check a delivery's signature and age; returns its delivery id or raises :class:`BadSignature`."""
    delivery_id, timestamp = headers.get(DELIVERY_HEADER), headers.get(TIMESTAMP_HEADER)
    signatures = (headers.get(SIGNATURE_HEADER) or "").split()
    if not (delivery_id and timestamp and signatures):
        raise BadSignature("missing signature headers")
    try:
        age = (time.time() if now is None else now) - int(timestamp)
    except ValueError:
        raise BadSignature("bad timestamp") from None
    if abs(age) > max_age_s:
        raise BadSignature(f"timestamp {age:.0f} s off (more than {max_age_s:.0f} s)")
    try:
        expected = sign(secret, delivery_id, timestamp, body.decode())
    except UnicodeDecodeError:
        raise BadSignature("body is not UTF-8") from None
    if not any(hmac.compare_digest(expected.encode(), s.encode()) for s in signatures):
        raise BadSignature("signature does not match")
    return delivery_id


def read_secret(path: str | Path | None = None) -> str:
    """The webhook secret: from the file ``path`` / ``$SDD_GUARD_SECRET_FILE`` (the local stack's
    ``.sdd/stack/guard-secret``), else ``$SDD_GUARD_SECRET`` (the compose stack's ``.env``)."""
    path = path or os.environ.get(SECRET_FILE_ENV)
    where = f"{SECRET_FILE_ENV}={path}" if path else SECRET_ENV
    if path:
        try:
            secret = Path(path).read_text().strip()
        except OSError as e:
            raise ConfigError(f"{where}: cannot read ({e.strerror})") from None
    else:
        secret = os.environ.get(SECRET_ENV, "").strip()
    if not secret:
        raise ConfigError(f"no webhook secret: set {SECRET_FILE_ENV} to a file holding it (`sdd stack up` "
                          f"writes .sdd/stack/guard-secret) or {SECRET_ENV}")
    if len(secret) < 16:
        raise ConfigError(f"{where}: the webhook secret is shorter than 16 characters; use e.g. openssl rand -hex 24")
    return secret


def _post_json(url: str, body: Any, auth: str | None, attempts: int = 3) -> None:
    """POST ``body`` as JSON, with HTTP basic auth (``user:password``) when given; retried on failure."""
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    for attempt in range(attempts):
        try:
            request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers=headers)
            urllib.request.urlopen(request, timeout=10).close()
            return
        except OSError:
            if attempt == attempts - 1:
                raise
            time.sleep(1 + attempt)


def prefect_event_sender(api_url: str | None, auth: str | None = None) -> EventSender:
    """Emit an event with ``POST <api_url>/events`` (Prefect 3's REST route; ``auth`` is the
    ``PREFECT_API_AUTH_STRING`` of a server with basic auth); logs when there is no API."""

    def send(event: str, resource: dict[str, str], payload: dict[str, Any]) -> None:
        if not api_url:
            log.warning("no PREFECT_API_URL: event %s for %s not sent", event, resource["prefect.resource.id"])
            return
        body = [{"occurred": dt.datetime.now(dt.UTC).isoformat(), "event": event, "resource": resource,
                 "payload": payload, "id": str(uuid.uuid4())}]
        try:
            _post_json(f"{api_url.rstrip('/')}/events", body, auth)
        except OSError as e:  # the revert and the tags stand; the event is the only thing lost
            log.error("event %s for %s not sent: %s", event, resource["prefect.resource.id"], e)

    return send


class _Replays:
    """Delivery ids seen within the signature's lifetime: a replayed delivery is refused."""

    def __init__(self, max_age_s: float):
        self.max_age_s, self.seen, self.lock = max_age_s, {}, threading.Lock()

    def first_time(self, delivery_id: str) -> bool:
        now = time.monotonic()
        with self.lock:
            self.seen = {d: t for d, t in self.seen.items() if now - t <= 2 * self.max_age_s}
            if delivery_id in self.seen:
                return False
            self.seen[delivery_id] = now
            return True


class GuardServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], cfg: RegistryConfig, secret: str, client: MlflowClient,
                 send_event: EventSender | None):
        super().__init__(address, GuardHandler)
        self.cfg, self.secret, self.client, self.send_event = cfg, secret, client, send_event
        self.replays = _Replays(cfg.guard.max_age_s)
        self.guard_lock = threading.Lock()  # one alias move at a time: a revert must see the last record


class GuardHandler(BaseHTTPRequestHandler):
    server: GuardServer

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), fmt % args)

    def do_GET(self) -> None:
        self._reply(200, {"status": "ok"}) if self.path == "/health" else self._reply(404, {"error": "not found"})

    def do_POST(self) -> None:
        if self.path != "/webhook":
            return self._reply(404, {"error": "not found"})
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            return self._reply(413, {"error": "body too large"})
        body = self.rfile.read(length)
        try:
            delivery = verify_signature(self.server.secret, self.headers, body, self.server.cfg.guard.max_age_s)
            if not self.server.replays.first_time(delivery):
                raise BadSignature(f"delivery {delivery} replayed")
        except BadSignature as e:
            log.warning("refused a delivery from %s: %s", self.address_string(), e)
            return self._reply(401, {"error": "invalid signature"})
        try:
            message = json.loads(body)
            data = message.get("data") or {}
            kind = f"{message.get('entity')}.{message.get('action')}"
            name, alias, version = str(data["name"]), str(data["alias"]), str(data.get("version", ""))
        except (ValueError, KeyError, AttributeError, TypeError):
            return self._reply(400, {"error": "not an MLflow webhook payload"})
        if kind not in (ALIAS_CREATED, ALIAS_DELETED) or (kind == ALIAS_CREATED and not version.isdigit()):
            return self._reply(200, {"action": "ignored"})
        protected = self.server.cfg.protected_threat_models()
        try:
            with self.server.guard_lock:
                if kind == ALIAS_DELETED:
                    forgot = forget_holder(self.server.client, name, alias, protected)
                    return self._reply(200, {"action": "forgotten" if forgot else "ignored"})
                outcome = guard_promotion(self.server.client, name, alias, version, protected,
                                          self.server.send_event)
        except MlflowException as e:  # a 5xx makes MLflow deliver again (its retries)
            log.error("guarding %s@%s -> %s failed: %s", name, alias, version, e.message.splitlines()[0])
            return self._reply(503, {"error": "registry unavailable"})
        if outcome is None:
            return self._reply(200, {"action": "ignored"})
        log.log(logging.WARNING if outcome.action == "refused" else logging.INFO, "%s", outcome.line())
        self._reply(200, {"action": outcome.action, "restored": outcome.restored})


def make_server(cfg: RegistryConfig, secret: str, tracking_uri: str, send_event: EventSender | None,
                host: str | None = None, port: int | None = None) -> GuardServer:
    client = MlflowClient(tracking_uri, cfg.registry_uri or tracking_uri)
    return GuardServer((host or cfg.guard.host, cfg.guard.port if port is None else port), cfg, secret, client,
                       send_event)


def _tracking_uri(cfg: RegistryConfig) -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking_uri
    if not uri or not uri.startswith(("http://", "https://")):
        raise ConfigError("the promotion guard needs an MLflow server (webhooks): set MLFLOW_TRACKING_URI "
                          "or tracking_uri in params/registry.yaml to its http(s) URL")
    return uri


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sdd.registry.receiver", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["serve", "register-webhook"])
    parser.add_argument("--params", default=str(PARAMS_DIR / "registry.yaml"), help="registry settings")
    parser.add_argument("--host", help="bind address [guard.host]")
    parser.add_argument("--port", type=int, help="port [guard.port]")
    parser.add_argument("--url", help="URL MLflow posts to, for register-webhook [guard.url]")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_checked_registry_config(Path(args.params))
        secret, uri = read_secret(), _tracking_uri(cfg)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.command == "register-webhook":
        client = MlflowClient(uri, cfg.registry_uri or uri)
        url = args.url or cfg.guard.webhook_url
        what = ensure_webhook(client, url, secret)
        violations = check_protected_aliases(client, cfg.protected_threat_models())  # records the valid holders
        print(f"promotion guard webhook {what}: {url}; "
              f"{len(violations)} protected alias(es) violate the rule")
        for v in violations:
            print(v.line())
        return 0
    events = prefect_event_sender(os.environ.get("PREFECT_API_URL"), os.environ.get("PREFECT_API_AUTH_STRING"))
    server = make_server(cfg, secret, uri, events, args.host, args.port)
    log.info("promotion guard on http://%s:%d/webhook, protecting %s", *server.server_address[:2],
             ", ".join(cfg.protected_aliases))
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
