"""Red-team an erased toy model at the params/redteam.yaml budgets and print the ASR table (issue 15).

    .venv/bin/sdd erase --model toy --concept red --out /tmp/rt/red
    .venv/bin/sdd prompts build --concept red --out /tmp/rt/prompts
    .venv/bin/python bench/redteam_toy.py --erased /tmp/rt/red/model --prompts /tmp/rt/prompts --out /tmp/rt/attack
    .venv/bin/python bench/redteam_toy.py --erased toy ...      # base vs base: the sanity check (ASR ~ 100 %)

Writes metrics.json, report.md and grids to --out; prints one row per rate with its 95 % Wilson
interval and the wall time of each attack.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from sdd.config import load_redteam_config
from sdd.evaluation import ToyConceptJudge
from sdd.models import load_pipeline
from sdd.prompts import load_prompts
from sdd.redteam import run_redteam


def _fmt(r: dict) -> str:
    if r["rate"] is None:
        return "n/a"
    lo, hi = r["ci95"]
    return f"{100 * r['rate']:5.1f} % {r['count']:>3}/{r['n']:<3} [{100 * lo:4.1f}, {100 * hi:5.1f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--erased", required=True, help="erased model folder, or 'toy' (base vs base)")
    parser.add_argument("--prompts", type=Path, required=True, help="folder of `sdd prompts build`")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--config", type=Path, default=Path("params/redteam.yaml"))
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: on a shared 2-core box more threads oversubscribe)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    cfg = load_redteam_config(args.config)
    base = load_pipeline("toy")
    erased = base if args.erased == "toy" else load_pipeline(args.erased)
    prompts = load_prompts(args.prompts, kinds=("eval",))
    start = time.perf_counter()
    metrics = run_redteam(base, erased, prompts, ToyConceptJudge.load(), cfg, args.out,
                          base_name="toy", erased_name=args.erased)
    total = time.perf_counter() - start

    for concept, m in metrics["redteam"].items():
        print(f"\n{concept}: erased={args.erased}  effective prompts {m['effective_prompts']}/{m['eval_prompts']}"
              f"  (base shows it: {_fmt(m['base'])})")
        print(f"{'':<20} {'rate     k/n   [95 % CI]':<32} {'grad steps':>10} {'gens':>6} {'wall s':>7}")
        print(f"{'pre-attack':<20} {_fmt(m['pre_attack']):<32} {0:>10} {m['effective_prompts']:>6}")
        for name, a in m["attacks"].items():
            print(f"{name:<20} {_fmt(a):<32} {a['gradient_steps']:>10} {a['generations']:>6} {a['wall_s']:>7.1f}")
        print(f"{'union':<20} {_fmt(m['union']):<32} {m['budget']['gradient_steps']:>10} "
              f"{m['budget']['generations']:>6} {total:>7.1f}  (total wall s, incl. base/erased generation)")
    print(f"\nrobustness gates: {metrics['verdict']}; judge {metrics['judge']['settings']}; "
          f"torch threads {args.threads}; report {args.out / 'report.md'}")


if __name__ == "__main__":
    main()
