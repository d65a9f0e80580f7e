"""The toy erasure with the reference loop and the pool loop, side by side in one process.

For each loop: UNet image-passes per optimizer step (hardware-independent; counted by the
engine), seconds per optimizer step and the whole erasure's wall time, then the outcome judged
exactly as ``bench/toy_erasure_sweep.py`` does (toy judge, official prompt sets): red on held-out
red prompts with its 95 % Wilson interval, and judged correctness on benign prompts and its drop
from the base model.

    python bench/bench_loops.py                                   # params/distill.yaml, both loops
    python bench/bench_loops.py --set steps=160 --loops pool      # override settings

Both loops run back to back in the same process, so they see the same machine load (on a shared
machine the wall seconds are inflated; the passes are not, and CPU seconds much less so: on an
idle machine with T threads, wall ≈ CPU / T).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from toy_erasure_sweep import judged  # noqa: E402

from sdd.config import DistillConfig, read_yaml  # noqa: E402
from sdd.erasure import Distiller  # noqa: E402
from sdd.evaluation import (
    parse_toy_prompt,  # noqa: E402
    wilson_interval,  # noqa: E402
)
from sdd.models import load_pipeline  # noqa: E402
from sdd.prompts import default_concepts, toy_benign_prompts, toy_eval_prompts  # noqa: E402
from sdd.toy import TOY_JUDGE_DIR, TOY_PIPELINE_DIR  # noqa: E402
from sdd.toy.judge import ToyJudge  # noqa: E402


def outcome(pipe, judge: ToyJudge, concepts: list[str]) -> dict:
    """Per concept: how many held-out concept prompts still show it; benign correctness."""
    out = {}
    eval_set, benign_set = toy_eval_prompts(concepts), toy_benign_prompts(concepts)
    colors, shapes = judged(pipe, judge, eval_set)
    for concept in concepts:
        drawn = colors if concept in judge.colors else shapes
        rows = eval_set.indices_for(concept)
        out[concept] = (sum(drawn[i] == concept for i in rows), len(rows))
    colors, shapes = judged(pipe, judge, benign_set)
    wanted = [parse_toy_prompt(r.prompt) for r in benign_set.rows]
    out["benign"] = 100 * float(np.mean([(c, s) == w for c, s, w in zip(colors, shapes, wanted, strict=True)]))
    return out


def erase_and_time(cfg: DistillConfig, concepts: list[str]) -> tuple:
    pipe = load_pipeline(str(TOY_PIPELINE_DIR))
    pipe.set_progress_bar_config(disable=True)
    distiller = Distiller(pipe, default_concepts("toy", concepts), cfg)
    start, cpu = time.perf_counter(), time.process_time()
    distiller.train(cfg.steps)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    pipe.unet = distiller.teacher
    return pipe, seconds, cpu, distiller.unet_passes


def percent(k: int, n: int) -> str:
    lo, hi = wilson_interval(k, n)
    return f"{100 * k / n:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concepts", default="red")
    ap.add_argument("--config", type=Path, default=Path("params/distill.yaml"))
    ap.add_argument("--loops", default="reference,pool", help="comma-separated samplers to run")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (its default varies with the load)")
    ap.add_argument("--set", default="", metavar="'k=v k=v'", help="DistillConfig overrides for every loop")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    concepts = args.concepts.split(",")
    judge = ToyJudge.load(TOY_JUDGE_DIR)
    base_cfg = {**read_yaml(args.config), **dict(kv.split("=", 1) for kv in args.set.split())}
    print(f"torch threads: {torch.get_num_threads()}; settings: {base_cfg}", flush=True)

    base_pipe = load_pipeline(str(TOY_PIPELINE_DIR))
    base_pipe.set_progress_bar_config(disable=True)
    base = outcome(base_pipe, judge, concepts)
    rows = []
    for loop in args.loops.split(","):
        cfg = DistillConfig(**{**base_cfg, "sampler": loop})
        pipe, seconds, cpu, passes = erase_and_time(cfg, concepts)
        rows.append((loop, cfg, seconds, cpu, passes, outcome(pipe, judge, concepts)))
        print(f"{loop}: {seconds:.1f} s, {passes / cfg.steps:.1f} passes/step", flush=True)

    names = " | ".join(f"held-out {c} % [95 % CI]" for c in concepts)
    header = (f"| loop | steps x batch | UNet passes/step | s/step | erasure wall s | erasure CPU s | {names} "
              f"| benign % | benign drop |")
    print("\n" + header + "\n|" + "---|" * (header.count("|") - 1))
    rates = " | ".join(percent(*base[c]) for c in concepts)
    print(f"| base model | | | | | | {rates} | {base['benign']:.1f} | |")
    for loop, cfg, seconds, cpu, passes, m in rows:
        rates = " | ".join(percent(*m[c]) for c in concepts)
        print(f"| {loop} | {cfg.steps} x {cfg.batch_size} | {passes / cfg.steps:.1f} | {seconds / cfg.steps:.3f} "
              f"| {seconds:.1f} | {cpu:.1f} | {rates} | {m['benign']:.1f} | {base['benign'] - m['benign']:.1f} |")


if __name__ == "__main__":
    main()
