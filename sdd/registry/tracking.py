"""Track an erasure: one MLflow run per erasure output folder, with its evaluation and the model.

* params: the full distillation config (``distill.*``), concepts, base model, evaluation settings;
* metrics: the loss curve as the history of metric ``loss`` (one point per ``step`` of
  ``loss.csv``), and the evaluation's numbers flattened from ``metrics.json`` (``eval.*``);
* artifacts: ``evaluation/report.md``, ``evaluation/metrics.json``, ``evaluation/grids/*.png``,
  ``erasure/manifest.json``, ``erasure/loss.csv``;
* tags: system info, the library versions the model was trained with, git commit, DVC hashes, gate
  verdicts (:func:`provenance_tags`, shared with the model version);
* the model, logged as a pyfunc (:mod:`sdd.registry.pyfunc`).

When the artifact store gives up after the transport's retries, the run ends ``FAILED`` and
:class:`~sdd.errors.ArtifactUploadError` says so in one line.
"""

from __future__ import annotations

import math
import platform
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

import sdd
from sdd.config import RegistryConfig
from sdd.errors import ArtifactUploadError
from sdd.layout import EVAL_PROMPTS_FILE, GRIDS_DIR, LOSS_FILE, MANIFEST_FILE, METRICS_FILE, REDTEAM_DIR, REPORT_FILE
from sdd.provenance import dvc_info, git_info, scrub
from sdd.registry.inputs import Erasure, Evaluation, GateSummary, read_erasure, read_evaluation, read_gates
from sdd.registry.pyfunc import log_pyfunc
from sdd.registry.store import ensure_experiment, mlflow_at, resolve_store

MAX_PARAM_LEN = 6000


_METRIC_KEY_BAD = re.compile(r"[^\w\-. /]")


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> {"a.b.c": leaf}; lists are kept as leaves."""
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _metric_key(key: str) -> str:
    return _METRIC_KEY_BAD.sub("_", key)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def evaluation_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The numbers of ``metrics.json`` as flat ``eval.*`` metric names (rates, CIs, quality, gates)."""
    out: dict[str, float] = {}
    sections = {"concepts": metrics.get("concepts"), "quality": metrics.get("quality"),
                "redteam": (metrics.get("redteam") or {}).get("concepts")}
    for key, value in flatten(sections).items():
        if key.endswith("ci95") and isinstance(value, list) and len(value) == 2:
            out[f"{key}.lo"], out[f"{key}.hi"] = value
        elif (number := _number(value)) is not None:
            out[key] = number
    for check in (metrics.get("gates") or {}).get("checks", []):
        name = f"gates.{check['gate']}" + (f".{check['concept']}" if check.get("concept") else "")
        if (value := _number(check.get("value"))) is not None:
            out[f"{name}.value"] = value
        if check.get("status") in ("pass", "fail"):
            out[f"{name}.passed"] = float(check["status"] == "pass")
    out["gates.passed"] = float(read_gates(metrics).passed)
    return {_metric_key(f"eval.{k}"): v for k, v in out.items()}


def erasure_params(erasure: Erasure, evaluation: Evaluation | None) -> dict[str, str]:
    """Run params: the full distill config, concepts, base model, training and evaluation settings."""
    m = erasure.manifest
    base = m.get("base_model", {})
    params = {f"distill.{k}": v for k, v in flatten(m.get("config", {})).items()}
    params.update({
        "concepts": ",".join(erasure.concepts),
        "concept_prompts": {c["name"]: c.get("prompts", []) for c in m.get("concepts", [])},
        "concepts_sha256": m.get("concepts_sha256"),
        "base.model": base.get("model"), "base.revision": base.get("revision"),
        "base.pipeline_class": base.get("pipeline_class"), "base.unet_sha256": base.get("unet_sha256"),
        "steps_trained": m.get("steps"),
        **{f"trained_parameters.{k}": v for k, v in m.get("trained_parameters", {}).items()},
    })
    if evaluation is not None:
        em = evaluation.metrics
        params.update({f"eval.generation.{k}": v for k, v in em.get("generation", {}).items()})
        params.update({f"eval.prompt_set.{k}": em.get("prompt_set", {}).get(k)
                       for k in ("name", "kind", "rows", "sha256", "benign_rows")})
        params["eval.judge"] = (em.get("judge") or {}).get("name")
        params.update({f"eval.gate_settings.{k}": v for k, v in
                       flatten((em.get("gates") or {}).get("settings", {})).items()})
    return {k: scrub(v, MAX_PARAM_LEN) for k, v in params.items()}


def system_info() -> dict[str, str]:
    """Versions and the compute device of this process (where the run is logged)."""
    import diffusers
    import torch
    import transformers

    device = f"cuda ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "cpu"
    return {"system.python": platform.python_version(), "system.platform": platform.platform(),
            "system.torch": torch.__version__, "system.diffusers": diffusers.__version__,
            "system.transformers": transformers.__version__, "system.mlflow": mlflow.__version__,
            "system.sdd": sdd.__version__, "system.device": device}


