"""Experiment tracking and the model registry (MLflow): log an erasure, register it, promote it.

This is the only module of ``sdd`` that imports MLflow. Three steps, each a small function:

1. **Track** (:func:`log_erasure`): one MLflow run per erasure output folder (``sdd erase --out``):

   * params: the full distillation config (``distill.*``), concepts, base model, evaluation settings;
   * metrics: the loss curve as the history of metric ``loss`` (one point per ``step`` of
     ``loss.csv``), and the evaluation's numbers flattened from ``metrics.json`` (``eval.*``);
   * artifacts: ``evaluation/report.md``, ``evaluation/metrics.json``, ``evaluation/grids/*.png``
     (the report's image links keep working), ``erasure/manifest.json``, ``erasure/loss.csv``;
   * tags: system info (``system.python``, ``system.torch``, ``system.diffusers``, ``system.device``...),
     the library versions the model was trained with, git commit, DVC hashes, gate verdicts;
   * the model, logged as a pyfunc (:class:`ErasedDiffusionModel`), see below.

2. **Register** (:func:`register_erasure`, or :func:`register` for 1 + 2): a new version of the
   registered model (default ``sdd-erased``) with tags ``concepts``, ``concepts_sha256``,
   ``base_model``, ``base_revision``, ``base_unet_sha256``, ``gates`` (``passed`` / ``failed``),
   ``gate_verdict``, ``gates_failed``, ``git_commit``, ``git_dirty``, ``dvc_rev``, ``dvc_lock``,
   ``dvc_params``, ``dvc_data`` (``"none"`` where there is no git or DVC).
   **Gate policy**: the alias ``candidate`` is set only when the evaluation's verdict is ``pass``
   and no gate check failed (gates reported ``unmeasured`` follow the evaluation's own
   ``fail_on_unmeasured`` setting; their count is in the ``gates_unmeasured`` tag). Every other
   version -- a failed gate, or no evaluation at all -- is still registered, for the record and
   for comparison, but with ``gates=failed`` and no alias, so nothing can pick it up by alias
   unless someone promotes it explicitly with ``force`` and a reason.
   **Idempotent**: :func:`register` tags the version with a :func:`registration_key` (concept-set
   hash, base model, distill config, the patch's and ``metrics.json``'s bytes) and returns the
   existing version when the same erasure and evaluation are registered again. **Races**: on a
   local SQLite store concurrent registrations queue on a file lock next to the database; against
   a tracking server, racing duplicates each create a version, see the lowest-numbered version with
   their key and all but its creator delete theirs -- one version per key either way.
   **Artifact store down** (S3 gone mid-upload): boto3 (``AWS_MAX_ATTEMPTS``, ``AWS_RETRY_MODE``)
   and MLflow's HTTP client (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, ``..._BACKOFF_FACTOR``) retry;
   when they give up, the run ends ``FAILED``, its logged model ``FAILED``, no version is created,
   and :class:`ArtifactUploadError` says so in one line.

3. **Promote** (:func:`promote`): move an alias (default ``production``) to a version. A version
   whose gates failed is refused unless ``force=True`` with a non-empty ``reason``; the override is
   recorded on the version (tags ``forced_by``, ``force_reason``, ``forced_at``, ``forced_alias``)
   *before* the alias moves. **Races**: the alias is moved by one server call
   (``set_registered_model_alias``), which the registry stores as a single row keyed by
   (model, alias) -- so at any instant exactly one version holds an alias, and of two racing
   promotions the last write wins, never a mix. A transient write conflict is retried. Afterwards
   :func:`promote` re-reads the registry, checks that exactly one version holds the alias and that
   it is ours; if a concurrent promotion moved it in between, it raises
   :class:`ConcurrentPromotionError` naming the winner instead of reporting a success.

**The model** (:class:`ErasedDiffusionModel`, an ``mlflow.pyfunc.PythonModel``): artifacts are the
erased diffusers pipeline folder (``model``), ``patch.safetensors`` (checked against the loaded
UNet at load time) and ``manifest.json``. Input: a pandas DataFrame with a ``prompt`` column and an
optional integer ``seed`` column (missing seeds = the row position); params ``num_inference_steps``,
``guidance_scale`` (defaults: the evaluation's settings) and ``batch_size``. Output: a DataFrame
with columns ``prompt``, ``seed``, ``image`` -- the image as a **base64-encoded PNG string**
(JSON-serialisable, so the same model serves over REST; :func:`decode_image` turns it back into a
PIL image). Each row has its own CPU ``torch.Generator``, as in ``sdd evaluate``, so a (prompt,
seed) gives the same image whatever the batch. The model carries ``sdd``'s own source
(``code_paths``), so loading needs no ``pip install sdd``, and pins sdd's runtime dependencies
(torch, diffusers, transformers, safetensors, pillow, pandas, numpy, pydantic, pyyaml) at the
versions installed when it was logged. Load it with
``mlflow.pyfunc.load_model("models:/sdd-erased@production")`` or :func:`load_model`.

**Where it runs**: the tracking URI is ``--tracking-uri`` > ``$MLFLOW_TRACKING_URI`` >
``params/registry.yaml`` > a local SQLite store ``sqlite:///<project>/.sdd/mlflow.db`` (artifacts
in ``.sdd/artifacts``; no server). With a tracking server started with
``--artifacts-destination s3://...``, artifacts go through the server's proxied artifact store,
so clients need no bucket credentials. Credentials are read from the environment only (by MLflow
and boto3), never logged: the URI is not recorded, and every param and tag value is scrubbed of
the values of secret-looking environment variables before it is sent.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import fcntl
import getpass
import hashlib
import importlib.metadata
import io
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.tracking._model_registry import utils as _registry_state
from mlflow.tracking._tracking_service import utils as _tracking_state
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

import sdd
from sdd.config import ConfigError, RegistryConfig, load_registry_config

# Files of an erasure output folder (see sdd.distill) and of an evaluation folder (see sdd.evaluate).
MODEL_DIR, PATCH_FILE, MANIFEST_FILE, LOSS_FILE = "model", "patch.safetensors", "manifest.json", "loss.csv"
METRICS_FILE, REPORT_FILE, GRIDS_DIR = "metrics.json", "report.md", "grids"

MODEL_ARTIFACT_PATH = "model"  # name= of the logged pyfunc model
DEFAULT_STEPS, DEFAULT_GUIDANCE, DEFAULT_BATCH = 25, 7.5, 4
#: Packages the pyfunc model needs at load time, pinned at their installed versions.
RUNTIME_PACKAGES = ("torch", "diffusers", "transformers", "safetensors", "pillow", "pandas", "numpy",
                    "pydantic", "pyyaml")
GATES_PASSED, GATES_FAILED = "passed", "failed"
MAX_PARAM_LEN, MAX_TAG_LEN = 6000, 5000
_SECRET_NAME = re.compile(r"SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|PRIVATE|ACCESS_KEY|API_KEY|_KEY$", re.I)
_METRIC_KEY_BAD = re.compile(r"[^\w\-. /]")
_SKIP_DIRS = {"node_modules", "runs", "__pycache__"}


class RegistryError(ConfigError):
    """A registry operation the user can fix (unknown model/version, missing files); one line."""


class PromotionRefused(RegistryError):
    """Promotion of a version whose gates failed, without ``force`` and a reason."""


class ConcurrentPromotionError(RegistryError):
    """Another promotion moved the alias between ours and its verification."""


class ArtifactUploadError(RegistryError):
    """The artifact store (S3, the server's proxied store) failed after the transport's retries.

    Not the user's input: ``sdd register`` exits with status 1 and the flow's register stage retries.
    The MLflow run is marked ``FAILED`` and no model version exists for it.
    """


# --- where MLflow lives -------------------------------------------------------------------------


@dataclass(frozen=True)
class Store:
    tracking_uri: str
    registry_uri: str
    artifact_location: str | None  # for experiments this module creates


def resolve_store(cfg: RegistryConfig | None = None, tracking_uri: str | None = None) -> Store:
    """Tracking URI: argument > $MLFLOW_TRACKING_URI > cfg.tracking_uri > local SQLite store."""
    cfg = cfg or RegistryConfig()
    uri = (tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking_uri
           or cfg.default_tracking_uri())
    artifacts = cfg.artifact_location
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        db.parent.mkdir(parents=True, exist_ok=True)
        artifacts = artifacts or (db.parent / "artifacts").resolve().as_uri()
    return Store(uri, cfg.registry_uri or os.environ.get("MLFLOW_REGISTRY_URI") or uri, artifacts)


@contextmanager
def _mlflow_errors(store: Store) -> Iterator[None]:
    """Turn MLflow failures (unreachable server, invalid name or alias...) into one-line errors."""
    try:
        yield
    except MlflowException as e:
        message = (str(e.message).strip().splitlines() or [type(e).__name__])[0]
        raise RegistryError(f"MLflow ({store.tracking_uri.split('://')[0]}): {message}") from e


@contextmanager
def _client(store: Store) -> Iterator[MlflowClient]:
    """A client bound to ``store``; touches no global state, so it is safe in threads."""
    with _mlflow_errors(store):
        yield MlflowClient(store.tracking_uri, store.registry_uri)


_FLUENT_LOCK = threading.RLock()


@contextmanager
def _mlflow_at(store: Store) -> Iterator[MlflowClient]:
    """Point MLflow's fluent API (runs, log_model, load_model) at ``store``, then restore it.

    MLflow keeps the URIs in module globals and also exports them as environment variables; both
    are put back exactly (an unset URI stays unset). A lock keeps threads from interleaving here.
    """
    with _FLUENT_LOCK, _mlflow_errors(store):
        env_before = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
        previous = (_tracking_state._tracking_uri, _registry_state._registry_uri)
        mlflow.set_tracking_uri(store.tracking_uri)
        mlflow.set_registry_uri(store.registry_uri)
        try:
            yield MlflowClient(store.tracking_uri, store.registry_uri)
        finally:
            mlflow.set_tracking_uri(previous[0])
            _registry_state._registry_uri = previous[1]
            for key, value in env_before.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


@contextmanager
def _store_lock(store: Store) -> Iterator[None]:
    """For a local SQLite store, an exclusive file lock next to the database (``<db>.register.lock``).

    It serialises :func:`register` across threads and processes of this machine, so a concurrent
    registration of the same erasure waits and then finds the first one's version instead of logging a
    second run. A tracking server has no such lock; there the version-key check in
    :func:`register_erasure` keeps the registry to one version (see :func:`register`).
    """
    if not store.tracking_uri.startswith("sqlite:///"):
        yield
        return
    lock = Path(store.tracking_uri.removeprefix("sqlite:///") + ".register.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as f:  # each open is its own lock owner, so threads exclude each other too
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _experiment_id(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except MlflowException:  # created concurrently
        return client.get_experiment_by_name(name).experiment_id


# --- reading the inputs -------------------------------------------------------------------------


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

    @property
    def passed(self) -> bool:
        return self.verdict == "pass" and not self.failed

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
    missing = [f for f in (MODEL_DIR, PATCH_FILE, MANIFEST_FILE, LOSS_FILE) if not (out_dir / f).exists()]
    if missing:
        raise RegistryError(f"{out_dir}: not a finished erasure output (missing {', '.join(missing)}); "
                            f"pass the --out folder of `sdd erase`")
    manifest = json.loads((out_dir / MANIFEST_FILE).read_text(encoding="utf-8"))
    return Erasure(out_dir, manifest, read_losses(out_dir / LOSS_FILE))


def read_losses(path: Path) -> list[tuple[int, float]]:
    with open(path, newline="", encoding="utf-8") as f:
        return [(int(row["step"]), float(row["loss"])) for row in csv.DictReader(f)]


def read_evaluation(eval_dir: Path | str) -> Evaluation:
    eval_dir = Path(eval_dir)
    if not (eval_dir / METRICS_FILE).is_file():
        raise RegistryError(f"{eval_dir}: no {METRICS_FILE}; pass the --out folder of `sdd evaluate`")
    return Evaluation(eval_dir, json.loads((eval_dir / METRICS_FILE).read_text(encoding="utf-8")))


def read_gates(metrics: dict[str, Any] | None) -> GateSummary:
    """Gate verdict from ``metrics.json``: ``verdict`` and ``gates.checks[*].status``."""
    if not metrics:
        return GateSummary("none", ["not evaluated"])
    checks = (metrics.get("gates") or {}).get("checks", [])
    failed = [c["reason"] for c in checks if c.get("status") == "fail"]
    unmeasured = [c["reason"] for c in checks if c.get("status") == "unmeasured"]
    return GateSummary(metrics.get("verdict", "none"), failed, unmeasured)


# --- what gets logged ---------------------------------------------------------------------------


def _secret_values() -> list[str]:
    return [v for k, v in os.environ.items() if _SECRET_NAME.search(k) and len(v) >= 6]


def scrub(value: Any, limit: int = MAX_TAG_LEN) -> str:
    """``value`` as a string, with secret environment values masked and cut to ``limit``."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    for secret in _secret_values():
        text = text.replace(secret, "***")
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
    sections = {"concepts": metrics.get("concepts"), "quality": metrics.get("quality")}
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


def _git(*args: str, cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_info(project: Path | None = None) -> dict[str, str]:
    """``git_commit`` (``git rev-parse HEAD``) and ``git_dirty``; "none" outside a git checkout."""
    project = Path(project or Path.cwd())
    commit = _git("rev-parse", "HEAD", cwd=project)
    if not commit:
        return {"git_commit": "none", "git_dirty": "none"}
    dirty = _git("status", "--porcelain", "--untracked-files=no", cwd=project)
    return {"git_commit": commit, "git_dirty": "none" if dirty is None else str(bool(dirty)).lower()}


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()  # what DVC records for files


def _dvc_files(project: Path) -> list[Path]:
    found = []
    for root, dirs, files in os.walk(project):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in _SKIP_DIRS]
        found += [Path(root) / f for f in files if f.endswith(".dvc")]
    return sorted(found)


#: The concept list the ``prepare`` stage reads and the prompt sets it writes (see dvc.yaml).
DVC_CONCEPTS_FILE, DVC_PROMPTS_OUT = "params/concepts.yaml", "data/prompts"


def _lock_outs(stages: dict[str, Any]) -> dict[str, str]:
    """``{path: hash}`` of every stage output recorded in ``dvc.lock`` (md5, or etag for cloud outputs)."""
    outs: dict[str, str] = {}
    for stage in stages.values():
        for out in (stage.get("outs") or []) if isinstance(stage, dict) else []:
            if isinstance(out, dict) and out.get("path"):
                outs[str(out["path"])] = str(out.get("md5") or out.get("etag") or out.get("checksum") or "?")
    return outs


def dvc_info(project: Path | None = None) -> dict[str, str]:
    """DVC provenance: the commit and sha256 of ``dvc.lock``, md5 of the params files it tracks,
    and the output hashes of ``*.dvc`` files; ``"none"`` for what does not exist.

    Lineage of the concept list and the prompt sets: ``dvc_concepts`` is the md5 of
    ``params/concepts.yaml`` (the hash DVC gives that file), ``dvc_prompts`` the hash ``dvc.lock``
    records for ``data/prompts`` (the ``prepare`` stage's output; ``dvc pull`` / ``dvc checkout``
    with that lock bring the exact sets back), ``dvc_concepts_locked`` whether the concept list
    ``dvc.lock`` recorded for that output equals the file now (``true`` / ``false``), and
    ``dvc_outs`` every output hash of ``dvc.lock`` (``path=hash``, comma-separated)."""
    import yaml

    project = Path(project or Path.cwd())
    info = {"dvc_rev": "none", "dvc_lock": "none", "dvc_params": "none", "dvc_data": "none",
            "dvc_concepts": "none", "dvc_prompts": "none", "dvc_concepts_locked": "none", "dvc_outs": "none"}
    concepts_file = project / DVC_CONCEPTS_FILE
    if concepts_file.is_file():
        info["dvc_concepts"] = _md5(concepts_file)
    lock = project / "dvc.lock"
    if lock.is_file():
        info["dvc_lock"] = hashlib.sha256(lock.read_bytes()).hexdigest()
        info["dvc_rev"] = _git("log", "-1", "--format=%H", "--", "dvc.lock", cwd=project) or "none"
        try:
            stages = (yaml.safe_load(lock.read_text(encoding="utf-8")) or {}).get("stages", {})
        except (yaml.YAMLError, AttributeError):
            stages = {}
        stages = stages if isinstance(stages, dict) else {}
        params_files = sorted({f for s in stages.values() if isinstance(s, dict) for f in (s.get("params") or {})})
        hashes = [f"{f}={_md5(project / f)}" for f in params_files if (project / f).is_file()]
        info["dvc_params"] = ",".join(hashes) or "none"
        outs = _lock_outs(stages)
        info["dvc_outs"] = ",".join(f"{p}={h}" for p, h in sorted(outs.items())) or "none"
        info["dvc_prompts"] = outs.get(DVC_PROMPTS_OUT, "none")
        locked = [s["params"][DVC_CONCEPTS_FILE] for s in stages.values() if isinstance(s, dict)
                  and DVC_PROMPTS_OUT in {o.get("path") for o in s.get("outs") or [] if isinstance(o, dict)}
                  and DVC_CONCEPTS_FILE in (s.get("params") or {})]
        if locked and concepts_file.is_file():
            try:
                current = yaml.safe_load(concepts_file.read_text(encoding="utf-8"))
            except yaml.YAMLError:
                current = None
            info["dvc_concepts_locked"] = str(current == locked[0]).lower()
    data = []
    for path in _dvc_files(project):
        try:
            outs = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("outs", [])
        except (yaml.YAMLError, OSError):
            continue
        data += [f"{path.relative_to(project)}={o.get('md5') or o.get('etag') or '?'}" for o in outs]
    info["dvc_data"] = ",".join(data) or "none"
    return info


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
        "gates_unmeasured": str(len(gates.unmeasured)),
        **git_info(), **dvc_info(),
    }
    return {k: scrub(v) for k, v in tags.items()}


