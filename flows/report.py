"""The ``erasure-report`` artifact of an ``erase-concepts`` run: rates, attack success rates, gates,
links to the MLflow run and model version, lineage and the stages' states."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from flows.plan import ErasurePlan
from sdd.config import load_registry_config
from sdd.layout import REPORT_FILE


def mlflow_ui_url() -> str | None:
    """The MLflow server's base URL (without credentials), or None for a local SQLite store."""
    from sdd.registry import resolve_store

    uri = resolve_store(load_registry_config()).tracking_uri
    if not uri.startswith(("http://", "https://")):
        return None
    parts = urlsplit(uri)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}{parts.path.rstrip('/')}"


def _fmt(value: Any) -> str:
    return "—" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def render_report(plan: ErasurePlan, evaluation: dict, registration: dict, stages: dict[str, str],
                  mlflow_url: str | None) -> str:
    verdict = evaluation["verdict"].upper()
    lines = [f"## Erasure of {', '.join(plan.concepts)} from `{plan.base_model}`: **{verdict}**", "",
             "| concept | base rate | erased rate |", "|---|---:|---:|"]
    lines += [f"| {c} | {_fmt(r['base'])} | {_fmt(r['erased'])} |" for c, r in evaluation["concepts"].items()]
    attacks = sorted({a for r in evaluation.get("redteam", {}).values() for a in r} - {"effective_prompts"})
    if attacks:
        lines += ["", "Attack success rates (red team, over the effective prompts):", "",
                  "| concept | effective prompts | " + " | ".join(attacks) + " |",
                  "|---|---:|" + "---:|" * len(attacks)]
        lines += [f"| {c} | {r['effective_prompts']} | " + " | ".join(_fmt(r.get(a)) for a in attacks) + " |"
                  for c, r in evaluation["redteam"].items()]
    if evaluation.get("threat_models"):
        lines += ["", "Threat models (`params/gates.yaml`): "
                  + ", ".join(f"{name} **{verdict}**" for name, verdict in evaluation["threat_models"].items())]
    lines += ["", "| gate | concept | value | threshold | result |", "|---|---|---:|---:|---|"]
    lines += [f"| {c['gate']} | {c['concept'] or ''} | {_fmt(c['value'])} | "
              f"{c['bound']} {_fmt(c['threshold'])} | {c['status']} |" for c in evaluation["checks"]]
    run_id, name, version = registration["run_id"], registration["name"], registration["version"]
    if mlflow_url:
        run = f"[{run_id[:12]}]({mlflow_url}/#/runs/{run_id})"
        model = f"[{name} version {version}]({mlflow_url}/#/models/{name}/versions/{version})"
    else:
        run, model = f"`runs:/{run_id}`", f"`models:/{name}/{version}`"
    alias = (f"alias `{registration['alias']}`" if registration["alias"]
             else "no alias (a gate of production's threat model failed)")
    lineage = registration.get("lineage") or {}
    prompt_sha = (evaluation.get("prompt_set") or {}).get("sha256")
    lines += ["", f"**MLflow**: run {run} · model {model} · {alias}", "",
              f"**Lineage**: git `{lineage.get('git_commit', 'none')}` (dirty: {lineage.get('git_dirty', 'none')})"
              f" · params/concepts.yaml md5 `{lineage.get('dvc_concepts', 'none')}`"
              f" · prompt set sha256 `{prompt_sha or 'none'}` · dvc.lock commit `{lineage.get('dvc_rev', 'none')}`", "",
              f"Run folder: `{plan.run_dir}` · report: `{Path(evaluation['dir']) / REPORT_FILE}`", "",
              "Stages: " + ", ".join(f"{stage} {state.lower()}" for stage, state in stages.items())]
    return "\n".join(lines)