def provenance_tags(erasure: Erasure, gates: GateSummary) -> dict[str, str]:
    """Tags shared by the run and the model version: concepts, base model, gates, git, DVC."""
    base = erasure.manifest.get("base_model", {})
    tags = {
        "concepts": ",".join(erasure.concepts),
        "concepts_sha256": erasure.manifest.get("concepts_sha256") or "none",
        "base_model": base.get("model") or "none",
        "base_revision": base.get("revision") or "none",
        "base_unet_sha256": base.get("unet_sha256") or "none",
        "gates": gates.tag,
        "gate_verdict": gates.verdict,
        "gates_failed": "; ".join(gates.failed) or "none",
        "eval_gates": gates.eval_tag,
        "gates_unmeasured": str(len(gates.unmeasured)),
        "robustness": gates.robustness,
        "attack_success": ",".join(f"{c}={'n/a' if r is None else format(r, '.3f')}"
                                   for c, r in gates.attack_success.items()) or "none",
        **{f"threat_model.{name}": verdict for name, verdict in gates.threat_models.items()},
        **git_info(), **dvc_info(),
    }
    return {k: scrub(v) for k, v in tags.items()}


@dataclass
class ErasureRun:
    run_id: str
    model_uri: str  # models:/m-... (the logged model)
    model_id: str
    erasure: Erasure
    evaluation: Evaluation | None

    @property
    def gates(self) -> GateSummary:
        return read_gates(self.evaluation.metrics if self.evaluation else None)


def _log_batched(client: MlflowClient, run_id: str, metrics=(), params=(), tags=(), size: int = 1000) -> None:
    metrics, params, tags = list(metrics), list(params), list(tags)
    for i in range(0, len(metrics), size):
        client.log_batch(run_id, metrics=metrics[i:i + size])
    for i in range(0, len(params), 100):
        client.log_batch(run_id, params=params[i:i + 100])
    for i in range(0, len(tags), 100):
        client.log_batch(run_id, tags=tags[i:i + 100])


def _log_artifacts(erasure: Erasure, evaluation: Evaluation | None) -> None:
    for name in (MANIFEST_FILE, LOSS_FILE):
        mlflow.log_artifact(str(erasure.out_dir / name), "erasure")
    if evaluation is None:
        return
    for name in (REPORT_FILE, METRICS_FILE, EVAL_PROMPTS_FILE):
        if (evaluation.eval_dir / name).is_file():
            mlflow.log_artifact(str(evaluation.eval_dir / name), "evaluation")
    redteam_metrics = evaluation.eval_dir / REDTEAM_DIR / METRICS_FILE  # its budgets, for promoted-check's rerun
    if redteam_metrics.is_file():
        mlflow.log_artifact(str(redteam_metrics), f"evaluation/{REDTEAM_DIR}")
    grids = evaluation.eval_dir / GRIDS_DIR
    if grids.is_dir():
        for png in sorted(grids.glob("*.png")):
            mlflow.log_artifact(str(png), f"evaluation/{GRIDS_DIR}")


def _run_name(erasure: Erasure) -> str:
    return f"erase-{'+'.join(erasure.concepts)}-{(erasure.manifest.get('concepts_sha256') or '')[:8]}"


def log_erasure(run_dir: Path | str, eval_dir: Path | str | None = None, cfg: RegistryConfig | None = None,
                *, tracking_uri: str | None = None, run_name: str | None = None) -> ErasureRun:
    """Log one erasure (``sdd erase --out``) and its evaluation as one MLflow run, with the model."""
    cfg = cfg or RegistryConfig()
    erasure = read_erasure(run_dir)
    evaluation = read_evaluation(eval_dir) if eval_dir is not None else None
    gates = read_gates(evaluation.metrics if evaluation else None)
    store = resolve_store(cfg, tracking_uri)
    tags = {**system_info(), **provenance_tags(erasure, gates),
            **{f"trained_with.{k}": v for k, v in erasure.manifest.get("versions", {}).items()}}
    with mlflow_at(store) as client:
        experiment_id = ensure_experiment(client, cfg.experiment, store.artifact_location)
        with mlflow.start_run(experiment_id=experiment_id, run_name=run_name or _run_name(erasure),
                              nested=mlflow.active_run() is not None) as run:
            run_id = run.info.run_id
            now = int(time.time() * 1000)
            metrics = [Metric("loss", loss, now, step) for step, loss in erasure.losses]
            if evaluation is not None:
                metrics += [Metric(k, v, now, 0) for k, v in evaluation_metrics(evaluation.metrics).items()]
            _log_batched(client, run_id, metrics=metrics,
                         params=[Param(k, v) for k, v in erasure_params(erasure, evaluation).items()],
                         tags=[RunTag(k, scrub(v)) for k, v in tags.items()])
            try:
                _log_artifacts(erasure, evaluation)
                model_info = log_pyfunc(erasure, evaluation)
            except Exception as e:  # raised after boto3's / MLflow's HTTP retries gave up
                # Leaving the ``with`` ends the run as FAILED; a logged model is marked FAILED by MLflow.
                raise ArtifactUploadError(_upload_failure(run.info, e)) from e
    return ErasureRun(run_id, model_info.model_uri, model_info.model_id, erasure, evaluation)


def _upload_failure(info, error: Exception) -> str:
    cause = " ".join((str(error).strip().splitlines() or [""])[0].split()) or "no message"
    cause = cause if len(cause) <= 400 else f"{cause[:200]} ... {cause[-190:]}"  # the tail holds the reason
    return scrub(f"cannot upload the run's artifacts to {info.artifact_uri} ({type(error).__name__}: {cause}); "
                 f"MLflow run {info.run_id} is marked FAILED and nothing was registered; rerun when the "
                 f"artifact store is reachable", limit=1000)