# --- the pyfunc model ---------------------------------------------------------------------------


def encode_image(image) -> str:
    """A PIL image as a base64 PNG string (the ``image`` column of the model's output)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def decode_image(data: str):
    """The inverse of :func:`encode_image`: a base64 PNG string -> an RGB PIL image."""
    from PIL import Image

    with Image.open(io.BytesIO(base64.b64decode(data))) as im:
        return im.convert("RGB")


def _seeds(model_input: pd.DataFrame) -> list[int]:
    """The ``seed`` column; a missing column or missing value is the row position."""
    if "seed" not in model_input:
        return list(range(len(model_input)))
    return [i if pd.isna(s) else int(s) for i, s in enumerate(model_input["seed"].tolist())]


class ErasedDiffusionModel(mlflow.pyfunc.PythonModel):
    """An erased diffusers pipeline as an MLflow pyfunc: prompts and seeds in, base64 PNGs out."""

    def load_context(self, context) -> None:
        from sdd.models import load_pipeline

        self.pipe = load_pipeline(context.artifacts["model"])
        self.manifest = json.loads(Path(context.artifacts["manifest"]).read_text(encoding="utf-8"))
        self._check_patch(context.artifacts["patch"])

    def _check_patch(self, path: str) -> None:
        """The pipeline's UNet must hold exactly the trained parameters of ``patch.safetensors``."""
        import torch
        from safetensors.torch import load_file

        params = dict(self.pipe.unet.named_parameters())
        for name, value in load_file(path).items():
            ours = params.get(name)
            if ours is None or not torch.equal(ours.detach().cpu(), value.to(ours.dtype)):
                raise RegistryError(f"model artifact does not match patch.safetensors ({name})")

    def predict(self, context, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> pd.DataFrame:
        import torch

        model_input = pd.DataFrame(model_input)
        if "prompt" not in model_input:
            raise RegistryError("input needs a 'prompt' column (and optionally 'seed')")
        params = params or {}
        steps = int(params.get("num_inference_steps") or DEFAULT_STEPS)
        guidance = float(params.get("guidance_scale") or DEFAULT_GUIDANCE)
        batch = max(1, int(params.get("batch_size") or DEFAULT_BATCH))
        prompts, seeds = [str(p) for p in model_input["prompt"].tolist()], _seeds(model_input)
        images = []
        for i in range(0, len(prompts), batch):
            generators = [torch.Generator("cpu").manual_seed(s) for s in seeds[i:i + batch]]
            images += self.pipe(prompt=prompts[i:i + batch], generator=generators, num_inference_steps=steps,
                                guidance_scale=guidance, output_type="pil").images
        return pd.DataFrame({"prompt": prompts, "seed": seeds, "image": [encode_image(im) for im in images]})


def model_signature(num_inference_steps: int = DEFAULT_STEPS, guidance_scale: float = DEFAULT_GUIDANCE,
                    batch_size: int = DEFAULT_BATCH) -> ModelSignature:
    return ModelSignature(
        inputs=Schema([ColSpec("string", "prompt"), ColSpec("long", "seed", required=False)]),
        outputs=Schema([ColSpec("string", "prompt"), ColSpec("long", "seed"), ColSpec("string", "image")]),
        params=ParamSchema([ParamSpec("num_inference_steps", "long", num_inference_steps),
                            ParamSpec("guidance_scale", "double", guidance_scale),
                            ParamSpec("batch_size", "long", batch_size)]))


def _installed_version(package: str) -> str:
    return importlib.metadata.version(package).split("+")[0]  # drop local labels such as +cpu


def pip_requirements() -> list[str]:
    """sdd's runtime dependencies pinned at the installed versions (local labels dropped)."""
    return [f"{p}=={_installed_version(p)}" for p in RUNTIME_PACKAGES]


def _stage_code(tmp: Path) -> Path:
    """A copy of the ``sdd`` package's source (no caches, no toy assets) for ``code_paths``."""
    src = Path(sdd.__file__).parent
    dst = tmp / "sdd"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "assets"))
    return dst


