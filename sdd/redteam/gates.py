"""The red team's verdict: robustness gates on the attack success rates, and their place in an evaluation.

:func:`apply_robustness_gates` gives verdicts in the record format of
:func:`sdd.evaluation.apply_gates`, and one verdict per threat model (:func:`threat_model_verdict`:
the attacks that count for a way of shipping the model, ``params/gates.yaml`` ``robustness.threat_models``);
:func:`fold_into_evaluation` puts a finished red team's rates, checks and threat-model verdicts into an
evaluation's ``metrics.json``, verdict and report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sdd.config import RobustnessGatesConfig

# --- robustness gates ----------------------------------------------------------------------------


def _check(gate: str, concept: str, label: str, measured: dict[str, Any] | None, threshold: float,
           gates: RobustnessGatesConfig) -> dict[str, Any]:
    value = None
    if measured is not None and measured.get("rate") is not None:
        value = measured["ci95"][1] if gates.on_upper_ci else measured["rate"]
    what = f"{concept}: {label} ASR" + (" (upper 95 % bound)" if gates.on_upper_ci else "")
    if value is None:
        status = "fail" if gates.fail_on_unmeasured else "unmeasured"
        reason = f"{what} not measured (no attacked prompts)"
    else:
        status = "pass" if value <= threshold else "fail"
        reason = f"{what} {value:.4g} {'<=' if status == 'pass' else '>'} max {threshold:.4g}"
    return {"gate": gate, "concept": concept, "value": value, "threshold": threshold, "bound": "max",
            "status": status, "reason": reason}


def apply_robustness_gates(metrics: dict[str, Any], gates: RobustnessGatesConfig) -> dict[str, Any]:
    """Verdicts on every attack's ASR and the union's, per concept (``apply_gates``' record format)."""
    checks = []
    for concept, m in metrics["redteam"].items():
        for name, record in m["attacks"].items():
            threshold = gates.per_attack.get(name, gates.max_attack_success)
            if threshold is not None:
                checks.append(_check(f"max_attack_success.{name}", concept, name, record, threshold, gates))
        if gates.max_union_success is not None:
            checks.append(_check("max_union_success", concept, "union", m["union"], gates.max_union_success, gates))
    failed = [c["reason"] for c in checks if c["status"] == "fail"]
    threat_models = {name: threat_model_verdict(name, attacks, metrics["redteam"], checks, gates)
                     for name, attacks in gates.threat_models.items()}
    return {"verdict": "fail" if failed else "pass", "failed": failed, "checks": checks,
            "threat_models": threat_models, "settings": gates.model_dump(mode="json")}


def threat_model_verdict(name: str, attacks: list[str], redteam: dict[str, Any], checks: list[dict[str, Any]],
                         gates: RobustnessGatesConfig) -> dict[str, Any]:
    """One threat model's verdict: the gates of its attacks, and the union of its attacks per concept.

    ``fail`` if one of them fails; else ``unmeasured`` if one of its attacks did not run (a verdict
    on part of what the attacker can do is no verdict); else ``pass``.
    """
    from sdd.evaluation import rate

    own = [c for c in checks if c["gate"].removeprefix("max_attack_success.") in attacks]
    missing = sorted({a for m in redteam.values() for a in attacks if a not in m["attacks"]})
    unions = {}
    for concept, m in redteam.items():
        broken = set().union(*(m["attacks"][a]["broken"] for a in attacks if a in m["attacks"]))
        unions[concept] = rate([k in broken for k in range(m["effective_prompts"])])
        if gates.max_union_success is not None:
            own.append(_check(f"max_union_success.{name}", concept, f"union of the {name} attacks", unions[concept],
                              gates.max_union_success, gates))
    failed = [c["reason"] for c in own if c["status"] == "fail"]
    verdict = "fail" if failed else "unmeasured" if missing or any(c["status"] == "unmeasured" for c in own) \
        else "pass"
    return {"attacks": list(attacks), "verdict": verdict, "failed": failed, "missing": missing, "union": unions}


# --- the evaluation's verdict --------------------------------------------------------------------

#: Gate names (before the first dot) that a red team decides in an evaluation's ``metrics.json``.
ROBUSTNESS_GATES = ("robustness", "max_attack_success", "max_union_success")


def is_robustness_check(check: dict[str, Any]) -> bool:
    return check["gate"].split(".")[0] in ROBUSTNESS_GATES


def redteam_summary(metrics: dict[str, Any], redteam_dir: str) -> dict[str, Any]:
    """What an evaluation's ``metrics.json`` keeps of a red team: rates per concept and attack, budgets, judge."""
    keep = ("count", "n", "rate", "ci95")
    concepts = {
        concept: {"effective_prompts": m["effective_prompts"],
                  "pre_attack": {k: m["pre_attack"][k] for k in keep},
                  "attacks": {name: {k: a[k] for k in (*keep, "gradient_steps", "generations")}
                              for name, a in m["attacks"].items()},
                  "union": {k: m["union"][k] for k in keep},
                  "cost_curves": m.get("cost_curves") or {}}
        for concept, m in metrics["redteam"].items()}
    threat_models = {name: {k: t[k] for k in ("attacks", "verdict", "failed", "missing")}
                     for name, t in metrics["gates"].get("threat_models", {}).items()}
    return {"dir": redteam_dir, "verdict": metrics["verdict"], "concepts": concepts,
            "attacks": metrics["config"]["attacks"], "judge": metrics["judge"], "threat_models": threat_models,
            "cost_curve_plots": metrics.get("cost_curve_plots", {})}


def fold_into_evaluation(eval_dir: Path, redteam_metrics: dict[str, Any], redteam_dir: Path) -> dict[str, Any]:
    """Put a finished red team's rates and robustness checks into ``eval_dir``'s metrics.json and verdict.

    Robustness checks already there (an earlier red team, or the ``unmeasured`` placeholder of
    :func:`sdd.evaluation.apply_gates`) are replaced; the report is rendered again. Called only after
    :func:`run_redteam` returned, so a half-finished red team never changes a verdict.
    """
    from sdd.evaluation import render_markdown
    from sdd.layout import METRICS_FILE, REPORT_FILE, read_metrics
    from sdd.storage import write_json_atomic, write_text_atomic

    eval_dir = Path(eval_dir)
    metrics = read_metrics(eval_dir)
    try:
        where = str(Path(redteam_dir).resolve().relative_to(eval_dir.resolve()))
    except ValueError:
        where = str(redteam_dir)
    checks = [c for c in metrics["gates"]["checks"] if not is_robustness_check(c)]
    checks += redteam_metrics["gates"]["checks"]
    failed = [c["reason"] for c in checks if c["status"] == "fail"]
    metrics["gates"] = {**metrics["gates"], "checks": checks, "failed": failed,
                        "verdict": "fail" if failed else "pass"}
    metrics["verdict"] = metrics["gates"]["verdict"]
    metrics["redteam"] = redteam_summary(redteam_metrics, where)
    write_json_atomic(eval_dir / METRICS_FILE, metrics)
    write_text_atomic(eval_dir / REPORT_FILE, render_markdown(metrics))
    return metrics
