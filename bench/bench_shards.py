"""Throughput of sharded evaluation (flows/shards.py) with 1 and 2 local Dask workers on the toy world.

    .venv/bin/python bench/bench_shards.py                      # 32 rows, 5 steps, 1 and 2 workers
    .venv/bin/python bench/bench_shards.py --rows 64 --workers 1 2 4 --steps 25

For each worker count N it starts a ``LocalCluster(n_workers=N, threads_per_worker=1)`` and runs
the ``evaluate-sharded`` flow with N shards on it twice, each time into a fresh folder (no image
is reused), and prints:

* ``cluster start``: seconds to start the scheduler and N worker processes;
* ``cold``: the first flow run: each worker process imports torch / diffusers / sdd and loads the
  two pipelines and the judge before it generates (what a one-off ``evaluate-sharded`` run pays);
* ``warm``: the second run on the same workers (imports done, pipelines cached per worker): the
  steady state of a long-lived cluster or of a large evaluation;
* ``shard phase``: images (base + erased) per second from submitting the shards to having all
  results (the final merge, quality metrics and report excluded);
* ``per-shard generation``: each shard's own generation rate (images / its generation seconds).

A single-process run (``sdd.evaluation.evaluate``, torch on 1 thread) is the reference; every
sharded run's ``metrics.json`` is checked to equal it. Prefect runs against ``$PREFECT_API_URL``
when set, else a throwaway local server (as in the tests). CPU only: on a GPU machine each shard
takes one GPU instead. On a machine with fewer free cores than workers, workers only add overhead.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def toy_prompts(n: int, path: Path):
    from sdd.prompts import concat, limit_rows, load_prompts, toy_benign_prompts, toy_eval_prompts, write_prompt_set

    full = concat("toy-red", [toy_eval_prompts(["red"], 2), toy_benign_prompts(["red"], 2)])
    write_prompt_set(limit_rows(full, n), path)
    return load_prompts(path)


@contextlib.contextmanager
def prefect_api():
    if os.environ.get("PREFECT_API_URL"):
        yield os.environ["PREFECT_API_URL"]
        return
    from prefect.settings import PREFECT_API_URL, PREFECT_LOCAL_STORAGE_PATH, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with tempfile.TemporaryDirectory() as tmp, \
            temporary_settings({PREFECT_LOCAL_STORAGE_PATH: Path(tmp) / "results"}), \
            prefect_test_harness(server_startup_timeout=240):
        yield PREFECT_API_URL.value()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=32, help="prompt rows (each drawn by base and erased)")
    parser.add_argument("--steps", type=int, default=5, help="sampler steps per image")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to measure")
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

    import torch
    from distributed import LocalCluster

    from flows.shards import run_evaluate_sharded
    from sdd.config import EvalConfig, GatesConfig
    from sdd.evaluation import build_judge, evaluate
    from sdd.models import load_pipeline, save_standin_erased

    cfg = EvalConfig(num_inference_steps=args.steps, batch_size=8, grid_images=2)
    gates = GatesConfig()
    with tempfile.TemporaryDirectory() as tmp, prefect_api() as api:
        tmp = Path(tmp)
        erased = save_standin_erased(tmp / "erased")
        ps = toy_prompts(args.rows, tmp / "prompts.jsonl")
        images = 2 * len(ps)
        print(f"# sharded evaluation on the toy world: {len(ps)} rows x 2 models = {images} images, "
              f"{args.steps} steps; {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
              f"torch {torch.__version__}; Prefect API {api}")

        torch.set_num_threads(1)
        start = time.perf_counter()
        evaluate(load_pipeline("toy", device="cpu"), load_pipeline(str(erased), device="cpu"), ps,
                 build_judge(cfg.judge, device="cpu"), cfg, gates, tmp / "single", base_name="toy",
                 erased_name=str(erased), progress=False)
        single_s = time.perf_counter() - start
        reference = json.loads((tmp / "single" / "metrics.json").read_text())

        print("| run | images | cluster start (s) | cold run (s) | cold img/s | warm run (s) | warm img/s "
              "| warm shard phase img/s | warm per-shard generation img/s |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        print(f"| single process, 1 thread | {images} | — | {single_s:.1f} | {images / single_s:.2f} | — | — | — | — |")
        for n in args.workers:
            start = time.perf_counter()
            cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None)
            cluster_s = time.perf_counter() - start
            runs = {}
            try:
                for phase in ("cold", "warm"):
                    out_dir = tmp / f"sharded-{n}-{phase}"
                    start = time.perf_counter()
                    out = run_evaluate_sharded(address=cluster.scheduler_address, base_model="toy",
                                               erased_model=str(erased), prompts=str(tmp / "prompts.jsonl"),
                                               out_dir=str(out_dir), shards=n, evaluation=cfg.model_dump(),
                                               gates=gates.model_dump())
                    runs[phase] = (time.perf_counter() - start, out["throughput"])
                    if json.loads((out_dir / "metrics.json").read_text()) != reference:
                        print(f"**{n} workers, {phase} run: metrics differ from the single-process run**")
            finally:
                cluster.close()
            (cold_s, _), (warm_s, warm) = runs["cold"], runs["warm"]
            per_shard = ", ".join(f"{r:.2f}" for r in warm["shard_images_per_s"])
            print(f"| {n} Dask worker{'s' if n > 1 else ''} | {images} | {cluster_s:.1f} | {cold_s:.1f} | "
                  f"{images / cold_s:.2f} | {warm_s:.1f} | {images / warm_s:.2f} | {warm['images_per_s']:.2f} | "
                  f"{per_shard} |")

if __name__ == "__main__":
    main()
