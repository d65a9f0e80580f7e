"""The ``evaluate-sharded`` flow: one evaluation split into shards that run in parallel on a Dask cluster.

The work is :mod:`sdd.evaluation.shards` (split -> per shard: generate + judge -> merge -> metrics and report);
this module only decides *where* each shard runs. The flow's task runner is Prefect's
:class:`prefect_dask.DaskTaskRunner` on a ``distributed.LocalCluster`` of worker **processes**
(default: 2 workers x 1 thread on a CPU machine, one worker per GPU on a GPU machine), or an
existing Dask scheduler (``address``) when the team runs one.

**GPUs.** Where CUDA is available each local worker advertises one ``GPU`` resource and every shard
task asks for one (``dask.annotate(resources={"GPU": 1})``), so Dask never puts two shards on one
GPU; a worker uses ``cuda:<worker number mod GPU count>`` (a worker that sees a single GPU, e.g.
one pod per GPU, uses ``cuda:0``). On a CPU machine no resources are requested and each worker runs
torch on its own thread count (``threads_per_worker``), so two workers on two cores do not fight.

**Why Dask and not Ray.** ``prefect-dask`` and ``distributed`` are plain pip packages (pure Python
plus a few small wheels, ~10 MB) that start a local cluster in a couple of seconds with no
separate daemon, object store or dashboard to run; a 2-core CI machine runs the real 2-worker
cluster in the tests. Dask's worker *resources* give the one-shard-per-GPU rule we need, and the
same flow can point at a remote ``dask-scheduler`` without code changes. Ray (``prefect-ray``)
brings a ~100 MB wheel with a C++ runtime, a plasma object store and a GCS process per cluster,
and reserves memory and CPUs up front -- heavy for a 2-core runner and unnecessary for
embarrassingly parallel shards that exchange only small JSON results.

**What travels.** Each shard task gets the prompt set's rows and the model *references* (``"toy"``,
a local folder or a hub id), loads the pipelines itself (cached per worker process, so several
shards on one worker load once) and returns a small JSON-serialisable result (image paths and
per-row judgements). Workers therefore need the same filesystem as the flow for ``out_dir``
(one machine, or a shared volume on a cluster), as the other flows do for ``runs_dir``.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

import dask
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect_dask import DaskTaskRunner
from pydantic import BaseModel

from flows.params import EvalSettings, GateSettings
from sdd.config import EvalConfig
from sdd.prompts import PromptSet

DEFAULT_CPU_WORKERS = 2


def cuda_device_count() -> int:
    """GPUs this process can see (0 without CUDA); does not initialise a CUDA context."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def local_cluster_kwargs(n_workers: int | None = None, threads_per_worker: int = 1,
                         gpus: int | None = None) -> dict[str, Any]:
    """``distributed.LocalCluster`` arguments: worker processes, and one ``GPU`` resource each where GPUs exist.

    ``n_workers`` defaults to one per GPU, or :data:`DEFAULT_CPU_WORKERS` on a CPU machine.
    """
    gpus = cuda_device_count() if gpus is None else gpus
    kwargs: dict[str, Any] = {"n_workers": n_workers or gpus or DEFAULT_CPU_WORKERS,
                              "threads_per_worker": threads_per_worker, "processes": True,
                              "dashboard_address": None}  # no dashboard port to collide on a shared host
    if gpus:
        kwargs["resources"] = {"GPU": 1}
    return kwargs


def shard_task_runner(n_workers: int | None = None, threads_per_worker: int = 1,
                      address: str | None = None) -> DaskTaskRunner:
    """The flow's task runner: a new local cluster, or the Dask scheduler at ``address`` (``tcp://host:8786``)."""
    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(cluster_class="distributed.LocalCluster",
                          cluster_kwargs=local_cluster_kwargs(n_workers, threads_per_worker))


# --- in the worker -------------------------------------------------------------------------------


class ShardJob(BaseModel):
    """Everything a shard task needs besides its rows: models, settings and where images go."""

    base_model: str
    erased_model: str
    evaluation: EvalConfig
    out_dir: str
    base_name: str | None = None
    erased_name: str | None = None
    base_images: str | None = None


def _dask_worker():
    try:
        from distributed import get_worker

        return get_worker()
    except (ImportError, ValueError):  # not running inside a Dask worker
        return None


def shard_device() -> str:
    """``cuda:<worker number mod GPU count>`` in a Dask worker on a GPU machine, ``cuda:0`` elsewhere, else cpu."""
    gpus = cuda_device_count()
    if not gpus:
        return "cpu"
    worker = _dask_worker()
    name = str(worker.name) if worker is not None else "0"
    return f"cuda:{int(name) % gpus if name.isdigit() else 0}"


@functools.lru_cache(maxsize=4)
def _pipeline(model: str, device: str):
    from sdd.models import load_pipeline

    return load_pipeline(model, device=device)


