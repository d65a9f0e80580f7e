"""The promotion guard: a protected alias moved in the MLflow UI goes back unless the rule allows it.

``sdd promote`` refuses a version whose gates failed unless forced with a reason; the MLflow UI does
not. MLflow delivers a signed ``model_version_alias.created`` webhook when an alias moves, and
:mod:`sdd.registry.receiver` hands it to :func:`guard_promotion`, which applies the same rule
(:func:`~sdd.registry.promotion.promotion_refusal`) to the version's tags *as read from MLflow* (the
payload is trusted for the model name, version and alias only):

* **refused** -- the alias goes back to the version that held it before (or is removed when none
  did, or that one no longer passes the rule); the version gets ``guard.<alias>.refused_*`` tags
  (when, by whom as far as known, why, what was restored) and ``sdd.promotion.refused`` is emitted;
* **allowed** -- the version gets ``guard.<alias>.promoted_at`` / ``previous`` / ``promoted_by``
  and ``sdd.model.promoted`` is emitted.

**The previous holder.** MLflow's payload does not say who held the alias before, and by the time
the webhook arrives the alias has already moved. So the guard records the holder it last allowed on
the registered model, tag ``guard.<alias>.holder``, and reverts to that; when the alias is removed
(``model_version_alias.deleted``) the record goes too (:func:`forget_holder`). :func:`check_protected_aliases`
(the reconcile: ``sdd models --check``, the nightly ``re-erase`` run) records it too for every
protected alias on a valid version, so a registry that existed before the guard gets a record. A
revert moves the alias to the recorded holder, which fires another webhook; that one finds the
version equal to the record and does nothing (no second event).

**Window**: the alias is visible on the refused version from the moment it is set until the revert
(normally well under a second; up to MLflow's delivery retries when the receiver is slow), and
loading ``models:/<name>@production`` in that window gets the refused version. If the receiver is
down the move stays until the reconcile finds it. Of a refused move and a concurrent valid one, the
revert may win (MLflow has no compare-and-set on aliases); the reconcile then reports nothing wrong
and the valid promotion has to be repeated.

**Who**: MLflow's webhook payload does not name the user who moved the alias, so ``promoted_by`` /
``refused_by`` say so unless the caller knows better (``sdd promote`` records ``forced_by`` itself).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from mlflow.entities.webhook import WebhookEvent, WebhookStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from sdd.config import RegistryConfig
from sdd.provenance import scrub
from sdd.registry.promotion import alias_holder, promotion_refusal
from sdd.registry.store import client_for, resolve_store

PROMOTED_EVENT = "sdd.model.promoted"
REFUSED_EVENT = "sdd.promotion.refused"
ALIAS_CREATED = "model_version_alias.created"
ALIAS_DELETED = "model_version_alias.deleted"
WEBHOOK_NAME = "sdd-promotion-guard"
UNKNOWN_USER = "unknown (MLflow webhooks do not name the user)"

#: ``send_event(event_name, resource, payload)``: emits one Prefect event (see sdd.registry.receiver).
EventSender = Callable[[str, dict[str, str], dict[str, Any]], None]


@dataclass
class GuardOutcome:
    """What the guard did about one alias move (or one protected alias, in a reconcile)."""

    name: str
    alias: str
    version: int
    action: str  # allowed | refused | unchanged | superseded | violation (reconcile without revert)
    reason: str | None = None
    previous: int | None = None  # the recorded holder before this move
    restored: int | None = None  # where a refused alias went back to (None: removed)

    def line(self) -> str:
        where = f"{self.name}@{self.alias} -> version {self.version}"
        if self.action == "refused":
            back = f"restored to version {self.restored}" if self.restored else "alias removed"
            return f"{where}: REFUSED ({self.reason}); {back}"
        if self.action == "violation":
            return f"{where}: VIOLATION ({self.reason}); not reverted (guard.revert_on_check is false)"
        return f"{where}: {self.action}"


def holder_tag(alias: str) -> str:
    """Registered-model tag recording the version the guard last let hold ``alias``."""
    return f"guard.{alias}.holder"


def event_resource(name: str, version: int | str, alias: str) -> dict[str, str]:
    """The resource of ``sdd.model.promoted`` / ``sdd.promotion.refused`` (the contract with flows/)."""
    return {"prefect.resource.id": f"mlflow.model-version.{name}.{version}", "sdd.model": name,
            "sdd.version": str(version), "sdd.alias": alias}


def _utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def recorded_holder(client: MlflowClient, name: str, alias: str) -> int | None:
    value = client.get_registered_model(name).tags.get(holder_tag(alias))
    return int(value) if value and value.isdigit() else None


def _record_holder(client: MlflowClient, name: str, alias: str, version: int) -> None:
    client.set_registered_model_tag(name, holder_tag(alias), str(version))


#: The protected aliases: a list (every gate counts for each), or alias -> threat model (None: every gate),
#: as :meth:`sdd.config.RegistryConfig.protected_threat_models` gives them.
Protected = Iterable[str] | Mapping[str, str | None]


def _threat_models(protected: Protected) -> dict[str, str | None]:
    return dict(protected) if isinstance(protected, Mapping) else dict.fromkeys(protected)


def forget_holder(client: MlflowClient, name: str, alias: str, protected: Protected) -> bool:
    """After a protected alias was removed: drop the record, so a refused move later removes the
    alias instead of bringing back a holder someone took away. True when a record was dropped."""
    if alias not in set(protected) or alias_holder(client, name, alias) is not None:
        return False
    if recorded_holder(client, name, alias) is None:
        return False
    client.delete_registered_model_tag(name, holder_tag(alias))
    return True


def _refusal_of(client: MlflowClient, name: str, version: int, alias: str,
                threat_model: str | None = None) -> str | None:
    """The rule applied to the version's tags read from MLflow; a missing version is refused too.

    A version copied from another registered model (the UI's "Promote model") carries the source's
    tags, verdicts and force records included; a force recorded for another model does not count.
    """
    try:
        tags = client.get_model_version(name, str(version)).tags
    except MlflowException:
        return f"version {version} does not exist"
    return promotion_refusal(tags, alias, threat_model, name)


def _set_tags(client: MlflowClient, name: str, version: int, tags: dict[str, str]) -> None:
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, scrub(value))


def _revert(client: MlflowClient, name: str, alias: str, version: int, threat_model: str | None) -> int | None:
    """Move ``alias`` off ``version``: back to the recorded holder if it still passes, else remove it."""
    previous = recorded_holder(client, name, alias)
    if previous is not None and previous != version \
            and _refusal_of(client, name, previous, alias, threat_model) is None:
        client.set_registered_model_alias(name, alias, str(previous))
        return previous
    client.delete_registered_model_alias(name, alias)
    return None


def _refuse(client: MlflowClient, name: str, alias: str, version: int, reason: str, by: str,
            send_event: EventSender | None, threat_model: str | None) -> GuardOutcome:
    previous = recorded_holder(client, name, alias)
    restored = _revert(client, name, alias, version, threat_model)
    _set_tags(client, name, version, {
        f"guard.{alias}.refused_at": _utc_now(), f"guard.{alias}.refused_by": by,
        f"guard.{alias}.refused_reason": reason,
        f"guard.{alias}.restored_to": str(restored) if restored is not None else "none (alias removed)"})
    if send_event:
        send_event(REFUSED_EVENT, event_resource(name, version, alias),
                   {"sdd.reason": reason, "refused_by": by, "restored_to": restored, "previous": previous})
    return GuardOutcome(name, alias, version, "refused", reason, previous, restored)


def _allow(client: MlflowClient, name: str, alias: str, version: int, by: str,
           send_event: EventSender | None) -> GuardOutcome:
    previous = recorded_holder(client, name, alias)
    if previous == version:  # a revert putting the holder back, or the same version set again
        return GuardOutcome(name, alias, version, "unchanged", previous=previous)
    _set_tags(client, name, version, {f"guard.{alias}.promoted_at": _utc_now(),
                                       f"guard.{alias}.previous": str(previous) if previous else "none",
                                       f"guard.{alias}.promoted_by": by})
    _record_holder(client, name, alias, version)
    if send_event:
        send_event(PROMOTED_EVENT, event_resource(name, version, alias), {"previous": previous, "promoted_by": by})
    return GuardOutcome(name, alias, version, "allowed", previous=previous)


def guard_promotion(client: MlflowClient, name: str, alias: str, version: int | str,
                    protected: Protected, send_event: EventSender | None = None,
                    by: str = UNKNOWN_USER) -> GuardOutcome | None:
    """Apply the promotion rule to ``alias`` of ``name`` having been set to ``version``.

    None for an alias that is not protected. When the alias no longer points at ``version`` (it
    moved again before this delivery was handled) nothing is done: the later move has its own
    delivery, and the reconcile catches whatever is left.
    """
    threat_models = _threat_models(protected)
    if alias not in threat_models:
        return None
    version = int(version)
    if alias_holder(client, name, alias) != version:
        return GuardOutcome(name, alias, version, "superseded")
    reason = _refusal_of(client, name, version, alias, threat_models[alias])
    if reason is not None:
        return _refuse(client, name, alias, version, reason, by, send_event, threat_models[alias])
    return _allow(client, name, alias, version, by, send_event)


def check_protected_aliases(client: MlflowClient, protected: Protected, revert: bool = False,
                            send_event: EventSender | None = None,
                            names: Iterable[str] | None = None) -> list[GuardOutcome]:
    """The reconcile: every protected alias (of ``names``, default every registered model) on a
    version that fails the rule, reverted when ``revert``; a valid holder is recorded.

    Returns the violations (``refused`` when reverted, else ``violation``); empty when all is well.
    """
    threat_models = _threat_models(protected)
    protected = set(threat_models)
    models = list(names) if names is not None else [m.name for m in client.search_registered_models(max_results=1000)]
    found = []
    for name in models:
        aliases = client.get_registered_model(name).aliases
        for alias in protected - set(aliases):  # removed while the receiver was down
            forget_holder(client, name, alias, protected)
        for alias in sorted(protected & set(aliases)):
            version = int(aliases[alias])
            reason = _refusal_of(client, name, version, alias, threat_models[alias])
            if reason is None:
                if recorded_holder(client, name, alias) != version:
                    _record_holder(client, name, alias, version)
            elif revert:
                found.append(_refuse(client, name, alias, version, f"reconcile: {reason}",
                                     "unknown (found by the reconcile)", send_event, threat_models[alias]))
            else:
                found.append(GuardOutcome(name, alias, version, "violation", reason,
                                          recorded_holder(client, name, alias)))
    return found


def ensure_webhook(client: MlflowClient, url: str, secret: str, name: str = WEBHOOK_NAME) -> str:
    """Register (or update) the guard's webhook for ``model_version_alias.created`` / ``.deleted``; idempotent.

    Returns ``created`` or ``updated``. The secret is always re-set, so a new secret file (or a new
    encryption key on the server) takes effect.
    """
    events = [WebhookEvent.from_str(ALIAS_CREATED), WebhookEvent.from_str(ALIAS_DELETED)]
    token = None
    while True:
        page = client.list_webhooks(max_results=100, page_token=token)
        for hook in page:
            if hook.name == name:
                client.update_webhook(hook.webhook_id, url=url, events=events, secret=secret,
                                      status=WebhookStatus.ACTIVE)
                return "updated"
        token = page.token
        if not token:
            break
    client.create_webhook(name, url, events, description="sdd promotion guard (sdd/registry/guard.py)",
                          secret=secret)
    return "created"


def check_aliases(cfg: RegistryConfig, *, tracking_uri: str | None = None, names: Iterable[str] | None = None,
                  revert: bool | None = None, send_event: EventSender | None = None) -> list[GuardOutcome]:
    """:func:`check_protected_aliases` against the configured store (``sdd models --check``, re-erase).

    ``revert`` defaults to ``guard.revert_on_check``; works on a local SQLite store too.
    """
    revert = cfg.guard.revert_on_check if revert is None else revert
    with client_for(resolve_store(cfg, tracking_uri)) as client:
        return check_protected_aliases(client, cfg.protected_threat_models(), revert, send_event, names)
