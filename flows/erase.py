"""The ``erase-concepts`` flow: prompt sets -> distillation -> evaluation -> red team -> gates -> registry.

Every stage is one ``sdd`` call writing into a folder keyed on everything it depends on::

    <runs_dir>/<key>/             key: base model, concept set, distill settings, prompt options
        plan.json                 the resolved settings this folder was made with
        prompts/                  train / eval / benign sets   (sdd.prompts.build_prompt_sets)
        erasure/                  model/, patch, manifest, loss (sdd.erasure.erase, resumable)
        eval-<eval key>/          metrics.json, report.md ...  (sdd.evaluation.evaluate)
            redteam/              attacks on the erased model  (sdd.redteam.run_redteam; its
                                  robustness gates are folded into metrics.json and the verdict)
            registration.json     MLflow run + model version   (sdd.registry.register)

**Re-runs skip what finished.** A task's Prefect cache key is its name, the folder key and the
folder's ``.cache-id`` (a random id written when the folder is first used), and results are
persisted, so re-running the flow with the same inputs returns every finished stage as
``Cached``. Deleting a folder gives it a new id, so that stage (and the ones after it) run again.
Each task also skips its work when its outputs are already on disk, and distillation resumes
from its checkpoint, so a retry after a crash loses at most ``checkpoint_every`` steps.

**Where distillation runs.** With ``distill_deployment`` set (the deployments in ``prefect.yaml``
set it to ``distill/distill-gpu``), the distill stage starts a run of the :func:`distill_concepts`
flow on that deployment's work pool (``gpu``) and waits for it; the light stages stay on the
calling flow's pool (``cpu``). Both pools must see the same ``runs_dir`` (one machine, or a shared
volume). Without it, distillation runs in-process, which is what the tests and a laptop do.

**One run per folder at a time.** Two runs for the same inputs (the same folder key) would train
into the same checkpoint and race to register. The flow holds an exclusive file lock on
``<key>/.lock`` (``fcntl.flock``) from its first stage to its last: a second run waits for the
first, then finds every stage ``Cached`` and returns the same registration. The lock is released
by the kernel when the process dies (a killed worker leaves no stale lock), and it works across
processes and pools that share ``runs_dir`` on one machine or on a file system with POSIX locks.
Behind it, :func:`sdd.registry.register` is idempotent (one version per erasure + evaluation).

**Visible progress.** Distillation updates a progress artifact; the flow ends with a Markdown
artifact holding the gate table and links to the MLflow run and model version.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.deployments import run_deployment
from prefect.runtime import flow_run as current_run

from flows.params import DistillSettings, EvalSettings, GateSettings, PromptOptions, RedteamSettings
from flows.plan import ErasurePlan, folder_id, make_plan, run_folder_lock
from flows.report import mlflow_ui_url, render_report
from sdd.config import DistillConfig, load_checked_registry_config
from sdd.errors import is_user_error
from sdd.layout import (
    EVAL_PROMPTS_FILE,
    MANIFEST_FILE,
    METRICS_FILE,
    MODEL_DIR,
    REGISTRATION_FILE,
    read_manifest,
    read_metrics,
)
from sdd.progress import ProgressLog
from sdd.prompts import limit_rows
from sdd.storage import write_json_atomic

RETRY_DELAYS_S = [10, 60]


# --- what every stage shares: its cache key and when it retries ---------------------------------


def _cache_key(folder_of):
    def cache_key(context, parameters: dict[str, Any]) -> str:
        plan: ErasurePlan = parameters["plan"]
        return f"{context.task.name}-{plan.key}-{folder_id(folder_of(plan))}"

    return cache_key


def _not_a_user_error(task, task_run, state) -> bool:
    """Retry transient failures, not what the user must fix (:func:`sdd.errors.is_user_error`)."""
    try:
        state.result()
    except Exception as e:
        return not is_user_error(e)
    return False


_STAGE = dict(persist_result=True, result_serializer="json", retries=2, retry_delay_seconds=RETRY_DELAYS_S)


# --- stage 1: prompt sets -----------------------------------------------------------------------


@task(name="prepare-prompts", cache_key_fn=_cache_key(lambda p: p.prompts_dir),
      retry_condition_fn=_not_a_user_error, **_STAGE)
def prepare_prompts(plan: ErasurePlan) -> dict[str, Any]:
    """Write the train / eval / benign prompt sets for the concepts (toy world or I2P / COCO)."""
    from sdd.prompts import INDEX_FILE, build_prompt_sets

    index_file = plan.prompts_dir / INDEX_FILE
    if index_file.is_file():
        return json.loads(index_file.read_text())
    p = plan.prompts
    categories = {c: p.i2p_categories for c in plan.concepts} if p.i2p_categories else None
    return build_prompt_sets(plan.concepts, plan.model_kind, plan.prompts_dir,
                             seeds_per_prompt=p.seeds_per_prompt, i2p=p.i2p, i2p_categories=categories,
                             i2p_limit=p.i2p_limit, coco=p.coco, benign_limit=p.benign_limit)


# --- stage 2: distillation ----------------------------------------------------------------------


class DistillProgress:
    """``on_step`` callback of :func:`sdd.erasure.erase`: a progress artifact and a log line.

    Both are updated at most every ``every_s`` seconds (and at the last step), so a long run does
    not send one API call per optimizer step; the log line (step/total, rate, ETA, loss) is what the
    flow's log and the terminal of ``make demo`` show.
    """

    def __init__(self, total_steps: int, what: str, every_s: float = 5.0):
        self.total, self.what, self.every_s = total_steps, what, every_s
        self.last_update = 0.0
        self.artifact_id = create_progress_artifact(progress=0.0, key="distill-progress",
                                                    description=f"Distilling {what}: starting")
        # start=None: a resumed run's first step is wherever its checkpoint left it.
        self.log = ProgressLog(f"distill {what}", total_steps, get_run_logger().info, start=None, every_s=every_s)

    def __call__(self, step: int, loss: float) -> None:
        self.log(step, f"loss {loss:.4g}")
        now = time.monotonic()
        if step < self.total and now - self.last_update < self.every_s:
            return
        self.last_update = now
        description = f"Distilling {self.what}: step {step}/{self.total}, loss {loss:.4g}"
        update_progress_artifact(self.artifact_id, progress=100.0 * step / self.total, description=description)


def erasure_summary(erasure_dir: Path) -> dict[str, Any]:
    manifest = read_manifest(erasure_dir)
    return {"dir": str(erasure_dir), "steps": manifest["steps"],
            "concepts_sha256": manifest["concepts_sha256"], "final_loss": manifest.get("loss", {}).get("last")}


def run_distillation(erasure_dir: Path, base_model: str, concepts: list[str], config: DistillConfig) -> dict:
    """:func:`sdd.erasure.erase` into ``erasure_dir``, resuming its checkpoint; skipped when finished."""
    from sdd.erasure import erase
    from sdd.prompts import default_concepts

    erasure_dir = Path(erasure_dir)
    manifest = erasure_dir / MANIFEST_FILE
    if manifest.is_file() and json.loads(manifest.read_text()).get("steps") == config.steps:
        get_run_logger().info("distillation already finished in %s", erasure_dir)
        return erasure_summary(erasure_dir)
    progress = DistillProgress(config.steps, f"{', '.join(concepts)} from {base_model}")
    erase(base_model, default_concepts(base_model, concepts), erasure_dir, config, resume=True,
          on_step=progress)
    return erasure_summary(erasure_dir)


@flow(name="distill", retries=1, retry_delay_seconds=30,
      description="SDD distillation only (the GPU stage of erase-concepts); resumes its checkpoint.")
def distill_concepts(erasure_dir: str, base_model: str, concepts: list[str],
                     distill: DistillSettings = DistillSettings()) -> dict[str, Any]:
    """Erase ``concepts`` from ``base_model`` into ``erasure_dir`` (erase-concepts starts it on the gpu pool)."""
    return run_distillation(Path(erasure_dir), base_model, concepts, distill)


@task(name="distill", cache_key_fn=_cache_key(lambda p: p.erasure_dir), retry_condition_fn=_not_a_user_error,
      **{**_STAGE, "retries": 1})
def distill_stage(plan: ErasurePlan, distill_deployment: str | None = None) -> dict[str, Any]:
    """Run the distillation here, or as a run of ``distill_deployment`` (e.g. on the gpu pool) and wait."""
    if not distill_deployment:
        return run_distillation(plan.erasure_dir, plan.base_model, plan.concepts, plan.distill)
    parameters = {"erasure_dir": str(plan.erasure_dir.resolve()), "base_model": plan.base_model,
                  "concepts": plan.concepts, "distill": plan.distill.model_dump(mode="json")}
    run = run_deployment(distill_deployment, parameters=parameters, timeout=None)
    if run.state is None or not run.state.is_completed():
        raise RuntimeError(f"distill run {run.name} ({distill_deployment}) ended "
                           f"{run.state.name if run.state else 'without a state'}")
    return erasure_summary(plan.erasure_dir)


# --- stage 3: evaluation and gates --------------------------------------------------------------


@task(name="evaluate", cache_key_fn=_cache_key(lambda p: p.eval_dir), retry_condition_fn=_not_a_user_error,
      **_STAGE)
def evaluate_stage(plan: ErasurePlan) -> dict[str, Any]:
    """Generate with the base and the erased model, judge, measure and apply the gates."""
    from sdd.evaluation import build_judge, evaluate
    from sdd.models import load_pipeline
    from sdd.prompts import load_prompts

    metrics_file = plan.eval_dir / METRICS_FILE
    if not metrics_file.is_file():
        prompt_set = limit_rows(load_prompts(plan.prompts_dir), plan.prompts.max_eval_prompts)
        model_dir = plan.erasure_dir / MODEL_DIR
        evaluate(load_pipeline(plan.base_model), load_pipeline(str(model_dir)), prompt_set,
                 build_judge(plan.evaluation.judge), plan.evaluation, plan.gates, plan.eval_dir,
                 base_name=plan.base_model, erased_name=str(model_dir), progress=False,
                 log=get_run_logger().info)
    return evaluation_summary(plan.eval_dir)


def evaluation_summary(eval_dir: Path) -> dict[str, Any]:
    """What the report needs of an evaluation folder: verdict, gate checks, rates (and ASRs once red-teamed)."""
    metrics = read_metrics(eval_dir)
    redteam = metrics.get("redteam") or {}
    return {"dir": str(eval_dir), "verdict": metrics["verdict"], "checks": metrics["gates"]["checks"],
            "prompt_set": {"sha256": metrics["prompt_set"]["sha256"]},
            "concepts": {c: {"base": m["base"]["rate"], "erased": m["erased"]["rate"]}
                         for c, m in metrics["concepts"].items()},
            "redteam": {c: {"effective_prompts": m["effective_prompts"], "pre_attack": m["pre_attack"]["rate"],
                            **{a: r["rate"] for a, r in m["attacks"].items()}, "union": m["union"]["rate"]}
                        for c, m in (redteam.get("concepts") or {}).items()},
            "threat_models": {name: t["verdict"] for name, t in (redteam.get("threat_models") or {}).items()}}


@task(name="redteam", cache_key_fn=_cache_key(lambda p: p.eval_dir), retry_condition_fn=_not_a_user_error,
      **_STAGE)
def redteam_stage(plan: ErasurePlan) -> dict[str, Any]:
    """Attack the erased model (sdd.redteam) and fold the robustness gates into the evaluation's verdict.

    The evaluation's metrics.json changes only once every attack has finished, so a red team killed
    half-way leaves the verdict as it was (robustness unmeasured) and the rerun attacks again.
    """
    from sdd.evaluation import build_judge
    from sdd.models import load_pipeline
    from sdd.prompts import load_prompts
    from sdd.redteam import fold_into_evaluation, run_redteam

    if "redteam" not in read_metrics(plan.eval_dir):
        logger = get_run_logger()
        prompt_set = limit_rows(load_prompts(plan.prompts_dir), plan.prompts.max_eval_prompts)
        model_dir = plan.erasure_dir / MODEL_DIR
        metrics = run_redteam(load_pipeline(plan.base_model), load_pipeline(str(model_dir)), prompt_set,
                              build_judge(plan.evaluation.judge), plan.redteam, plan.redteam_dir,
                              gates=plan.gates.robustness, base_name=plan.base_model, erased_name=str(model_dir),
                              skip_ineffective=True, log=logger.info)
        fold_into_evaluation(plan.eval_dir, metrics, plan.redteam_dir)
    return evaluation_summary(plan.eval_dir)


# --- stage 4: registry --------------------------------------------------------------------------


#: Provenance shown in the report: the commit, and DVC's hashes of the concept list and prompt sets.
LINEAGE_KEYS = ("git_commit", "git_dirty", "dvc_rev", "dvc_concepts", "dvc_prompts")


def write_evaluated_prompts(plan: ErasurePlan) -> None:
    """``<eval>/prompts.jsonl``: the rows the evaluation drew, logged with the run for ``promoted-check``."""
    from sdd.prompts import load_prompts, write_prompt_set

    target = plan.eval_dir / EVAL_PROMPTS_FILE
    if target.is_file():
        return
    prompt_set = limit_rows(load_prompts(plan.prompts_dir), plan.prompts.max_eval_prompts)
    if prompt_set.sha256 != read_metrics(plan.eval_dir)["prompt_set"]["sha256"]:
        raise RuntimeError(f"{plan.prompts_dir} changed since {plan.eval_dir} was evaluated; delete the run folder")
    write_prompt_set(prompt_set, target)


@task(name="register", cache_key_fn=_cache_key(lambda p: p.eval_dir), retry_condition_fn=_not_a_user_error,
      **_STAGE)
def register_stage(plan: ErasurePlan) -> dict[str, Any]:
    """Log the run to MLflow and register the model; alias ``candidate`` when its gates passed for
    production's threat model (params/registry.yaml ``alias_threat_models``)."""
    from sdd.provenance import dvc_info, git_info
    from sdd.registry import register

    record_file = plan.eval_dir / REGISTRATION_FILE
    if record_file.is_file():  # registered before the task's result was persisted: no duplicate version
        return json.loads(record_file.read_text())
    write_evaluated_prompts(plan)
    reg = register(plan.erasure_dir, plan.eval_dir, load_checked_registry_config())
    lineage = {**git_info(), **dvc_info()}  # the same values the model version is tagged with
    record = {"run_id": reg.run_id, "model_uri": reg.model_uri, "name": reg.name, "version": reg.version,
              "alias": reg.alias, "gates": reg.gates.tag,
              "lineage": {k: lineage[k] for k in LINEAGE_KEYS}}
    write_json_atomic(record_file, record)
    return record


