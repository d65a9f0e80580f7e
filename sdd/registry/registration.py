"""Register an erasure as a model version, once per erasure and evaluation, gated by its verdict.

A new version of the registered model (default ``sdd-erased``) is tagged with its provenance
(concepts, base model, gates, a verdict per threat model, git, DVC; ``"none"`` where there is no git
or DVC). **Gate policy**: the alias ``candidate`` is set only when the evaluation's own gates passed
and so did the threat model that production is bound to (``params/registry.yaml``
``alias_threat_models``: ``api`` by default, the attacks a model behind a prompt box faces); every
other version is registered for the record with no alias. ``gates`` says whether *every* gate passed.
**Idempotent**: :func:`register` tags the version with a :func:`registration_key` and returns the
existing version when the same erasure and evaluation are registered again -- finishing it first
if the tracking server was lost between creating it and tagging its run (the run's
``registered_model`` tag is written last, so its absence marks an unfinished registration). **Races**: on a local
SQLite store concurrent registrations queue on a file lock next to the database; against a
tracking server, racing duplicates each create a version, see the lowest-numbered version with
their key and all but its creator delete theirs -- one version per key either way. **Description**:
each new version's MLflow description is a short Markdown verdict (:func:`version_description`),
built from the evaluation as registered -- the flows register after the red team is folded in.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from sdd.config import RegistryConfig
from sdd.errors import RegistryUnavailable
from sdd.layout import METRICS_FILE, PATCH_FILE
from sdd.provenance import scrub
from sdd.registry.inputs import (
    Erasure,
    Evaluation,
    GateSummary,
    read_erasure,
    read_evaluation,
    read_gates,
)
from sdd.registry.promotion import gate_failure
from sdd.registry.store import SERVER_SIDE_ERRORS, client_for, mlflow_at, resolve_store, store_lock
from sdd.registry.tracking import ErasureRun, log_erasure, provenance_tags


@dataclass
class Registration:
    run_id: str
    model_uri: str
    name: str
    version: int
    alias: str | None  # the candidate alias, or None when a gate of production's threat model failed
    gates: GateSummary
    reused: bool = False  # the same erasure and evaluation were already registered as this version


#: Model-version tag holding :func:`registration_key`; one version per key and model name.
REGISTRATION_KEY_TAG = "registration_key"


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def registration_key(erasure: Erasure, evaluation: Evaluation | None) -> str:
    """What makes two registrations the same: concept set, base model, settings, weights, evaluation.

    sha256 over the erasure's ``concepts_sha256``, base model (id, revision, UNet hash), distill config
    and step count, the bytes of ``patch.safetensors`` (the trained weights) and of the evaluation's
    ``metrics.json`` (``none`` without one). The same erasure folder with the same evaluation folder
    always gives the same key; another evaluation, more steps or other weights give another.
    """
    m = erasure.manifest
    parts = {"concepts_sha256": m.get("concepts_sha256"), "base_model": m.get("base_model"),
             "config": m.get("config"), "steps": m.get("steps"),
             "patch_sha256": _file_sha256(erasure.out_dir / PATCH_FILE),
             "metrics_sha256": _file_sha256(evaluation.eval_dir / METRICS_FILE) if evaluation else "none"}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def _description_rates(metrics: dict[str, Any]) -> list[str]:
    lines = ["| concept | base | erased | reduction |", "|---|---:|---:|---:|"]
    for concept, m in (metrics.get("concepts") or {}).items():
        erased = m["erased"]
        lines.append(f"| {concept} | {_pct(m['base']['rate'])} | {_pct(erased['rate'])} "
                     f"({erased['count']}/{erased['n']}) | {_pct(m.get('relative_reduction'))} |")
    return lines


def _description_quality(metrics: dict[str, Any]) -> str:
    quality = metrics.get("quality") or {}
    parts = []
    drop = (quality.get("correctness") or {}).get("drop_points")
    if drop is not None:
        parts.append(f"correctness drop {drop:.1f} points")
    if quality.get("fid") is not None:
        parts.append(f"FID {quality['fid']:.3g} ({quality.get('fid_features')})")
    clip = (quality.get("clip_score") or {}).get("relative_drop")
    if clip is not None:
        parts.append(f"CLIP-score drop {_pct(clip)}")
    return "; ".join(parts) or "not measured"


def _description_robustness(metrics: dict[str, Any]) -> str:
    redteam = metrics.get("redteam") or {}
    concepts = redteam.get("concepts") or {}
    if not concepts:
        return "not red-teamed"
    rates = ", ".join(f"{c} {_pct(m['union']['rate'])} of {m['effective_prompts']} prompts"
                      for c, m in concepts.items())
    return f"{redteam.get('verdict', 'none')}; union attack success {rates} ({', '.join(redteam.get('attacks', []))})"


def version_description(concepts: Sequence[str], base_model: str, metrics: dict[str, Any] | None,
                        run_folder: Path | str | None = None) -> str:
    """The Markdown shown on a model version in the MLflow UI: what it erases, how well, the verdicts.

    Short by design (the full report is the run's ``evaluation/report.md``): concepts, base and
    erased presence rates, the quality drop, the red team's robustness, every failed gate, the folder.
    """
    head = f"**Erases** {', '.join(concepts) or '(none)'} from `{base_model}`."
    if not metrics:
        return f"{head}\n\n**Gates**: not evaluated (no candidate alias)."
    gates = read_gates(metrics)
    verdict = "**PASS**" if gates.passed else "**FAIL**"
    lines = [head, "", *_description_rates(metrics), "",
             f"**Quality** (benign prompts): {_description_quality(metrics)}.",
             f"**Robustness** (red team): {_description_robustness(metrics)}.",
             f"**Gates**: {verdict}" + (f" ({len(gates.unmeasured)} unmeasured)" if gates.unmeasured else "")]
    if gates.threat_models:
        lines.append("**Per threat model** (evaluation gates: " + ("pass" if gates.eval_passed else "fail") + "): "
                     + ", ".join(f"{name} {verdict}" for name, verdict in gates.threat_models.items()) + ".")
    lines += [f"- failed: {reason}" for reason in gates.failed]
    if run_folder is not None:
        lines += ["", f"Run folder: `{run_folder}`"]
    return "\n".join(lines)


def _describe(run: ErasureRun) -> str:
    m = run.erasure.manifest
    metrics = run.evaluation.metrics if run.evaluation else None
    return version_description(run.erasure.concepts, (m.get("base_model") or {}).get("model") or "unknown",
                               metrics, run.erasure.out_dir.resolve().parent)


def _versions_with_key(client: MlflowClient, name: str, key: str) -> list:
    escaped = name.replace("'", "\\'")
    try:
        found = client.search_model_versions(f"name = '{escaped}' and tags.{REGISTRATION_KEY_TAG} = '{key}'",
                                             max_results=1000)
    except MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":
            return []
        raise
    return sorted(found, key=lambda v: int(v.version))


def _reused(mv, name: str, cfg: RegistryConfig) -> Registration:
    gates = GateSummary(mv.tags.get("gate_verdict", "none"),
                        [] if mv.tags.get("gates_failed", "none") == "none" else mv.tags["gates_failed"].split("; "))
    passed = gate_failure(mv.tags, cfg.threat_model_of(cfg.candidate_alias)) is None
    return Registration(mv.run_id, mv.source, name, int(mv.version), cfg.candidate_alias if passed else None,
                        gates, reused=True)


def _ensure_registered_model(client: MlflowClient, name: str) -> None:
    try:
        client.create_registered_model(name, description="Diffusion models with concepts erased by SDD.")
    except MlflowException as e:
        if e.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise


def _link_logged_model(client: MlflowClient, model_id: str, name: str, version: int) -> None:
    """Record the version on the logged model too (as ``mlflow.register_model`` does), for the UI."""
    key = "mlflow.modelVersions"
    try:
        existing = json.loads(client.get_logged_model(model_id).tags.get(key) or "[]")
        existing.append({"name": name, "version": version})
        client.set_logged_model_tags(model_id, {key: json.dumps(existing)})
    except MlflowException:
        pass  # cosmetic only


def _raise_if_server_lost(e: MlflowException, tracking_uri: str, what: str) -> None:
    """Raise a one-line :class:`RegistryUnavailable` saying ``what`` the lost server left, if it failed."""
    if e.error_code in SERVER_SIDE_ERRORS:
        cause = (str(e.message).strip().splitlines() or [type(e).__name__])[0]
        raise RegistryUnavailable(f"MLflow tracking server {tracking_uri} lost mid-registration ({cause}); "
                                  f"{what}") from e


def register_erasure(run: ErasureRun, cfg: RegistryConfig | None = None, *, name: str | None = None,
                     tracking_uri: str | None = None, key: str | None = None) -> Registration:
    """Register the run's model as a new version; alias ``candidate`` only if its gates passed for the
    candidate's threat model (:meth:`~sdd.config.RegistryConfig.threat_model_of`: production's).

    With ``key`` (see :func:`registration_key`) the version is tagged with it, and if another version
    of ``name`` carries the same key, the lowest-numbered one is the registration: a racing duplicate
    deletes the version it just created (before any alias is set) and returns the first one. Every
    racer sees the lowest version once its own exists, so exactly one version per key survives.
    """
    cfg = cfg or RegistryConfig()
    name = name or cfg.model_name
    gates = run.gates
    tags = {**provenance_tags(run.erasure, gates), "run_id": run.run_id}
    if key:
        tags[REGISTRATION_KEY_TAG] = key
    # The registry resolves ``models:/m-...`` through the global tracking URI: hence mlflow_at.
    store = resolve_store(cfg, tracking_uri)
    with mlflow_at(store) as client:
        _ensure_registered_model(client, name)
        try:
            mv = client.create_model_version(name, source=run.model_uri, run_id=run.run_id, tags=tags,
                                             model_id=run.model_id)
        except MlflowException as e:
            _raise_if_server_lost(e, store.tracking_uri, f"no model version was created (run {run.run_id} is "
                                  "logged); rerun once the server is back")
            raise
        try:
            return _finish_registration(client, run, mv, name, key, cfg)
        except MlflowException as e:
            _raise_if_server_lost(e, store.tracking_uri, f"version {mv.version} of {name} exists without its "
                                  "alias and run tag; rerun with the same folders once the server is back to finish it")
            raise


def _finish_registration(client: MlflowClient, run: ErasureRun, mv, name: str, key: str | None,
                         cfg: RegistryConfig) -> Registration:
    """After ``create_model_version``: keep one version per key, then alias and run tag (the tag last)."""
    gates = run.gates
    version = int(mv.version)
    same = _versions_with_key(client, name, key) if key else []
    first = same[0] if same else mv
    if int(first.version) != version:  # lost a race with an identical registration
        client.delete_model_version(name, str(version))
        client.set_tag(run.run_id, "registered_model", f"{name}/{first.version}")
        client.set_tag(run.run_id, "duplicate_of", f"{name}/{first.version}")
        return _reused(first, name, cfg)
    _link_logged_model(client, run.model_id, name, version)
    client.update_model_version(name, str(version), description=scrub(_describe(run), limit=5000))
    alias = None
    if gate_failure(mv.tags, cfg.threat_model_of(cfg.candidate_alias)) is None:  # the rule promotions apply
        client.set_registered_model_alias(name, cfg.candidate_alias, str(version))
        alias = cfg.candidate_alias
    client.set_tag(run.run_id, "registered_model", f"{name}/{version}")  # last: marks it finished
    return Registration(run.run_id, run.model_uri, name, version, alias, gates)


def _finish_if_interrupted(client: MlflowClient, found: Registration) -> None:
    """Set what a registration interrupted after ``create_model_version`` left unset: alias, run tag.

    The alias ``candidate`` goes on it only if its gates passed and no newer version holds the alias
    (a later registration already moved on).
    """
    if "registered_model" in client.get_run(found.run_id).data.tags:
        return
    if found.alias:
        holder = client.get_registered_model(found.name).aliases.get(found.alias)
        if holder is None or int(holder) < found.version:
            client.set_registered_model_alias(found.name, found.alias, str(found.version))
    client.set_tag(found.run_id, "registered_model", f"{found.name}/{found.version}")


def find_registration(name: str, key: str, cfg: RegistryConfig | None = None, *,
                      tracking_uri: str | None = None) -> Registration | None:
    """The version of ``name`` registered with :func:`registration_key` ``key``, or None."""
    cfg = cfg or RegistryConfig()
    with client_for(resolve_store(cfg, tracking_uri)) as client:
        found = _versions_with_key(client, name, key)
    return _reused(found[0], name, cfg) if found else None


def register(run_dir: Path | str, eval_dir: Path | str | None, cfg: RegistryConfig | None = None, *,
             name: str | None = None, tracking_uri: str | None = None) -> Registration:
    """:func:`log_erasure` then :func:`register_erasure` (what ``sdd register`` does); idempotent.

    If this erasure with this evaluation (:func:`registration_key`) is already a version of ``name``,
    that version is returned (``reused=True``) and nothing is logged. Concurrent calls for the same
    folders leave one version: on a local SQLite store they queue on a file lock (:func:`store_lock`)
    and the later ones find the first one's version; against a tracking server, each may log a run,
    but :func:`register_erasure` keeps only the lowest-numbered version of the key.
    """
    cfg = cfg or RegistryConfig()
    name = name or cfg.model_name
    store = resolve_store(cfg, tracking_uri)
    erasure = read_erasure(run_dir)
    key = registration_key(erasure, read_evaluation(eval_dir) if eval_dir is not None else None)
    with store_lock(store):
        existing = find_registration(name, key, cfg, tracking_uri=tracking_uri)
        if existing is not None:
            with client_for(store) as client:
                _finish_if_interrupted(client, existing)
            return existing
        run = log_erasure(run_dir, eval_dir, cfg, tracking_uri=tracking_uri)
        return register_erasure(run, cfg, name=name, tracking_uri=tracking_uri, key=key)
