"""The ``re-erase`` flow: keep production erasing the active concept set of ``params/concepts.yaml``.

It hashes the active set (:func:`sdd.prompts.concept_set_hash`: the ``concepts_sha256`` an erasure
of that set records) and compares it, and the set's base model, with the ``concepts_sha256`` and
``base_model`` tags of the model version holding the ``production`` alias:

* changed (or nothing in production yet): run :func:`flows.erase.erase_concepts` for the full set,
  which leaves a new version with alias ``candidate`` when its gates pass (promotion stays a human
  decision: ``sdd promote``);
* unchanged: do nothing, and say so in the log and in a Markdown artifact.

First, as the safety net of the promotion guard (:mod:`sdd.registry.guard`), it checks every
protected alias of ``params/registry.yaml`` (:func:`check_protected`): one on a version the
promotion rule refuses (moved while the guard's receiver was down) is reported in the log and a
``protected-aliases`` artifact, moved back when ``guard.revert_on_check`` is true, and fails the
run at its end when ``guard.fail_on_violation`` is true (else a warning).

Deployed in ``prefect.yaml`` with a nightly cron schedule and an event trigger on
``sdd.concepts.updated``, which ``sdd concepts publish`` emits (:mod:`flows.events`). Re-running
for a set whose candidate is waiting for promotion is cheap: every stage of erase-concepts is
cached, so no duplicate version is registered.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.events import emit_event

from flows.erase import RETRY_DELAYS_S, erase_concepts
from flows.params import DistillSettings, EvalSettings, GateSettings, PromptOptions, RedteamSettings
from sdd.config import load_checked_registry_config, load_concept_sets
from sdd.errors import ProtectedAliasViolation
from sdd.prompts import concept_set_hash, normalise_concepts


@task(name="read-production", retries=2, retry_delay_seconds=RETRY_DELAYS_S)
def read_production() -> dict[str, Any] | None:
    """Tags of the model version holding the production alias, or None when there is none
    (:func:`sdd.registry.alias_version`)."""
    from sdd.registry import alias_version

    cfg = load_checked_registry_config()
    row = alias_version(cfg.model_name, cfg.production_alias, cfg)
    if row is None:
        return None
    return {"name": row.name, "version": row.version, "alias": cfg.production_alias,
            "concepts": row.tags.get("concepts"), "concepts_sha256": row.tags.get("concepts_sha256"),
            "base_model": row.tags.get("base_model")}


def _emit(event: str, resource: dict[str, str], payload: dict[str, Any]) -> None:
    emit_event(event, resource=resource, payload=payload)


@task(name="check-protected-aliases", retries=2, retry_delay_seconds=RETRY_DELAYS_S)
def check_protected() -> list[str]:
    """Protected aliases on versions the promotion rule refuses, one line each (reverted when
    ``guard.revert_on_check``; a revert emits ``sdd.promotion.refused``)."""
    from sdd.registry.guard import check_aliases

    return [v.line() for v in check_aliases(load_checked_registry_config(), send_event=_emit)]


def violation_report(lines: list[str]) -> str:
    """The ``protected-aliases`` artifact: what the reconcile found."""
    items = "\n".join(f"- {line}" for line in lines)
    return ("## Protected aliases on versions the promotion rule refuses\n\n"
            f"{items}\n\nMoved while the promotion guard was down? See the README's registry section; "
            "`sdd models --check` shows the same.\n")


def finish(result: dict[str, Any], violations: list[str]) -> dict[str, Any]:
    """The run's result; a failure instead when protected aliases broke the rule and
    ``guard.fail_on_violation`` is true (the re-erase work itself is done either way)."""
    if violations and load_checked_registry_config().guard.fail_on_violation:
        raise ProtectedAliasViolation(f"{len(violations)} protected alias(es) broke the promotion rule: "
                                      f"{'; '.join(violations)}")
    return {**result, "protected_alias_violations": violations}


def why_changed(production: dict[str, Any] | None, wanted_hash: str, base_model: str) -> str | None:
    """Why the active set needs a new erasure, or None when production already erases it."""
    if production is None:
        return "no model version holds the production alias yet"
    if production["base_model"] != base_model:
        return f"base model changed: production has {production['base_model']}, the set wants {base_model}"
    if production["concepts_sha256"] != wanted_hash:
        return (f"concept set changed: production (version {production['version']}) erases "
                f"[{production['concepts']}], hash {str(production['concepts_sha256'])[:12]}")
    return None


@flow(name="re-erase", log_prints=True,
      description="Re-erase when the active concept set differs from what production erases.")
def re_erase(
    concepts_file: str = "params/concepts.yaml",
    reason: str = "manual run",
    distill: DistillSettings = DistillSettings(),  # defaults read from params/*.yaml
    evaluation: EvalSettings = EvalSettings(),
    gates: GateSettings = GateSettings(),
    prompts: PromptOptions = PromptOptions(),
    runs_dir: str = "runs",
    distill_deployment: str | None = None,
    redteam: RedteamSettings = RedteamSettings(),
) -> dict[str, Any]:
    """Compare the active concept set with production; erase it again only if it changed.

    Args:
        concepts_file: The concept sets file (relative to the project folder).
        reason: Why this run started (the schedule, an event, a person); recorded in the artifact.
        distill: SDD settings for a re-erasure (unset fields: params/distill.yaml).
        evaluation: Evaluation settings (unset fields: params/eval.yaml).
        gates: Gate thresholds (unset fields: params/gates.yaml).
        prompts: Where evaluation prompts come from.
        runs_dir: Root of the run folders.
        distill_deployment: Deployment that runs the distillation (e.g. "distill/distill-gpu"); none = here.
        redteam: Attacks and budgets of the red-team stage (unset fields: params/redteam.yaml).
    """
    logger = get_run_logger()
    violations = check_protected()
    if violations:
        for line in violations:
            logger.error("protected alias: %s", line)
        create_markdown_artifact(violation_report(violations), key="protected-aliases",
                                 description="re-erase: protected alias violations")
    sets = load_concept_sets(concepts_file)
    active = sets.active_set
    names = normalise_concepts(active.concepts)
    wanted = concept_set_hash(active.base_model, names)
    production = read_production()
    why = why_changed(production, wanted, active.base_model)
    header = (f"## Re-erase check: set `{sets.active}` ({', '.join(names)}) on `{active.base_model}`\n\n"
              f"Started by: {reason}. Set hash `{wanted[:12]}`.\n\n")
    if why is None:
        message = (f"Nothing to do: production ({production['name']} version {production['version']}) "
                   f"already erases this set.")
        logger.info(message)
        create_markdown_artifact(header + message, key="re-erase", description="re-erase: no change")
        return finish({"action": "none", "set": sets.active, "concepts_sha256": wanted, "production": production},
                      violations)

    logger.info("re-erasing set %s: %s", sets.active, why)
    result = erase_concepts(concepts=names, base_model=active.base_model, distill=distill,
                            evaluation=evaluation, gates=gates, prompts=prompts, runs_dir=runs_dir,
                            distill_deployment=distill_deployment, redteam=redteam)
    reg = result["registration"]
    outcome = (f"Registered {reg['name']} version {reg['version']} with alias `{reg['alias']}`; promote it "
               f"with `sdd promote {reg['name']} {reg['version']}`." if reg["alias"] else
               f"Registered {reg['name']} version {reg['version']} without an alias: a gate of production's "
               f"threat model failed (verdict {result['verdict']}).")
    create_markdown_artifact(header + f"Re-erased: {why}.\n\n{outcome}", key="re-erase",
                             description="re-erase: new erasure")
    return finish({"action": "erased", "set": sets.active, "concepts_sha256": wanted, "production": production,
                   "reason": why, "erasure": result}, violations)