# --- the flow -----------------------------------------------------------------------------------


def _run(stage, *args, **kwargs) -> tuple[Any, str, float]:
    """Call a task; return its result, its final state name (``Completed`` or ``Cached``) and wall seconds."""
    start = time.perf_counter()
    state = stage(*args, return_state=True, **kwargs)
    return state.result(), state.name, round(time.perf_counter() - start, 1)


@flow(name="erase-concepts", log_prints=True,
      description="Erase concepts from a diffusion model with SDD, evaluate, gate and register it.")
def erase_concepts(
    concepts: list[str],
    base_model: str = "toy",
    distill: DistillSettings = DistillSettings(),  # defaults read from params/*.yaml
    evaluation: EvalSettings = EvalSettings(),
    gates: GateSettings = GateSettings(),
    prompts: PromptOptions = PromptOptions(),
    runs_dir: str = "runs",
    distill_deployment: str | None = None,
    redteam: RedteamSettings = RedteamSettings(),
) -> dict[str, Any]:
    """Erase ``concepts`` from ``base_model``; register the result (alias ``candidate`` if its gates pass
    for production's threat model).

    Args:
        concepts: Concepts to erase, e.g. ["red"] (toy world) or ["nudity"]; order does not matter.
        base_model: "toy", a local diffusers folder or a Hugging Face Hub id.
        distill: SDD settings (unset fields: params/distill.yaml).
        evaluation: Generation and judge settings (unset fields: params/eval.yaml).
        gates: Pass/fail thresholds (unset fields: params/gates.yaml).
        prompts: Where evaluation prompts come from.
        runs_dir: Root of the run folders (shared by every pool that runs a stage).
        distill_deployment: Deployment that runs the distillation (e.g. "distill/distill-gpu"); none = here.
        redteam: Attacks and budgets of the red-team stage (unset fields: params/redteam.yaml).
    """
    logger = get_run_logger()
    plan = make_plan(concepts, base_model, distill, evaluation, gates, prompts, runs_dir, redteam)
    logger.info("run folder %s (erasure key %s, evaluation key %s)", plan.run_dir, plan.key, plan.eval_key)
    stages: dict[str, str] = {}
    wall_s: dict[str, float] = {}
    # One run per folder at a time: a concurrent twin waits here, then gets every stage from the cache.
    holder = f"flow run {current_run.get_name()} ({current_run.get_id()})"
    with run_folder_lock(plan.run_dir, logger, holder):
        _, stages["prepare-prompts"], wall_s["prepare-prompts"] = _run(prepare_prompts, plan)
        _, stages["distill"], wall_s["distill"] = _run(distill_stage, plan, distill_deployment)
        _, stages["evaluate"], wall_s["evaluate"] = _run(evaluate_stage, plan)
        result, stages["redteam"], wall_s["redteam"] = _run(redteam_stage, plan)
        registration, stages["register"], wall_s["register"] = _run(register_stage, plan)

    create_markdown_artifact(render_report(plan, result, registration, stages, mlflow_ui_url()),
                             key="erasure-report", description=f"Erasure of {', '.join(plan.concepts)}")
    logger.info("verdict %s; registered %s version %s (alias %s)", result["verdict"], registration["name"],
                registration["version"], registration["alias"] or "none")
    return {"run_dir": str(plan.run_dir), "key": plan.key, "verdict": result["verdict"],
            "registration": registration, "stages": stages, "wall_s": wall_s}