def _log_pyfunc(erasure: Erasure, evaluation: Evaluation | None):
    generation = (evaluation.metrics.get("generation") if evaluation else None) or {}
    signature = model_signature(int(generation.get("num_inference_steps") or DEFAULT_STEPS),
                                float(generation.get("guidance_scale") or DEFAULT_GUIDANCE))
    artifacts = {"model": str(erasure.out_dir / MODEL_DIR), "patch": str(erasure.out_dir / PATCH_FILE),
                 "manifest": str(erasure.out_dir / MANIFEST_FILE)}
    metadata = {"concepts": erasure.concepts, "concepts_sha256": erasure.manifest.get("concepts_sha256"),
                "output": "DataFrame[prompt, seed, image=base64 PNG]"}
    with tempfile.TemporaryDirectory(prefix="sdd-code-") as tmp, warnings.catch_warnings():
        # An input example would make MLflow load the model and run it at log time: not for SD sizes.
        warnings.filterwarnings("ignore", message=".*input example was not provided.*")
        return mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT_PATH, python_model=ErasedDiffusionModel(), artifacts=artifacts,
            code_paths=[str(_stage_code(Path(tmp)))], pip_requirements=pip_requirements(),
            signature=signature, metadata=metadata)


# --- 1. tracking --------------------------------------------------------------------------------


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
    for name in (REPORT_FILE, METRICS_FILE):
        if (evaluation.eval_dir / name).is_file():
            mlflow.log_artifact(str(evaluation.eval_dir / name), "evaluation")
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
    with _mlflow_at(store) as client:
        experiment_id = _experiment_id(client, cfg.experiment, store.artifact_location)
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
                model_info = _log_pyfunc(erasure, evaluation)
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


