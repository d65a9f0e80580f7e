"""Promotion from the Prefect UI (``promote``) and the check after any promotion (``promoted-check``).

* :func:`promote_version` (deployment ``promote``): a typed form -- model, version, alias, force,
  reason -- for people who promote from the Prefect UI. It is :func:`sdd.registry.promote`, the rule
  of ``sdd promote``: a version that failed its gates is refused unless forced with a reason, with
  the same messages; a refusal fails the run.
* :func:`promoted_check` (deployment ``promoted-check``): started by the automation of its event
  trigger in ``prefect.yaml`` on ``sdd.model.promoted`` (emitted when a protected alias such as
  ``production`` is set on a version; resource ``mlflow.model-version.<name>.<version>`` with labels
  ``sdd.model``, ``sdd.version``, ``sdd.alias``). It runs :func:`sdd.registry.check.check_promoted`:
  load ``models:/<name>@<alias>`` through pyfunc, redraw a seeded sample of the version's evaluation
  (and rerun the red team unless ``check.redteam`` is off), compare with the recorded metrics. It
  publishes the comparison as the Markdown artifact ``promoted-check`` and fails when a recorded
  value lies outside its interval, naming it.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import model_validator

from flows.erase import RETRY_DELAYS_S, _not_a_user_error
from flows.params import EvalSettings, GateSettings, RedteamSettings, deep_merge
from sdd.config import PostPromotionCheckConfig, load_checked_registry_config
from sdd.errors import SddError


class PostPromotionCheckFailed(SddError):
    """The served model does not behave as its version's recorded evaluation."""


class CheckSettings(PostPromotionCheckConfig):
    """What the check redraws; what you leave out comes from params/registry.yaml post_promotion_check."""

    @model_validator(mode="before")
    @classmethod
    def _file_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        return deep_merge(load_checked_registry_config().post_promotion_check.model_dump(mode="json"), data)


# --- promote ------------------------------------------------------------------------------------


@flow(name="promote", log_prints=True,
      description="Point an alias (default: production) at a model version; failed gates need force + reason.")
def promote_version(model: str, version: int, alias: str = "production", force: bool = False,
                    reason: str | None = None) -> dict[str, Any]:
    """Move ``alias`` of registered model ``model`` to ``version``, by the rule of ``sdd promote``.

    Args:
        model: Registered model name (params/registry.yaml model_name, e.g. sdd-erased).
        version: Model version to promote.
        alias: Alias to move to the version.
        force: Promote even though the version failed its gates (needs a reason; recorded).
        reason: Why (required with force; recorded on the version).
    """
    from sdd.registry import promote

    done = promote(model, version, alias, force=force, reason=reason, cfg=load_checked_registry_config())
    before = f" (was version {done.previous})" if done.previous is not None else ""
    forced = f" [forced: {reason.strip()}]" if done.forced and reason else ""
    message = f"{done.name}@{done.alias} -> version {done.version}{before}{forced}"
    get_run_logger().info(message)
    create_markdown_artifact(f"## Promotion\n\n`{message}`", key="promotion", description=message)
    return {"name": done.name, "version": done.version, "alias": done.alias, "previous": done.previous,
            "forced": done.forced}


# --- promoted-check -----------------------------------------------------------------------------


@task(name="check-promoted", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=RETRY_DELAYS_S[:1],
      retry_condition_fn=_not_a_user_error)
def check_stage(name: str, version: int, alias: str, evaluation: EvalSettings, redteam: RedteamSettings | None,
                gates: GateSettings, check: CheckSettings):
    """:func:`sdd.registry.check.check_promoted` with the flow's settings."""
    from sdd.registry.check import check_promoted

    return check_promoted(name, version, alias, load_checked_registry_config(), evaluation=evaluation, redteam=redteam,
                          robustness=gates.robustness, check=check, log=get_run_logger().info)


@flow(name="promoted-check", log_prints=True,
      description="After a promotion: redraw a sample of the version's evaluation with the served model, compare.")
def promoted_check(
    name: str,
    version: int,
    alias: str = "production",
    reason: str = "manual run",
    check: CheckSettings = CheckSettings(),  # defaults read from params/registry.yaml
    evaluation: EvalSettings = EvalSettings(),
    redteam: RedteamSettings | None = None,
    gates: GateSettings = GateSettings(),
) -> dict[str, Any]:
    """Check that ``models:/<name>@<alias>`` (version ``version``) behaves as its recorded metrics.

    Args:
        name: Registered model name.
        version: The version the alias was set on.
        alias: The alias that moved (what consumers load).
        reason: Why this run started (the event, a person); recorded in the artifact.
        check: Sample size, seed, confidence, whether to rerun the red team (unset: params/registry.yaml).
        evaluation: The judge (unset fields: params/eval.yaml); must be the version's judge.
        redteam: Attacks and budgets of a rerun red team; null = the ones the version was red-teamed with.
        gates: The robustness gates of a rerun red team (unset fields: params/gates.yaml).
    """
    from sdd.registry.check import render_check

    logger = get_run_logger()
    logger.info("checking %s@%s (version %s): %s", name, alias, version, reason)
    result = check_stage(name, version, alias, evaluation, redteam, gates, check)
    markdown = render_check(result) + f"\n\nStarted by: {reason}."
    verdict = "pass" if result.passed else "fail"
    create_markdown_artifact(markdown, key="promoted-check",
                             description=f"post-promotion check of {name}@{alias} v{version}: {verdict}")
    if not result.passed:
        why = "; ".join(result.mismatches) or "nothing recorded to compare with"
        raise PostPromotionCheckFailed(f"{name}@{alias} (version {version}) does not match its recorded "
                                       f"evaluation: {why}")
    logger.info("%s@%s (version %s) matches its recorded evaluation", name, alias, version)
    return {"name": name, "version": version, "alias": alias, "passed": True,
            "comparisons": [c.reason for c in result.comparisons]}