@functools.lru_cache(maxsize=2)
def _judge(judge_json: str, device: str):
    from sdd.config import JudgeConfig
    from sdd.evaluation import build_judge

    return build_judge(JudgeConfig.model_validate_json(judge_json), device=device)


@task(name="eval-shard", retries=1, retry_delay_seconds=10, cache_policy=NO_CACHE)
def eval_shard(job: ShardJob, prompt_set: PromptSet, shard: dict[str, Any]) -> dict[str, Any]:
    """Generate and judge one shard's rows (:func:`sdd.evaluation.run_shard`); resumes its images on a retry."""
    import torch

    from sdd.evaluation import Shard, run_shard

    worker = _dask_worker()
    if worker is not None and not torch.cuda.is_available():
        torch.set_num_threads(max(1, worker.state.nthreads))
    device = shard_device()
    s = Shard.from_dict(shard)
    get_run_logger().info("%s: %d rows on %s (%s)", s.name, len(s.rows), device,
                          f"dask worker {worker.name}" if worker is not None else "in-process")
    cfg = job.evaluation
    return run_shard(s, prompt_set, _pipeline(job.base_model, device), _pipeline(job.erased_model, device),
                     _judge(cfg.judge.model_dump_json(), device), cfg, Path(job.out_dir),
                     base_images=Path(job.base_images) if job.base_images else None,
                     base_name=job.base_name or job.base_model, erased_name=job.erased_name or job.erased_model)


# --- the flow ------------------------------------------------------------------------------------


@flow(name="evaluate-sharded", task_runner=shard_task_runner(), log_prints=True,
      description="Evaluate an erased model against its base with the prompt set split over Dask workers.")
def evaluate_sharded(
    base_model: str,
    erased_model: str,
    prompts: str,
    out_dir: str,
    shards: int = DEFAULT_CPU_WORKERS,
    evaluation: EvalSettings = EvalSettings(),  # defaults read from params/eval.yaml
    gates: GateSettings = GateSettings(),
    max_eval_prompts: int | None = None,
    gpu_per_shard: bool | None = None,
    base_name: str | None = None,
    erased_name: str | None = None,
) -> dict[str, Any]:
    """Generate, judge and gate ``erased_model`` against ``base_model`` in ``shards`` parallel shards.

    Args:
        base_model: "toy", a diffusers folder or a hub id.
        erased_model: The erased model's diffusers folder (``<erasure>/model``).
        prompts: A prompt file, or a folder built by ``sdd prompts build`` (its eval + benign sets).
        out_dir: Where metrics.json, report.md, judgements.jsonl, shards.json and the images go.
        shards: Number of shards (use the number of workers, or a multiple to balance uneven workers).
        evaluation: Generation and judge settings (unset fields: params/eval.yaml).
        gates: Pass/fail thresholds (unset fields: params/gates.yaml).
        max_eval_prompts: Evaluate at most this many rows, spread over the set (smoke runs).
        gpu_per_shard: Ask Dask for one GPU per shard; None = when this machine has CUDA.
        base_name, erased_name: Names recorded in metrics.json (default: the model references).
    """
    from sdd.evaluation import build_judge, finish, split, throughput
    from sdd.prompts import limit_rows, load_prompts

    logger = get_run_logger()
    prompt_set = limit_rows(load_prompts(prompts), max_eval_prompts)
    plan = [s for s in split(prompt_set, shards) if s.rows]
    cfg = EvalConfig.model_validate(evaluation.model_dump())
    job = ShardJob(base_model=base_model, erased_model=erased_model, evaluation=cfg, out_dir=str(out_dir),
                   base_name=base_name, erased_name=erased_name)
    gpu = cuda_device_count() > 0 if gpu_per_shard is None else gpu_per_shard
    logger.info("%d rows in %d shards%s", len(prompt_set), len(plan), ", one GPU each" if gpu else "")
    start = time.perf_counter()
    with dask.annotate(**({"resources": {"GPU": 1}} if gpu else {})):
        futures = [eval_shard.submit(job, prompt_set, s.to_dict()) for s in plan]
    results = [f.result() for f in futures]
    wall = time.perf_counter() - start
    metrics = finish(prompt_set, results, build_judge(cfg.judge), cfg, gates, Path(out_dir))
    speed = throughput(results, wall)
    logger.info("%d images in %.1f s (%.2f images/s); verdict %s", speed["images"], wall,
                speed["images_per_s"] or 0.0, metrics["verdict"])
    return {"out_dir": str(out_dir), "verdict": metrics["verdict"], "shards": len(results),
            "hosts": sorted({r["host"] for r in results}), "throughput": speed}


def run_evaluate_sharded(*, n_workers: int | None = None, threads_per_worker: int = 1, address: str | None = None,
                         **parameters: Any) -> dict[str, Any]:
    """Call :func:`evaluate_sharded` with a task runner of ``n_workers`` local workers (or ``address``)."""
    runner = shard_task_runner(n_workers, threads_per_worker, address)
    return evaluate_sharded.with_options(task_runner=runner)(**parameters)