# --- 2. registration ----------------------------------------------------------------------------


@dataclass
class Registration:
    run_id: str
    model_uri: str
    name: str
    version: int
    alias: str | None  # the candidate alias, or None when a gate failed
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
    passed = mv.tags.get("gates") == GATES_PASSED
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


def register_erasure(run: ErasureRun, cfg: RegistryConfig | None = None, *, name: str | None = None,
                     tracking_uri: str | None = None, key: str | None = None) -> Registration:
    """Register the run's model as a new version; alias ``candidate`` only if every gate passed.

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
    # The registry resolves ``models:/m-...`` through the global tracking URI: hence _mlflow_at.
    with _mlflow_at(resolve_store(cfg, tracking_uri)) as client:
        _ensure_registered_model(client, name)
        mv = client.create_model_version(name, source=run.model_uri, run_id=run.run_id, tags=tags,
                                         model_id=run.model_id)
        version = int(mv.version)
        same = _versions_with_key(client, name, key) if key else []
        first = same[0] if same else mv
        if int(first.version) != version:  # lost a race with an identical registration
            client.delete_model_version(name, str(version))
            client.set_tag(run.run_id, "registered_model", f"{name}/{first.version}")
            client.set_tag(run.run_id, "duplicate_of", f"{name}/{first.version}")
            return _reused(first, name, cfg)
        _link_logged_model(client, run.model_id, name, version)
        alias = None
        if gates.passed:
            client.set_registered_model_alias(name, cfg.candidate_alias, str(version))
            alias = cfg.candidate_alias
        client.set_tag(run.run_id, "registered_model", f"{name}/{version}")
    return Registration(run.run_id, run.model_uri, name, version, alias, gates)


def find_registration(name: str, key: str, cfg: RegistryConfig | None = None, *,
                      tracking_uri: str | None = None) -> Registration | None:
    """The version of ``name`` registered with :func:`registration_key` ``key``, or None."""
    cfg = cfg or RegistryConfig()
    with _client(resolve_store(cfg, tracking_uri)) as client:
        found = _versions_with_key(client, name, key)
    return _reused(found[0], name, cfg) if found else None


def register(run_dir: Path | str, eval_dir: Path | str | None, cfg: RegistryConfig | None = None, *,
             name: str | None = None, tracking_uri: str | None = None) -> Registration:
    """:func:`log_erasure` then :func:`register_erasure` (what ``sdd register`` does); idempotent.

    If this erasure with this evaluation (:func:`registration_key`) is already a version of ``name``,
    that version is returned (``reused=True``) and nothing is logged. Concurrent calls for the same
    folders leave one version: on a local SQLite store they queue on a file lock (:func:`_store_lock`)
    and the later ones find the first one's version; against a tracking server, each may log a run,
    but :func:`register_erasure` keeps only the lowest-numbered version of the key.
    """
    cfg = cfg or RegistryConfig()
    name = name or cfg.model_name
    store = resolve_store(cfg, tracking_uri)
    erasure = read_erasure(run_dir)
    key = registration_key(erasure, read_evaluation(eval_dir) if eval_dir is not None else None)
    with _store_lock(store):
        existing = find_registration(name, key, cfg, tracking_uri=tracking_uri)
        if existing is not None:
            return existing
        run = log_erasure(run_dir, eval_dir, cfg, tracking_uri=tracking_uri)
        return register_erasure(run, cfg, name=name, tracking_uri=tracking_uri, key=key)


# --- 3. promotion and listing -------------------------------------------------------------------


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


def _get_version(client: MlflowClient, name: str, version: int | str):
    try:
        return client.get_model_version(name, str(version))
    except MlflowException:
        raise RegistryError(f"model '{name}' has no version {version}; see `sdd models {name}`") from None


def _alias_holder(client: MlflowClient, name: str, alias: str) -> int | None:
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
    with _client(resolve_store(cfg, tracking_uri)) as client:
        mv = _get_version(client, name, version)
        passed = mv.tags.get("gates") == GATES_PASSED
        if force and not (reason or "").strip():
            raise PromotionRefused("--force needs a non-empty --reason; the override is recorded on "
                                   "the version")
        if not passed and not force:
            why = mv.tags.get("gates_failed") or mv.tags.get("gates", "no gate verdict")
            raise PromotionRefused(f"{name} version {mv.version} did not pass its gates ({why}); "
                                   f"refusing to set '{alias}' (override with --force --reason '...')")
        if force:
            for key, value in {"forced_by": getpass.getuser(), "force_reason": reason.strip(),
                               "forced_at": _utc_now(), "forced_alias": alias}.items():
                client.set_model_version_tag(name, mv.version, key, scrub(value))
        previous = _alias_holder(client, name, alias)
        _set_alias(client, name, alias, int(mv.version))
        client.set_model_version_tag(name, mv.version, f"promoted.{alias}.at", _utc_now())
        holders = [v for v, aliases in _aliases_by_version(client, name).items() if alias in aliases]
        if len(holders) != 1:
            raise RegistryError(f"alias '{alias}' of {name} is held by {len(holders)} versions {holders}")
        if holders[0] != int(mv.version):
            raise ConcurrentPromotionError(f"a concurrent promotion moved '{alias}' of {name} to version "
                                           f"{holders[0]} right after ours (version {mv.version}); re-run")
    return Promotion(name, int(mv.version), alias, previous, force)


def list_models(cfg: RegistryConfig | None = None, *, tracking_uri: str | None = None) -> list[str]:
    with _client(resolve_store(cfg, tracking_uri)) as client:
        return sorted(m.name for m in client.search_registered_models(max_results=1000))


def list_versions(name: str, cfg: RegistryConfig | None = None, *,
                  tracking_uri: str | None = None) -> list[VersionRow]:
    """All versions of ``name``, newest first: concepts, gate verdict, aliases, run."""
    with _client(resolve_store(cfg, tracking_uri)) as client:
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
    (server unreachable, bad name) is a one-line :class:`RegistryError`.
    """
    with _client(resolve_store(cfg, tracking_uri)) as client:
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
        with _mlflow_at(resolve_store(cfg, tracking_uri)):
            return mlflow.pyfunc.load_model(f"models:/{name}@{alias or cfg.production_alias}")
    finally:
        sys.path[:] = saved_path


def load_config(path: Path | None = None) -> RegistryConfig:
    """``params/registry.yaml`` (or ``path``); defaults when the default file does not exist."""
    return load_registry_config(path) if path is not None else load_registry_config()
