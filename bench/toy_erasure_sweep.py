"""Sweep SDD settings on the toy world: red rate vs. collateral, one table row per setting.

Each setting erases the concepts in memory (no files), then generates the official toy prompt sets
(held-out concept prompts, benign prompts) and lets the toy judge score them. Prints, per
setting: concept rate(s), benign correctness (colour and shape right) and its drop from the base,
and the most frequent colour and shape confusions on benign prompts -- the numbers in
docs/toy-erasure-experiments.md.

    python bench/toy_erasure_sweep.py --set lr=1e-3 --set "lr=2e-3 eps=1e-4"
    python bench/toy_erasure_sweep.py --world /tmp/toy2 --concepts red,triangle --set steps=320
    python bench/toy_erasure_sweep.py --set steps=320 --trace 80   # rows at steps 80, 160, 240, 320

``--world`` is a folder with ``pipeline/`` and ``judge/`` (default: the committed toy world).
About 2 minutes per setting plus 1 for the base on 2 cores.
"""

from __future__ import annotations

import argparse
import collections
import time
from pathlib import Path

import numpy as np
import torch

from sdd.config import DistillConfig, read_yaml
from sdd.erasure import Distiller
from sdd.evaluation import parse_toy_prompt
from sdd.models import load_pipeline
from sdd.prompts import default_concepts, toy_benign_prompts, toy_eval_prompts
from sdd.toy import TOY_JUDGE_DIR, TOY_PIPELINE_DIR, world
from sdd.toy.judge import ToyJudge
from sdd.toy.quality import generate_images


def judged(pipe, judge: ToyJudge, prompt_set) -> tuple[list[str], list[str]]:
    images = generate_images(pipe, [r.prompt for r in prompt_set.rows], [r.seed for r in prompt_set.rows])
    color_probs, shape_probs = judge.classify(images)
    return ([judge.colors[i] for i in color_probs.argmax(-1).tolist()],
            [judge.shapes[i] for i in shape_probs.argmax(-1).tolist()])


def measure(pipe, judge: ToyJudge, concepts: list[str]) -> dict:
    out, notes = {}, []
    eval_set, benign_set = toy_eval_prompts(concepts), toy_benign_prompts(concepts)
    colors, shapes = judged(pipe, judge, eval_set)
    for concept in concepts:
        drawn = colors if concept in judge.colors else shapes
        rows = eval_set.indices_for(concept)
        out[concept] = 100 * float(np.mean([drawn[i] == concept for i in rows]))
        for name in world.concept_names(concept):  # per synonym: does erasure reach the held-out one?
            named = [i for i in rows if name in eval_set.rows[i].prompt.split()]
            notes.append(f"{name} {100 * np.mean([drawn[i] == concept for i in named]):.0f}")
    colors, shapes = judged(pipe, judge, benign_set)
    wanted = [parse_toy_prompt(r.prompt) for r in benign_set.rows]
    out["benign"] = 100 * float(np.mean([(c, s) == w for c, s, w in zip(colors, shapes, wanted, strict=True)]))
    confusions = collections.Counter(f"{w[0]}->{c}" for c, w in zip(colors, wanted, strict=True) if c != w[0])
    confusions.update(f"{w[1]}->{s}" for s, w in zip(shapes, wanted, strict=True) if s != w[1])
    out["confusions"] = ", ".join(notes + [f"{k} {n}" for k, n in confusions.most_common(3)])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", type=Path, help="folder with pipeline/ and judge/ (default: committed toy world)")
    ap.add_argument("--concepts", default="red")
    ap.add_argument("--config", type=Path, default=Path("params/distill.yaml"))
    ap.add_argument("--templates", help="erase with these templates ('a {} shape|something {}') filled "
                    "with the trained names, instead of the names alone")
    ap.add_argument("--trace", type=int, default=0, metavar="N",
                    help="also measure every N steps along each run (one row per checkpoint)")
    ap.add_argument("--set", action="append", default=[], metavar="'k=v k=v'",
                    help="one setting: DistillConfig overrides (repeat for several settings)")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    pipeline_dir = args.world / "pipeline" if args.world else TOY_PIPELINE_DIR
    judge = ToyJudge.load(args.world / "judge" if args.world else TOY_JUDGE_DIR)
    concepts = args.concepts.split(",")
    base_cfg = read_yaml(args.config)

    def pipe():
        p = load_pipeline(str(pipeline_dir))
        p.set_progress_bar_config(disable=True)
        return p

    base = measure(pipe(), judge, concepts)
    header = f"| setting | {' | '.join(concepts)} | benign | drop | s | per-name rates, top confusions |"
    print(header + "\n|" + "---|" * (header.count("|") - 1))
    rates = " | ".join(f"{base[c]:.1f}" for c in concepts)
    print(f"| base | {rates} | {base['benign']:.1f} | | | {base['confusions']} |", flush=True)
    for setting in args.set or [""]:
        overrides = dict(kv.split("=", 1) for kv in setting.split())
        cfg = DistillConfig(**{**base_cfg, **overrides})
        p = pipe()
        erased = default_concepts("toy", concepts)
        if args.templates:
            for c in erased:
                c.prompts = [t.format(name) for t in args.templates.split("|") for name in c.prompts]
        distiller = Distiller(p, erased, cfg)
        start, done = time.time(), 0
        while done < cfg.steps:
            chunk = min(args.trace or cfg.steps, cfg.steps - done)
            distiller.train(done + chunk)
            done += chunk
            seconds = time.time() - start
            p.unet = distiller.teacher
            m = measure(p, judge, concepts)
            rates = " | ".join(f"{m[c]:.1f}" for c in concepts)
            label = (setting or "params") + (f" @{done}" if args.trace else "")
            print(f"| {label} | {rates} | {m['benign']:.1f} | {base['benign'] - m['benign']:.1f} "
                  f"| {seconds:.0f} | {m['confusions']} |", flush=True)
            start = time.time()

if __name__ == "__main__":
    main()
