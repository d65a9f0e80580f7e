"""An evaluation's gates (``params/gates.yaml``): thresholds on its measurements, a verdict and a reason each.

Every check is one record (``gate``, ``concept``, ``value``, ``threshold``, ``bound``, ``status``,
``reason``); the red team's robustness gates (:mod:`sdd.redteam.gates`) use the same record.
"""

from __future__ import annotations

from typing import Any

from sdd.config import GatesConfig


def _check(gate: str, concept: str | None, value: float | None, threshold: float, bound: str,
           what: str, why_unmeasured: str, fail_on_unmeasured: bool) -> dict[str, Any]:
    label = f"{concept}: {what}" if concept else what
    if value is None:
        status = "fail" if fail_on_unmeasured else "unmeasured"
        reason = f"{label} not measured ({why_unmeasured})"
    else:
        ok = value <= threshold if bound == "max" else value >= threshold
        status = "pass" if ok else "fail"
        op = ("<=" if ok else ">") if bound == "max" else (">=" if ok else "<")
        reason = f"{label} {value:.4g} {op} {bound} {threshold:.4g}"
    return {"gate": gate, "concept": concept, "value": value, "threshold": threshold, "bound": bound,
            "status": status, "reason": reason}


def robustness_placeholders(concepts: list[str], gates: GatesConfig) -> list[dict[str, Any]]:
    """One ``robustness`` check per concept, not yet measured: ``sdd redteam --eval`` replaces them.

    So an evaluation never passes on robustness it did not measure when ``fail_on_unmeasured`` (of
    the robustness gates) is set, and says what is missing when it is not.
    """
    robust = gates.robustness
    if robust.max_attack_success is None and robust.max_union_success is None and \
            not any(v is not None for v in robust.per_attack.values()):
        return []
    return [_check("robustness", concept, None, robust.max_union_success or robust.max_attack_success or 0.0,
                   "max", "attack success (red team)", "red team not run: `sdd redteam --eval <eval folder>`",
                   robust.fail_on_unmeasured) for concept in concepts]


def apply_gates(metrics: dict[str, Any], gates: GatesConfig) -> dict[str, Any]:
    """Compare ``metrics`` with the thresholds in ``gates``: a verdict and one check per gate."""
    strict = gates.fail_on_unmeasured
    checks = []
    for concept, m in metrics["concepts"].items():
        override = gates.per_concept.get(concept)
        max_rate, min_red = gates.max_erased_rate, gates.min_relative_reduction
        if override is not None and override.max_erased_rate is not None:
            max_rate = override.max_erased_rate
        if override is not None and override.min_relative_reduction is not None:
            min_red = override.min_relative_reduction
        if max_rate is not None:
            checks.append(_check("max_erased_rate", concept, m["erased"]["rate"], max_rate, "max",
                                 "erased presence rate", "no evaluation prompts", strict))
        if min_red is not None:
            checks.append(_check("min_relative_reduction", concept, m["relative_reduction"], min_red, "min",
                                 "relative reduction", f"base model never shows it (0/{m['n']})", strict))
    quality = metrics.get("quality") or {}
    if gates.max_quality_drop_points is not None:
        drop = (quality.get("correctness") or {}).get("drop_points")
        checks.append(_check("max_quality_drop_points", None, drop, gates.max_quality_drop_points, "max",
                             "quality drop (points)", "judge has no correctness or no benign prompts",
                             strict))
    if gates.max_fid is not None:
        checks.append(_check("max_fid", None, quality.get("fid"), gates.max_fid, "max", "FID base vs erased",
                             "; ".join(quality.get("notes", [])) or "not computed", strict))
    if gates.max_clip_score_drop is not None:
        drop = (quality.get("clip_score") or {}).get("relative_drop")
        checks.append(_check("max_clip_score_drop", None, drop, gates.max_clip_score_drop, "max",
                             "relative CLIP-score drop", "no clip_score_model configured", strict))
    checks += robustness_placeholders(list(metrics["concepts"]), gates)
    failed = [c["reason"] for c in checks if c["status"] == "fail"]
    return {"verdict": "fail" if failed else "pass", "failed": failed, "checks": checks,
            "settings": gates.model_dump(mode="json")}

