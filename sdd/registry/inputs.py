"""What gets registered: an erasure output folder, its evaluation folder, and the gate verdict.

The folders' layout is :mod:`sdd.layout`'s; these readers check that a folder is finished and say
which ``--out`` folder to pass when it is not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdd.errors import RegistryInputError
from sdd.layout import LOSS_FILE, METRICS_FILE, missing_erasure_outputs, read_losses, read_manifest, read_metrics

GATES_PASSED, GATES_FAILED = "passed", "failed"


@dataclass
class Erasure:
    """An erasure output folder: its manifest and loss curve."""

    out_dir: Path
    manifest: dict[str, Any]
    losses: list[tuple[int, float]]

    @property
    def concepts(self) -> list[str]:
        return [c["name"] for c in self.manifest.get("concepts", [])]


@dataclass
class GateSummary:
    """The gate verdict of an evaluation (``metrics.json``), or of no evaluation at all."""

    verdict: str  # "pass", "fail" or "none" (not evaluated)
    failed: list[str] = field(default_factory=list)
    unmeasured: list[str] = field(default_factory=list)
    robustness: str = "none"  # the red team's verdict ("pass" / "fail"), "none" when it has not run
    attack_success: dict[str, float | None] = field(default_factory=dict)  # union ASR per concept
    threat_models: dict[str, str] = field(default_factory=dict)  # verdict per threat model of the red team
    eval_failed: list[str] = field(default_factory=list)  # the failed gates that are not the red team's

    @property
    def passed(self) -> bool:
        return self.verdict == "pass" and not self.failed

    @property
    def eval_passed(self) -> bool:
        """The evaluation's own gates (concept rates, quality) passed, whatever the red team found."""
        return self.verdict != "none" and not self.eval_failed

    @property
    def eval_tag(self) -> str:
        return GATES_PASSED if self.eval_passed else GATES_FAILED

    @property
    def tag(self) -> str:
        return GATES_PASSED if self.passed else GATES_FAILED


@dataclass
class Evaluation:
    """An evaluation output folder (``sdd evaluate --out``)."""

    eval_dir: Path
    metrics: dict[str, Any]

    @property
    def gates(self) -> GateSummary:
        return read_gates(self.metrics)


def read_erasure(out_dir: Path | str) -> Erasure:
    out_dir = Path(out_dir)
    missing = missing_erasure_outputs(out_dir)
    if missing:
        raise RegistryInputError(f"{out_dir}: not a finished erasure output (missing {', '.join(missing)}); "
                            f"pass the --out folder of `sdd erase`")
    return Erasure(out_dir, read_manifest(out_dir), read_losses(out_dir / LOSS_FILE))


def read_evaluation(eval_dir: Path | str) -> Evaluation:
    eval_dir = Path(eval_dir)
    if not (eval_dir / METRICS_FILE).is_file():
        raise RegistryInputError(f"{eval_dir}: no {METRICS_FILE}; pass the --out folder of `sdd evaluate`")
    return Evaluation(eval_dir, read_metrics(eval_dir))


def read_gates(metrics: dict[str, Any] | None) -> GateSummary:
    """Gate verdict from ``metrics.json``: ``verdict`` and ``gates.checks[*].status``."""
    if not metrics:
        return GateSummary("none", ["not evaluated"])
    from sdd.redteam.gates import is_robustness_check

    checks = (metrics.get("gates") or {}).get("checks", [])
    failed = [c["reason"] for c in checks if c.get("status") == "fail"]
    eval_failed = [c["reason"] for c in checks if c.get("status") == "fail" and not is_robustness_check(c)]
    unmeasured = [c["reason"] for c in checks if c.get("status") == "unmeasured"]
    redteam = metrics.get("redteam") or {}
    union = {c: m["union"]["rate"] for c, m in (redteam.get("concepts") or {}).items()}
    threat_models = {name: t["verdict"] for name, t in (redteam.get("threat_models") or {}).items()}
    return GateSummary(metrics.get("verdict", "none"), failed, unmeasured, redteam.get("verdict", "none"), union,
                       threat_models, eval_failed)
