"""The toy model's quality bar: does it draw the asked colour and shape on held-out captions?

For every (colour, shape) pair and every held-out template, generate images with a fixed seed and
let the judge say what was drawn.  The rates per colour and per shape are what the README's demo
prints and what the toy-world tests check (>= 90 % colour, >= 80 % shape).
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import numpy as np
import torch
from diffusers import DiffusionPipeline

from sdd.toy import world
from sdd.toy.judge import ToyJudge

#: Sampling settings used whenever the toy model generates (demo, evaluation, SDD teacher).
TOY_INFERENCE_STEPS = 25
TOY_GUIDANCE_SCALE = 5.0


@torch.no_grad()
def generate_images(pipe: DiffusionPipeline, prompts: list[str], seeds: list[int],
                    batch_size: int = 64, steps: int = TOY_INFERENCE_STEPS,
                    guidance_scale: float = TOY_GUIDANCE_SCALE) -> torch.Tensor:
    """Images (N, 3, 32, 32) in [0, 1], one seeded generator per prompt (batch-size invariant)."""
    out = []
    for start in range(0, len(prompts), batch_size):
        chunk = slice(start, start + batch_size)
        generators = [torch.Generator().manual_seed(s) for s in seeds[chunk]]
        images = pipe(prompt=prompts[chunk], generator=generators, num_inference_steps=steps,
                      guidance_scale=guidance_scale, output_type="pt").images
        out.append(images.float().cpu())
    return torch.cat(out)


def held_out_prompts(samples_per_pair: int, seed: int = 0) -> list[tuple[str, str, str]]:
    """(prompt, colour, shape) rows on held-out templates and random synonyms."""
    rng = random.Random(seed)
    rows = []
    for color, shape in itertools.product(world.COLOR_NAMES, world.SHAPE_NAMES):
        for i in range(samples_per_pair):
            template = world.HELDOUT_TEMPLATES[i % len(world.HELDOUT_TEMPLATES)]
            rows.append((world.caption(color, shape, template, rng), color, shape))
    return rows


def measure_quality(pipe: DiffusionPipeline, judge: ToyJudge, samples_per_pair: int = 8,
                    seed: int = 0) -> dict:
    """Judged per-colour and per-shape success rates on held-out captions."""
    rows = held_out_prompts(samples_per_pair, seed)
    images = generate_images(pipe, [r[0] for r in rows], [seed * 100_000 + i for i in range(len(rows))])
    color_probs, shape_probs = judge.classify(images)
    got_color = [judge.colors[i] for i in color_probs.argmax(-1).tolist()]
    got_shape = [judge.shapes[i] for i in shape_probs.argmax(-1).tolist()]
    color_ok = np.array([g == r[1] for g, r in zip(got_color, rows, strict=True)])
    shape_ok = np.array([g == r[2] for g, r in zip(got_shape, rows, strict=True)])
    per_color = {c: float(color_ok[[r[1] == c for r in rows]].mean()) for c in world.COLOR_NAMES}
    per_shape = {s: float(shape_ok[[r[2] == s for r in rows]].mean()) for s in world.SHAPE_NAMES}
    return {"n": len(rows), "color_rate": float(color_ok.mean()), "shape_rate": float(shape_ok.mean()),
            "per_color": per_color, "per_shape": per_shape}


def check_world(world_dir: Path | None = None, samples_per_pair: int = 8, seed: int = 0) -> dict:
    """:func:`measure_quality` of a toy world's base model with its own judge (``sdd toy check``)."""
    from diffusers import StableDiffusionPipeline

    from sdd.config import ConfigError
    from sdd.toy import DEFAULT_TOY_DIR

    world_dir = Path(world_dir or DEFAULT_TOY_DIR)
    if not (world_dir / "pipeline" / "model_index.json").is_file():
        raise ConfigError(f"{world_dir} holds no toy world; run 'sdd toy build --out {world_dir}'")
    pipe = StableDiffusionPipeline.from_pretrained(world_dir / "pipeline")
    pipe.set_progress_bar_config(disable=True)
    return measure_quality(pipe, ToyJudge.load(world_dir / "judge"), samples_per_pair, seed)
