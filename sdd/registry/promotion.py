"""Promote a model version (move an alias), list the registry, load a registered model.

A version whose gates failed is refused unless ``force=True`` with a non-empty ``reason``; the
override is recorded on the version (tags ``forced_by``, ``force_reason``, ``forced_at``,
``forced_alias``) *before* the alias moves. **Races**: the alias is moved by one server call
(``set_registered_model_alias``), a single row keyed by (model, alias) -- so at any instant exactly
one version holds an alias, and of two racing promotions the last write wins. A transient write
conflict is retried. Afterwards :func:`promote` re-reads the registry, checks that exactly one
version holds the alias and that it is ours; if a concurrent promotion moved it in between, it
raises :class:`~sdd.errors.ConcurrentPromotionError` naming the winner.
"""

from __future__ import annotations

import datetime as dt
import getpass
import sys
import time
from dataclasses import dataclass, field

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from sdd.config import RegistryConfig
from sdd.errors import ConcurrentPromotionError, PromotionRefused, RegistryInputError, RegistryUnavailable
from sdd.provenance import scrub
from sdd.registry.inputs import GATES_PASSED
from sdd.registry.store import client_for, mlflow_at, resolve_store


@dataclass
class Promotion:
    name: str
    version: int
    alias: str
    previous: int | None  # the version that held the alias before, if any
    forced: bool


@dataclass
class VersionRow:
    name: str
    version: int
    concepts: str
    gates: str
    verdict: str
    aliases: list[str]
    run_id: str | None
    created: str
    forced: bool
    tags: dict[str, str] = field(default_factory=dict)  # every model-version tag (concepts_sha256, ...)


#: The model-version tags `sdd promote --force` writes; with them a failed version may hold that alias
#: of that registered model (a copy of the version into another model keeps the tags, not the force).
FORCE_TAGS = ("forced_by", "force_reason", "forced_at", "forced_alias", "forced_model")


def gate_failure(tags: dict[str, str], threat_model: str | None = None) -> str | None:
    """Why a version's gates (from its tags) keep it from an alias bound to ``threat_model``, or None.

    Without a threat model every gate counts, every attack of the red team included. With one, the
    evaluation's own gates (tag ``eval_gates``: concept rates, quality) and that threat model's
    verdict (tag ``threat_model.<name>``) count: a model served behind a prompt box need not resist
    an attacker who holds its weights. A threat model not measured (no red team, or one of its
    attacks did not run) is decided like any unmeasured gate: by the whole verdict, which
    ``fail_on_unmeasured`` in params/gates.yaml made pass or fail.
    """
    if threat_model is None:
        if tags.get("gates") == GATES_PASSED:
            return None
        return tags.get("gates_failed") or tags.get("gates", "no gate verdict")
    if tags.get("eval_gates", tags.get("gates")) != GATES_PASSED:
        return f"evaluation gates: {tags.get('gates_failed') or 'no gate verdict'}"
    verdict = tags.get(f"threat_model.{threat_model}")
    if verdict == "fail":
        return f"threat model '{threat_model}' failed"
    if verdict != "pass" and tags.get("gates") != GATES_PASSED:  # unmeasured: as every gate's fail_on_unmeasured says
        return f"threat model '{threat_model}' {verdict or 'not measured'} and gates {tags.get('gates', 'none')}"
    return None


def promotion_refusal(tags: dict[str, str], alias: str, threat_model: str | None = None,
                      name: str | None = None) -> str | None:
    """The promotion rule: why a version with ``tags`` may not hold ``alias``, or None when it may.

    It may when its gates passed for the alias's ``threat_model`` (:func:`gate_failure`), or when
    it was forced for this very alias of this registered model ``name`` with a reason (the tags
    :func:`promote` writes with ``force=True``). The promotion guard applies this rule to moves
    made elsewhere (the MLflow UI, the REST API).
    """
    failure = gate_failure(tags, threat_model)
    forced = (tags.get("forced_alias") == alias and (tags.get("forced_by") or "").strip()
              and (tags.get("force_reason") or "").strip()
              and (name is None or tags.get("forced_model", name) == name))
    if failure is None or forced:
        return None
    what = f"its gates for threat model '{threat_model}'" if threat_model else "its gates"
    return f"did not pass {what} ({failure}) and was not forced for '{alias}' with a reason"


def alias_refusals(tags: dict[str, str], cfg: RegistryConfig, name: str | None = None) -> dict[str, str | None]:
    """For the candidate, protected and bound aliases: why a version with ``tags`` may not hold each
    (None: it may), each by its own threat model."""
    aliases = dict.fromkeys([cfg.candidate_alias, *cfg.protected_aliases, *cfg.alias_threat_models])
    return {alias: promotion_refusal(tags, alias, cfg.threat_model_of(alias), name) for alias in aliases}


def _get_version(client: MlflowClient, name: str, version: int | str):
    try:
        return client.get_model_version(name, str(version))
    except MlflowException:
        raise RegistryInputError(f"model '{name}' has no version {version}; see `sdd models {name}`") from None


