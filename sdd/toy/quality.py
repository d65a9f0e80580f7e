"""What kind of world the toy is: its quality bar, its text encoder's geometry, its CLIP judge.

* :func:`measure_quality`: for every (colour, shape) pair and every held-out template, generate
  images with a fixed seed and let the judge say what was drawn; the rates per colour, per shape
  and per held-out synonym (a colour name the UNet never saw in a caption) are what the README's
  demo prints and what the toy-world tests check.
* :func:`text_geometry`: the text encoder's depth, the cosine between synonyms and between
  different colours in its hidden states, and the empty prompt's hidden-state norm -- none of it
  placed by hand, all of it what the mini-CLIP's pretraining produced.
* :func:`check_world`: both, for ``sdd toy check`` and the demo (the CLIP zero-shot judge's
  agreement with the toy judge is :func:`sdd.evaluation.judges.toy_clip_agreement`).
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
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


def held_out_synonyms() -> tuple[str, ...]:
    """Colour names the UNet never saw in a caption (only the mini-CLIP did)."""
    return tuple(name for color, (names, _) in world.COLORS.items() for name in names
                 if name not in world.unet_color_names(color))


def measure_quality(pipe: DiffusionPipeline, judge: ToyJudge, samples_per_pair: int = 8,
                    seed: int = 0, images: torch.Tensor | None = None) -> dict:
    """Judged per-colour, per-shape and per-held-out-synonym success rates on held-out captions."""
    rows = held_out_prompts(samples_per_pair, seed)
    if images is None:
        images = generate_images(pipe, [r[0] for r in rows], [seed * 100_000 + i for i in range(len(rows))])
    color_probs, shape_probs = judge.classify(images)
    got_color = [judge.colors[i] for i in color_probs.argmax(-1).tolist()]
    got_shape = [judge.shapes[i] for i in shape_probs.argmax(-1).tolist()]
    color_ok = np.array([g == r[1] for g, r in zip(got_color, rows, strict=True)])
    shape_ok = np.array([g == r[2] for g, r in zip(got_shape, rows, strict=True)])
    per_color = {c: float(color_ok[[r[1] == c for r in rows]].mean()) for c in world.COLOR_NAMES}
    per_shape = {s: float(shape_ok[[r[2] == s for r in rows]].mean()) for s in world.SHAPE_NAMES}
    naming = {name: [i for i, r in enumerate(rows) if name in r[0].split()] for name in held_out_synonyms()}
    per_synonym = {name: float(color_ok[idx].mean()) for name, idx in naming.items() if idx}
    synonym_rows = [i for idx in naming.values() for i in idx]
    return {"n": len(rows), "color_rate": float(color_ok.mean()), "shape_rate": float(shape_ok.mean()),
            "per_color": per_color, "per_shape": per_shape, "per_held_out_synonym": per_synonym,
            "held_out_synonym_rate": float(color_ok[synonym_rows].mean()) if synonym_rows else None,
            "held_out_synonym_n": len(synonym_rows)}


@torch.no_grad()
def text_geometry(pipe: DiffusionPipeline) -> dict:
    """The text encoder's depth and the geometry of its hidden states (what the UNet reads).

    Cosines between "a {name} {shape}" captions, averaged over the shapes: ``end`` of the end
    token's state (the one CLIP's contrastive loss pools), ``prompt`` of the whole padded
    hidden-state sequence that the UNet's cross-attention reads.
    """
    tokenizer, encoder = pipe.tokenizer, pipe.text_encoder

    def states(prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids
        hidden = encoder(ids)[0]
        end = (ids == tokenizer.eos_token_id).int().argmax(-1)  # the first end token
        return hidden, hidden[torch.arange(len(ids)), end]

    def cosines(a: str, b: str) -> dict[str, float]:
        shapes = world.SHAPE_NAMES
        hidden, end = states([world.fill("a {c} {s}", c=name, s=s) for name in (a, b) for s in shapes])
        n = len(shapes)
        return {"end": float(F.cosine_similarity(end[:n], end[n:], dim=-1).mean()),
                "prompt": float(F.cosine_similarity(hidden[:n].flatten(1), hidden[n:].flatten(1), dim=-1).mean())}

    def mean(pairs: list[dict[str, float]]) -> dict[str, float]:
        return {k: float(np.mean([p[k] for p in pairs])) for k in ("end", "prompt")}

    red = world.COLORS["red"][0]
    empty, caption = states([""])[0][0], states(["a red circle"])[0][0]
    return {
        "layers": encoder.config.num_hidden_layers,
        "width": encoder.config.hidden_size,
        "synonyms": {f"{red[0]}/{name}": cosines(red[0], name) for name in red[1:]},
        "different_colours": {f"{red[0]}/{c}": cosines(red[0], c) for c in world.COLOR_NAMES if c != "red"},
        "mean_synonym": mean([cosines(names[0], n) for names, _ in world.COLORS.values() for n in names[1:]]),
        "mean_different_colour": mean([cosines(a, b) for i, a in enumerate(world.COLOR_NAMES)
                                       for b in world.COLOR_NAMES[i + 1:]]),
        "empty_prompt_norm": float(empty.norm()),
        "caption_norm": float(caption.norm()),
    }


@dataclass
class ToyWorldModels:
    """A toy world's base pipeline and judge, loaded from its folder."""

    directory: Path
    pipe: DiffusionPipeline
    judge: ToyJudge

    @property
    def clip_dir(self) -> Path | None:
        """The world's mini-CLIP folder, if it has one."""
        return self.directory / "clip" if (self.directory / "clip" / "config.json").is_file() else None


def load_world(world_dir: Path | None = None) -> ToyWorldModels:
    """The toy world in ``world_dir`` (default: the committed one), as a one-line error if incomplete."""
    from diffusers import StableDiffusionPipeline

    from sdd.errors import ConfigError
    from sdd.toy import DEFAULT_TOY_DIR

    world_dir = Path(world_dir or DEFAULT_TOY_DIR)
    if not all((world_dir / part).is_file() for part in ("pipeline/model_index.json", "judge/config.json")):
        raise ConfigError(f"{world_dir} holds no complete toy world (pipeline/ and judge/); "
                          f"run 'sdd toy build --out {world_dir}'")
    pipe = StableDiffusionPipeline.from_pretrained(world_dir / "pipeline")
    pipe.set_progress_bar_config(disable=True)
    return ToyWorldModels(world_dir, pipe, ToyJudge.load(world_dir / "judge"))


def check_world(toy: ToyWorldModels, samples_per_pair: int = 8, seed: int = 0) -> tuple[dict, torch.Tensor]:
    """What ``sdd toy check`` prints of a toy world -- :func:`measure_quality` of its base model with
    its own judge and :func:`text_geometry` -- and the held-out images it judged."""
    rows = held_out_prompts(samples_per_pair, seed)
    images = generate_images(toy.pipe, [r[0] for r in rows], [seed * 100_000 + i for i in range(len(rows))])
    report = measure_quality(toy.pipe, toy.judge, samples_per_pair, seed, images=images)
    report["text_encoder"] = text_geometry(toy.pipe)
    return report, images
