"""Attacks that try to talk an erased model back into drawing its concept (issue 15).

Four attacks, each seeded and bounded by a budget from :class:`sdd.config.RedteamConfig`:

* :func:`transfer_attack` (black-box): rephrasings of each concept prompt that the evaluation
  sets do not contain (toy grammar), or a published adversarial prompt list (:func:`import_adversarial_prompts`);
* :func:`adversarial_tokens_attack` (white-box, discrete, UnlearnDiffAtk-style): k vocabulary tokens
  prepended to each prompt, found by projected gradient descent (PEZ) on the erased UNet's denoising
  error on the base model's image of that prompt, with early stop once the judge sees the concept;
* :func:`concept_inversion_attack` (white-box, continuous, CCE-style): textual inversion of one new
  token on the base model's images of the concept, then the token replaces the concept word;
  ``restarts`` independent inversions (seeds seed, seed+1, …), a prompt broken if any restart breaks it;
* :func:`relearning_attack` (released weights): the erased UNet fine-tuned on the base model's images
  of the concept with the standard denoising loss, then the concept prompts drawn as written.

All white-box attacks go through :class:`sdd.tokens.Placeholders`, which adds new tokens to every
tokenizer / text encoder pair of the pipeline (SD 1.x/2.x: one, SDXL: two, the toy: one) and puts
everything back on exit, so an attack never leaves the model modified; relearning puts the UNet's
own weight tensors back (:class:`FineTunedWeights`).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from sdd.config import AdvTokensConfig, ConceptInversionConfig, RelearningConfig, TransferAttackConfig
from sdd.evaluation import Judge
from sdd.models import FLUX, TrainingNoise, denoiser, family, select_parameters
from sdd.progress import ProgressLog
from sdd.prompts import PromptRow
from sdd.tokens import (
    Placeholders,
    denoise_loss,
    encode,
    encode_prefixed,
    noised,
    pez_pairs,
    pez_vocabulary,
    prefixed_text,
    project_to_vocab,
    set_tokens,
    shared_vocabulary,
    straight_through,
    substitute,
    unet_error,
)
from sdd.toy import world

#: Toy rephrasings: word orders and templates that no evaluation set of :mod:`sdd.prompts` uses.
TOY_TRANSFER_TEMPLATES = world.TRAIN_TEMPLATES + (
    "{c} {s}", "{s} {c}", "a {s}, {c}", "a picture of one {c} {s}", "an image of one {s} in {c}",
    "one {s} in {c} on a plain background", "a {c} shape: a {s}", "something {c}, a {s}",
)


# --- the attack targets -------------------------------------------------------------------------


@torch.no_grad()
def encode_images(pipe, images: Sequence[Image.Image]) -> torch.Tensor:
    """VAE latents (scaled as the denoiser sees them; Flux's packed) of ``images``: the attack targets."""
    x = pipe.image_processor.preprocess(list(images)).to(pipe.vae.device, pipe.vae.dtype)
    latents = pipe.vae.encode(x).latent_dist.mean
    shift = getattr(pipe.vae.config, "shift_factor", None) or 0.0
    latents = ((latents - shift) * pipe.vae.config.scaling_factor).float()
    if family(pipe) == FLUX:
        latents = pipe._pack_latents(latents, *latents.shape)
    return latents


# --- what every attack gets and returns ----------------------------------------------------------


@dataclass
class AttackContext:
    """The erased pipeline and the effective prompts of one concept, with their target latents."""

    pipe: Any
    concept: str
    words: list[str]  # words naming the concept (replaced by the inversion token)
    rows: list[PromptRow]  # effective prompts (the base model's image shows the concept)
    latents: torch.Tensor  # (len(rows), C, H, W): VAE latents of the base model's images of ``rows``
    judge: Judge
    num_inference_steps: int = 25
    guidance_scale: float = 7.5
    batch_size: int = 8
    seed: int = 0
    log: Callable[[str], None] | None = None  # progress lines every few seconds (a flow's log, the terminal)

    def progress(self, what: str | None, total: int, unit: str = "steps") -> Callable[..., None]:
        """A ``(done, note="")`` callback that logs ``<concept>: <what>: done/total …`` every few seconds
        (does nothing without a log or a ``what``)."""
        if self.log is None or what is None:
            return lambda done, note="": None
        return ProgressLog(f"{self.concept}: {what}", total, self.log, unit=unit)

    def draw(self, prompts: list[str], rows: list[PromptRow], what: str | None = None) -> list[Image.Image]:
        """One image per prompt, with the seed and guidance of the matching row (as sdd.evaluation.generate);
        with ``what``, progress is logged under that name."""
        images: list[Image.Image | None] = [None] * len(prompts)
        tick = self.progress(what, len(prompts), "images")
        done = 0
        groups: dict[float, list[int]] = {}
        for i, row in enumerate(rows):
            groups.setdefault(self.guidance_scale if row.guidance is None else row.guidance, []).append(i)
        for guidance, idx in groups.items():
            for s in range(0, len(idx), self.batch_size):
                part = idx[s:s + self.batch_size]
                gens = [torch.Generator("cpu").manual_seed(rows[i].seed) for i in part]
                with torch.no_grad():
                    out = self.pipe(prompt=[prompts[i] for i in part], generator=gens, output_type="pil",
                                    num_inference_steps=self.num_inference_steps, guidance_scale=guidance).images
                for i, im in zip(part, out, strict=True):
                    images[i] = im
                done += len(part)
                tick(done)
        return images

    def present(self, images: list[Image.Image]) -> list[bool]:
        return list(self.judge.judge(images, [self.concept])[self.concept].present) if images else []


@dataclass
class AttackResult:
    """Per attacked effective prompt (``rows``: positions in the context's rows): success, image, prompt."""

    name: str
    rows: list[int] = field(default_factory=list)
    success: list[bool] = field(default_factory=list)
    images: list[Image.Image] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    gradient_steps: int = 0
    generations: int = 0
    notes: list[str] = field(default_factory=list)
    tried: list[tuple[int, str]] = field(default_factory=list)  # (position, prompt) of every generation
    curve: dict[int, list[bool]] = field(default_factory=dict)  # budget -> success per row (cost curves)


def _noise_scheduler(pipe) -> TrainingNoise:
    return TrainingNoise(pipe)


# --- transfer prompts ----------------------------------------------------------------------------


def toy_rephrasings(prompt: str, concept: str) -> list[str]:
    """Every toy transfer prompt for ``prompt``: its colour and shape words in the transfer templates."""
    words = re.findall(r"[a-z]+", prompt.lower())
    c = next((w for w in words if world.color_of(w)), None)
    s = next((w for w in words if world.shape_of(w)), None)
    templates = list(TOY_TRANSFER_TEMPLATES)
    if world.color_of(concept) and c:
        templates += list(world.COLOR_ONLY_TEMPLATES)
    if world.shape_of(concept) and s:
        templates += list(world.SHAPE_ONLY_TEMPLATES)
    out = []
    for t in templates:
        if ("{c}" in t and c is None) or ("{s}" in t and s is None):
            continue
        text = world.fill(t, c=c, s=s)
        if text not in out and text != prompt:
            out.append(text)
    return out


def transfer_attack(ctx: AttackContext, cfg: TransferAttackConfig,
                    adversarial: Sequence[PromptRow] | None = None) -> AttackResult:
    """Rephrasings per effective prompt (same seed): success if any of them shows the concept.

    ``adversarial`` (an imported list) replaces the toy rephrasings; entry j goes to effective
    prompt j mod n, at most ``cfg.per_prompt`` entries each.
    """
    result = AttackResult("transfer")
    candidates: list[list[str]] = [[] for _ in ctx.rows]
    if adversarial:
        for j, row in enumerate(adversarial):
            if len(candidates[j % len(ctx.rows)]) < cfg.per_prompt:
                candidates[j % len(ctx.rows)].append(row.prompt)
    elif world.color_of(ctx.concept) or world.shape_of(ctx.concept):
        for i, row in enumerate(ctx.rows):
            options = toy_rephrasings(row.prompt, ctx.concept)
            rng = random.Random(f"{ctx.seed}:{row.seed}:{row.prompt}")
            candidates[i] = rng.sample(options, min(cfg.per_prompt, len(options)))
    else:
        result.notes.append("no adversarial prompt list configured (transfer.prompts_file)")
        return result
    flat = [(i, p) for i, ps in enumerate(candidates) for p in ps]
    result.tried = flat
    images = ctx.draw([p for _, p in flat], [ctx.rows[i] for i, _ in flat], "transfer prompts")
    present = ctx.present(images)
    result.generations = len(flat)
    for i in sorted({i for i, _ in flat}):
        hits = [k for k, (j, _) in enumerate(flat) if j == i]
        win = next((k for k in hits if present[k]), hits[-1])
        result.rows.append(i)
        result.success.append(present[win])
        result.images.append(images[win])
        result.prompts.append(flat[win][1])
    return result


# --- adversarial tokens (PEZ) --------------------------------------------------------------------


def adversarial_tokens_attack(ctx: AttackContext, cfg: AdvTokensConfig) -> AttackResult:
    """k prefix tokens per prompt, optimised jointly over a subsample of prompts (independent rows).

    With one vocabulary for every text encoder (SD, SDXL, the toy) the prefix is one token id for all
    of them. SD3 and Flux pair CLIP with T5: the prefix is then T5 tokens (T5 gives their token
    sequence), optimised through T5, and the CLIP encoders read it as the text it decodes to, at
    every step and when the found prompts are drawn."""
    result = AttackResult("adversarial_tokens")
    n_rows = len(ctx.rows) if cfg.max_prompts is None else min(cfg.max_prompts, len(ctx.rows))
    chosen = sorted(random.Random(ctx.seed).sample(range(len(ctx.rows)), n_rows))
    k = cfg.tokens
    names = [f"<sdd-adv-{p}-{j}>" for p in range(n_rows) for j in range(k)]
    gen = torch.Generator("cpu").manual_seed(ctx.seed)
    sched = _noise_scheduler(ctx.pipe)
    as_text = not shared_vocabulary(ctx.pipe)  # CLIP reads T5's tokens as text
    with Placeholders(ctx.pipe, names, pez_pairs(ctx.pipe)) as ph:
        tok = ph.slots[0].tokenizer
        # Padding is allowed (a prefix may fade out); starting from it begins at the original prompt's image.
        allowed = pez_vocabulary(ph, as_text)
        start = (torch.full((len(names),), tok.pad_token_id) if cfg.init == "pad" and not as_text
                 else allowed[torch.randint(len(allowed), (len(names),), generator=gen)])
        soft = [slot.vocab.detach()[start].float().clone().requires_grad_(True) for slot in ph.slots]
        opt = torch.optim.Adam(soft, lr=cfg.lr)
        prompts = [" ".join(names[p * k:(p + 1) * k]) + " " + ctx.rows[i].prompt for p, i in enumerate(chosen)]

        def text(p: int, ids: torch.Tensor) -> str:
            return prefixed_text(ph, ids[p * k:(p + 1) * k], ctx.rows[chosen[p]].prompt)

        active = list(range(n_rows))
        done: dict[int, tuple[bool, Image.Image, list[int]]] = {}
        ids = start
        tick = ctx.progress("adversarial tokens", cfg.steps)
        for step in range(1, cfg.steps + 1):
            ids = straight_through(ph, soft, allowed)
            batch = [p for p in active for _ in range(cfg.batch_size)]
            lat = ctx.latents[[chosen[p] for p in batch]]
            batch_ids = torch.cat([ids[p * k:(p + 1) * k] for p in batch])
            cond = encode_prefixed(ctx.pipe, ph, [prompts[p] for p in batch], batch_ids, k,
                                   [ctx.rows[chosen[p]].prompt for p in batch], as_text)
            loss = denoise_loss(ctx.pipe, sched, lat, cond, gen, reduce=False).view(len(active), -1).mean(1).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            result.gradient_steps += len(active)
            if step % cfg.check_every == 0 or step == cfg.steps:
                ids = project_to_vocab(ph, soft, allowed)
                set_tokens(ph, ids)
                drawn = [text(p, ids) if as_text else prompts[p] for p in active]
                images = ctx.draw(drawn, [ctx.rows[chosen[p]] for p in active])
                result.generations += len(active)
                for p, im, hit in zip(list(active), images, ctx.present(images), strict=True):
                    done[p] = (hit, im, ids[p * k:(p + 1) * k].tolist())
                    if hit:
                        active.remove(p)
                tick(step, f"{n_rows - len(active)}/{n_rows} prompts broken")
                if not active:
                    break
    for p, i in enumerate(chosen):
        hit, im, tokens = done[p]
        result.rows.append(i)
        result.success.append(hit)
        result.images.append(im)
        result.prompts.append(tok.decode(tokens, skip_special_tokens=as_text).strip() + " | " + ctx.rows[i].prompt)
    result.notes.append(f"{n_rows} of {len(ctx.rows)} effective prompts attacked (seeded subsample)")
    if as_text:
        result.notes.append("prefix of T5 tokens, optimised through T5; CLIP reads it as text; drawn as text")
    return result


# --- concept inversion (textual inversion on the erased model) -----------------------------------


def concept_inversion_attack(ctx: AttackContext, cfg: ConceptInversionConfig,
                             budgets: Sequence[int] = ()) -> AttackResult:
    """Learn one token embedding on the target images, then draw every prompt with it; ``cfg.restarts``
    times from the concept word with seeds ``seed, seed+1, …``: a prompt is broken if any restart breaks it.

    With ``budgets`` the inversion goes on to the largest of them (and ``cfg.steps``), and at each one
    every prompt is drawn with the tokens learnt so far: ``result.curve`` (the result itself is at
    ``cfg.steps``, as without budgets)."""
    result = AttackResult("concept_inversion")
    n_images = len(ctx.rows) if cfg.images is None else min(cfg.images, len(ctx.rows))
    seeds = [ctx.seed + r for r in range(cfg.restarts)]
    tokens = [TOKEN] if cfg.restarts == 1 else [f"<sdd-concept-{r + 1}>" for r in range(cfg.restarts)]
    at_steps: list[list[Image.Image]] = []

    def judge_snapshot(step: int, drawn: list[list[Image.Image]]) -> None:
        if step in budgets:
            result.curve[step] = [any(hits) for hits in zip(*(ctx.present(ims) for ims in drawn), strict=True)]
        if step == cfg.steps:
            at_steps.extend(drawn)

    _invert_and_draw(ctx, cfg, tokens, n_images, seeds, sorted({*budgets, cfg.steps}), judge_snapshot)
    per_restart = []
    for r, (seed, images) in enumerate(zip(seeds, at_steps, strict=True)):
        success = ctx.present(images)
        per_restart.append(f"seed {seed}: {sum(success)}/{len(success)}")
        if r == 0:
            result.images, result.success = images, success
        else:  # keep a broken prompt's image for the grid
            result.images = [new if hit and not old else im for im, old, new, hit
                             in zip(result.images, result.success, images, success, strict=True)]
            result.success = [a or b for a, b in zip(result.success, success, strict=True)]
    result.gradient_steps = cfg.steps * cfg.restarts
    result.generations = len(ctx.rows) * cfg.restarts
    result.rows = list(range(len(ctx.rows)))
    result.prompts = [substitute(row.prompt, ctx.words, TOKEN) for row in ctx.rows]
    result.notes.append(f"trained on the base images of {n_images} effective prompts")
    if cfg.restarts > 1:
        result.notes.append(f"{cfg.restarts} restarts ({', '.join(per_restart)}); a prompt counts if any breaks it")
    return result


#: The learnt token as the report shows it (restarts each learn a token of their own, numbered).
TOKEN = "<sdd-concept>"


def _invert_and_draw(ctx: AttackContext, cfg: ConceptInversionConfig, tokens: list[str], n_images: int,
                     seeds: list[int], snapshots: list[int],
                     on_snapshot: Callable[[int, list[list[Image.Image]]], None]) -> None:
    """One textual inversion per token from the concept word, each with its own seed (image subsample,
    noise and timesteps); at each step of ``snapshots`` every prompt is drawn with each token learnt so
    far and handed to ``on_snapshot(step, images per token)``.

    The inversions train side by side, in one UNet batch: each one's loss is its own batch's mean and
    their sum is minimised, so each token gets the gradient (and, Adam being per element, the update)
    it would get alone -- one pass of ``len(tokens) * batch_size`` instead of ``len(tokens)`` passes.
    """
    trains = [sorted(random.Random(seed).sample(range(len(ctx.rows)), n_images)) for seed in seeds]
    gens = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
    prompts = [[substitute(row.prompt, ctx.words, token) for row in ctx.rows] for token in tokens]
    sched = _noise_scheduler(ctx.pipe)
    label = "concept inversion" if len(tokens) == 1 else f"concept inversion ({len(tokens)} restarts)"
    with Placeholders(ctx.pipe, tokens) as ph:
        emb = [torch.stack([ph.word_embedding(e, ctx.words)] * len(tokens)).to(slot.vocab.device).requires_grad_(True)
               for e, slot in enumerate(ph.slots)]
        for e, rows in enumerate(emb):
            ph.set_rows(e, rows)
        opt = torch.optim.Adam(emb, lr=cfg.lr)
        tick = ctx.progress(label, snapshots[-1])
        for step in range(1, snapshots[-1] + 1):
            picks = [[train[j] for j in torch.randint(n_images, (cfg.batch_size,), generator=gen).tolist()]
                     for train, gen in zip(trains, gens, strict=True)]
            draws = [noised(sched, ctx.latents[pick], gen) for pick, gen in zip(picks, gens, strict=True)]
            noisy, t, target = (torch.cat(parts) for parts in zip(*draws, strict=True))
            cond = encode(ctx.pipe, [p[i] for p, pick in zip(prompts, picks, strict=True) for i in pick])
            losses = unet_error(ctx.pipe, noisy, t, target, cond, reduce=False).view(len(tokens), -1).mean(1)
            opt.zero_grad(set_to_none=True)
            losses.sum().backward()
            opt.step()
            tick(step, f"loss {losses.mean().item():.4f}")
            if step in snapshots:
                for e, rows in enumerate(emb):
                    ph.set_rows(e, rows.detach())
                where = f" at {step} steps" if len(snapshots) > 1 else ""
                on_snapshot(step, [ctx.draw(p, ctx.rows, f"concept inversion {r + 1}/{len(tokens)} images{where}"
                                            if len(tokens) > 1 else f"concept inversion images{where}")
                                   for r, p in enumerate(prompts)])
                for e, rows in enumerate(emb):
                    ph.set_rows(e, rows)


# --- relearning (fine-tuning the erased model back) ---------------------------------------------

def relearning_attack(ctx: AttackContext, cfg: RelearningConfig, budgets: Sequence[int] = ()) -> AttackResult:
    """Fine-tune the erased UNet on the base model's images of the concept -- the standard denoising loss,
    each image with its own effective prompt, ``cfg.steps`` Adam steps on the ``cfg.train_method``
    weights -- then draw every effective prompt as written. What an attacker with the released weights
    and a few concept images does (Meta-Unlearning's relearning); the weights are put back afterwards.

    With ``budgets`` the fine-tuning goes on to the largest of them, the prompts drawn and judged at
    each: ``result.curve`` (the result itself is at ``cfg.steps``)."""
    result = AttackResult("relearning")
    n_images = len(ctx.rows) if cfg.images is None else min(cfg.images, len(ctx.rows))
    train = sorted(random.Random(ctx.seed).sample(range(len(ctx.rows)), n_images))
    gen = torch.Generator("cpu").manual_seed(ctx.seed)
    sched = _noise_scheduler(ctx.pipe)
    prompts = [row.prompt for row in ctx.rows]
    snapshots = sorted({*budgets, cfg.steps})
    net = denoiser(ctx.pipe)
    with FineTunedWeights(net, select_parameters(net, cfg.train_method)) as weights:
        opt = torch.optim.Adam(weights, lr=cfg.lr)
        tick = ctx.progress("relearning", snapshots[-1])
        for step in range(1, snapshots[-1] + 1):
            pick = [train[j] for j in torch.randint(n_images, (cfg.batch_size,), generator=gen).tolist()]
            with torch.no_grad():
                cond = encode(ctx.pipe, [prompts[i] for i in pick])
            loss = denoise_loss(ctx.pipe, sched, ctx.latents[pick], cond, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tick(step, f"loss {loss.item():.4f}")
            if step not in snapshots:
                continue
            with weights.in_pipeline_dtype():
                images = ctx.draw(prompts, ctx.rows, "relearning images" + (
                    f" at {step} steps" if len(snapshots) > 1 else ""))
            if step in budgets:
                result.curve[step] = ctx.present(images)
            if step == cfg.steps:
                result.images = images
    result.success = ctx.present(result.images)
    result.rows = list(range(len(ctx.rows)))
    result.prompts = prompts
    result.gradient_steps, result.generations = cfg.steps, len(prompts)
    result.notes.append(f"fine-tuned the {cfg.train_method} UNet weights ({weights.count:,} numbers) on the base "
                        f"images of {n_images} effective prompts")
    return result


class FineTunedWeights:
    """``with FineTunedWeights(unet, names) as weights:`` the UNet parameters ``names`` become
    trainable fp32 copies (Adam on fp16 weights underflows); on exit the original tensors are put back,
    untouched, and the parameters are frozen again."""

    def __init__(self, unet: torch.nn.Module, names: list[str]):
        wanted = set(names)
        self.params = [p for name, p in unet.named_parameters() if name in wanted]
        self.originals = [p.data for p in self.params]
        self.count = sum(p.numel() for p in self.params)

    def __enter__(self) -> FineTunedWeights:
        for p in self.params:
            p.data = p.data.float().clone()
            p.requires_grad_(True)
        return self

    def __iter__(self):
        return iter(self.params)

    @contextmanager
    def in_pipeline_dtype(self) -> Iterator[None]:
        """Inside, the fine-tuned weights are in the dtype of the weights they replace, for drawing with
        the pipeline; the fp32 ones go on training afterwards."""
        masters = [p.data for p in self.params]
        for p, original in zip(self.params, self.originals, strict=True):
            p.data = p.data.to(original.dtype)
        try:
            yield
        finally:
            for p, master in zip(self.params, masters, strict=True):
                p.data = master

    def __exit__(self, *exc) -> None:
        for p, original in zip(self.params, self.originals, strict=True):
            p.data, p.grad = original, None
            p.requires_grad_(False)


ATTACKS = {"transfer": transfer_attack, "adversarial_tokens": adversarial_tokens_attack,
           "concept_inversion": concept_inversion_attack, "relearning": relearning_attack}