def alias_holder(client: MlflowClient, name: str, alias: str) -> int | None:
    """The version number ``alias`` points at, with an open client (None: no such alias or model)."""
    try:
        return int(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def _versions(client: MlflowClient, name: str) -> list:
    escaped = name.replace("'", "\\'")
    return list(client.search_model_versions(f"name = '{escaped}'", max_results=10000))


def _aliases_by_version(client: MlflowClient, name: str) -> dict[int, list[str]]:
    """Aliases of every version, from the registered model (version searches omit them)."""
    by_version: dict[int, list[str]] = {}
    for alias, version in client.get_registered_model(name).aliases.items():
        by_version.setdefault(int(version), []).append(alias)
    return {v: sorted(a) for v, a in by_version.items()}


def _set_alias(client: MlflowClient, name: str, alias: str, version: int, attempts: int = 3) -> None:
    """One atomic server call; retried when a concurrent first insert of the alias row collides."""
    for attempt in range(attempts):
        try:
            client.set_registered_model_alias(name, alias, str(version))
            return
        except MlflowException:
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))


def _iso(millis: int) -> str:
    return dt.datetime.fromtimestamp(millis / 1000, dt.UTC).isoformat(timespec="seconds")


def _utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def promote(name: str, version: int | str, alias: str = "production", force: bool = False,
            reason: str | None = None, *, cfg: RegistryConfig | None = None,
            tracking_uri: str | None = None) -> Promotion:
    """Point ``alias`` at ``version`` of model ``name``; refuses failed gates unless forced with a reason."""
    with client_for(resolve_store(cfg, tracking_uri)) as client:
        mv = _get_version(client, name, version)
        threat_model = (cfg or RegistryConfig()).threat_model_of(alias)
        why = gate_failure(mv.tags, threat_model)
        if force and not (reason or "").strip():
            raise PromotionRefused("--force needs a non-empty --reason; the override is recorded on "
                                   "the version")
        if why is not None and not force:
            gates = f"its gates for threat model '{threat_model}'" if threat_model else "its gates"
            raise PromotionRefused(f"{name} version {mv.version} did not pass {gates} ({why}); "
                                   f"refusing to set '{alias}' (override with --force --reason '...')")
        if force:
            for key, value in {"forced_by": getpass.getuser(), "force_reason": reason.strip(),
                               "forced_at": _utc_now(), "forced_alias": alias, "forced_model": name}.items():
                client.set_model_version_tag(name, mv.version, key, scrub(value))
        previous = alias_holder(client, name, alias)
        _set_alias(client, name, alias, int(mv.version))
        client.set_model_version_tag(name, mv.version, f"promoted.{alias}.at", _utc_now())
        holders = [v for v, aliases in _aliases_by_version(client, name).items() if alias in aliases]
        if len(holders) != 1:
            raise RegistryUnavailable(f"alias '{alias}' of {name} is held by {len(holders)} versions {holders}")
        if holders[0] != int(mv.version):
            raise ConcurrentPromotionError(f"a concurrent promotion moved '{alias}' of {name} to version "
                                           f"{holders[0]} right after ours (version {mv.version}); re-run")
    return Promotion(name, int(mv.version), alias, previous, force)


def list_models(cfg: RegistryConfig | None = None, *, tracking_uri: str | None = None) -> list[str]:
    with client_for(resolve_store(cfg, tracking_uri)) as client:
        return sorted(m.name for m in client.search_registered_models(max_results=1000))


def list_versions(name: str, cfg: RegistryConfig | None = None, *,
                  tracking_uri: str | None = None) -> list[VersionRow]:
    """All versions of ``name``, newest first: concepts, gate verdict, aliases, run."""
    with client_for(resolve_store(cfg, tracking_uri)) as client:
        versions, aliases = _versions(client, name), _aliases_by_version(client, name)
    rows = [_row(name, v, aliases.get(int(v.version), [])) for v in versions]
    return sorted(rows, key=lambda r: r.version, reverse=True)


def _row(name: str, v, aliases: list[str]) -> VersionRow:
    return VersionRow(name, int(v.version), v.tags.get("concepts", ""), v.tags.get("gates", "unknown"),
                      v.tags.get("gate_verdict", "none"), aliases, v.run_id, _iso(v.creation_timestamp),
                      "forced_by" in v.tags, dict(v.tags))


def alias_version(name: str, alias: str, cfg: RegistryConfig | None = None, *,
                  tracking_uri: str | None = None) -> VersionRow | None:
    """The version of ``name`` that ``alias`` points at (with all its tags), or None.

    None when the model is not registered yet or has no such alias; any other registry failure
    (server unreachable, bad name) is a one-line :class:`~sdd.errors.RegistryError`.
    """
    with client_for(resolve_store(cfg, tracking_uri)) as client:
        try:
            aliases = client.get_registered_model(name).aliases
        except MlflowException as e:
            if e.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
        if alias not in aliases:
            return None
        version = client.get_model_version(name, str(aliases[alias]))
        return _row(name, version, sorted(a for a, v in aliases.items() if int(v) == int(version.version)))


def load_model(name: str, alias: str | None = None, cfg: RegistryConfig | None = None, *,
               tracking_uri: str | None = None):
    """``mlflow.pyfunc.load_model("models:/<name>@<alias>")`` against the configured store.

    MLflow puts the model's copy of ``sdd`` (its ``code_paths``, there for environments without
    sdd) first on ``sys.path`` for good. This process already runs sdd, so the path is restored:
    otherwise child processes (dask or multiprocessing workers inherit ``sys.path``) would import
    that copy, which has no toy assets, instead of the installed package.
    """
    cfg = cfg or RegistryConfig()
    saved_path = list(sys.path)
    try:
        with mlflow_at(resolve_store(cfg, tracking_uri)):
            return mlflow.pyfunc.load_model(f"models:/{name}@{alias or cfg.production_alias}")
    finally:
        sys.path[:] = saved_path
