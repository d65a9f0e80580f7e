"""Build the toy world from a seed: tokenizer, mini-CLIP, VAE, UNet, judge; save them.

The result is an ordinary ``StableDiffusionPipeline`` folder (``pipeline/``) that loads with
``StableDiffusionPipeline.from_pretrained(dir)`` like any real model, the whole mini-CLIP
(``clip/``, ``CLIPModel.from_pretrained``) and the judge (``judge/``). Everything is trained from
scratch here, on 2 CPU cores, in the order Stable Diffusion's parts were:

1. a word-level BPE tokenizer fitted to the caption vocabulary (plus every printable ASCII
   character, so any prompt tokenizes);
2. a mini-CLIP pretrained contrastively on toy images and captions (``sdd.toy.clip``), then
   frozen; its text tower is the pipeline's ``text_encoder``;
3. a small ``AutoencoderKL`` (32x32x3 <-> 8x8x4);
4. a small ``UNet2DConditionModel`` trained on the frozen text tower's hidden states with the
   standard epsilon objective, with caption dropout so classifier-free guidance (and SDD) work;
5. the judge (``sdd.toy.judge``).
"""

from __future__ import annotations

import collections
import json
import random
import string
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import CLIPTextModel, CLIPTokenizer

from sdd.config import ToyConfig
from sdd.toy import world
from sdd.toy.clip import MAX_TOKENS, TEXT_DIM, cosine_lr, save_clip, text_encoder_of, train_clip, zero_shot_accuracy
from sdd.toy.judge import judge_accuracy, train_judge

LATENT_CHANNELS = 4


def _log_default(msg: str) -> None:
    print(msg, flush=True)


# --------------------------------------------------------------------------- tokenizer
def caption_corpus() -> list[str]:
    """Every word the toy world's captions can use, in caption-like lines."""
    rng = random.Random(0)
    lines = []
    for template in world.TRAIN_TEMPLATES + world.HELDOUT_TEMPLATES:
        for color in world.COLOR_NAMES:
            for shape in world.SHAPE_NAMES:
                lines.append(world.caption(color, shape, template, rng))
    for names, _ in world.COLORS.values():
        lines += [world.fill(t, c=n) for t in world.COLOR_ONLY_TEMPLATES for n in names]
    for names in world.SHAPES.values():
        lines += [world.fill(t, s=n) for t in world.SHAPE_ONLY_TEMPLATES for n in names]
    # every printable character as a word of its own, so "</w>"-final pieces exist for any text
    lines.append(" ".join(string.ascii_lowercase + string.digits + string.punctuation))
    return lines


def build_tokenizer(directory: Path) -> CLIPTokenizer:
    """Fit a CLIP-style BPE (words end in ``</w>``) to the captions; save vocab.json/merges.txt."""
    bpe = Tokenizer(models.BPE(unk_token="<|endoftext|>", end_of_word_suffix="</w>"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|startoftext|>", "<|endoftext|>"],
        initial_alphabet=list(string.ascii_lowercase + string.digits + string.punctuation),
        end_of_word_suffix="</w>", show_progress=False)
    bpe.train_from_iterator([line.lower() for line in caption_corpus()], trainer)
    directory.mkdir(parents=True, exist_ok=True)
    bpe.model.save(str(directory))  # vocab.json + merges.txt
    merges = (directory / "merges.txt").read_text().splitlines()
    if not merges or not merges[0].startswith("#version"):
        (directory / "merges.txt").write_text("\n".join(["#version: 0.2", *merges]) + "\n")
    tokenizer = CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"),
                              model_max_length=MAX_TOKENS)
    return tokenizer


# --------------------------------------------------------------------------- models
def build_vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=LATENT_CHANNELS,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 32), layers_per_block=1, norm_num_groups=8,
        mid_block_add_attention=False, sample_size=world.IMAGE_SIZE)


def build_unet(sample_size: int) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
        block_out_channels=(32, 64, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_DIM, attention_head_dim=8, norm_num_groups=16)


def build_scheduler() -> DDIMScheduler:
    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         num_train_timesteps=1000, clip_sample=False, set_alpha_to_one=False,
                         steps_offset=1, prediction_type="epsilon")


# --------------------------------------------------------------------------- training
def _to_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) in [0, 1] -> (N, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous() * 2 - 1


def train_vae(cfg: ToyConfig, log: Callable[[str], None]) -> AutoencoderKL:
    vae = build_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=2e-3, weight_decay=0.0)
    sched = cosine_lr(opt, cfg.vae_steps)
    vae.train()
    for step in range(cfg.vae_steps):
        images, *_ = world.sample_batch(cfg.batch_size, seed=cfg.seed * 7919 + step, natural_fraction=0.5)
        x = _to_tensor(images)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        kl = posterior.kl().mean() / x[0].numel()
        loss = F.mse_loss(recon, x) + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 200 == 0 or step == cfg.vae_steps - 1:
            log(f"vae   step {step:5d}/{cfg.vae_steps}  loss {loss.item():.5f}")
    return vae.eval()


@torch.no_grad()
def encode_pool(vae: AutoencoderKL, n: int, seed: int, natural: bool):
    """Encode ``n`` fresh scenes to latent means; keep their colour/shape labels for captions."""
    latents, colors, shapes = [], [], []
    for start in range(0, n, 256):
        images, _, c, s = world.sample_batch(min(256, n - start), seed=seed + start,
                                             natural_fraction=1.0 if natural else 0.0)
        latents.append(vae.encode(_to_tensor(images)).latent_dist.mean)
        colors += c
        shapes += s
    return torch.cat(latents), colors, shapes


def _captioned_example(i: int, colors: list[str], shapes: list[str], by_pair: dict[tuple[str, str], list[int]],
                       rng: random.Random, partial: float) -> tuple[int, str]:
    """A pool index and its caption: usually both attributes named, sometimes only one.

    A partial caption leaves one attribute unsaid, and the image then has it at its *natural*
    frequency: "a circle" is rarely red, as red is rare. (With balanced pictures behind partial
    captions, a perfectly erased "red circle" -- drawn as "a circle" -- would still be red one
    time in five.)
    """
    color, shape = colors[i], shapes[i]
    if rng.random() >= partial:
        return i, world.caption(color, shape, rng.choice(world.TRAIN_TEMPLATES), rng, unet=True)
    if rng.random() < 0.5:
        shape = world.natural_choice(world.NATURAL_SHAPE_FREQ, rng)
        text = world.fill(rng.choice(world.COLOR_ONLY_TEMPLATES), c=rng.choice(world.unet_color_names(color)))
    else:
        color = world.natural_choice(world.NATURAL_COLOR_FREQ, rng)
        text = world.fill(rng.choice(world.SHAPE_ONLY_TEMPLATES), s=rng.choice(world.SHAPES[shape]))
    return rng.choice(by_pair[color, shape]), text


class TextStates:
    """The frozen text encoder's hidden states for captions, computed once per distinct caption.

    The captions come from a finite set of templates and names, so caching them makes the frozen
    encoder's cost vanish from UNet training without changing what the UNet sees.
    """

    def __init__(self, tokenizer: CLIPTokenizer, encoder: CLIPTextModel):
        self.tokenizer, self.encoder, self.cache = tokenizer, encoder, {}

    @torch.no_grad()
    def __call__(self, captions: list[str]) -> torch.Tensor:
        missing = sorted({c for c in captions if c not in self.cache})
        if missing:
            # padded to the full context, as StableDiffusionPipeline encodes a prompt
            ids = self.tokenizer(missing, padding="max_length", max_length=MAX_TOKENS, truncation=True,
                                 return_tensors="pt").input_ids
            self.cache.update(zip(missing, self.encoder(ids)[0], strict=True))
        return torch.stack([self.cache[c] for c in captions])


def train_unet(vae: AutoencoderKL, text_states: TextStates, cfg: ToyConfig,
               log: Callable[[str], None]) -> tuple[UNet2DConditionModel, float]:
    """Train the UNet on the frozen text encoder's states; returns it and the latent scaling factor."""
    pool_size = max(4096, cfg.batch_size * 64)
    balanced, b_colors, b_shapes = encode_pool(vae, pool_size, seed=cfg.seed * 104729 + 1, natural=False)
    natural, *_ = encode_pool(vae, pool_size // 4, seed=cfg.seed * 104729 + 2, natural=True)
    by_pair = collections.defaultdict(list)
    for i, pair in enumerate(zip(b_colors, b_shapes, strict=True)):
        by_pair[pair].append(i)
    scaling = float(1.0 / torch.cat([balanced, natural]).std())
    balanced, natural = balanced * scaling, natural * scaling
    log(f"latents: {tuple(balanced.shape[1:])}, scaling factor {scaling:.4f}")

    unet = build_unet(balanced.shape[-1])
    scheduler = build_scheduler()
    params = list(unet.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4)
    sched = cosine_lr(opt, cfg.unet_steps, warmup=200)
    rng, gen = random.Random(cfg.seed), torch.Generator().manual_seed(cfg.seed)
    alphas = scheduler.alphas_cumprod
    unet.train()
    start = time.time()
    for step in range(cfg.unet_steps):
        n_uncond = int(round(cfg.batch_size * cfg.caption_dropout))
        idx = torch.randint(len(balanced), (cfg.batch_size - n_uncond,), generator=gen)
        uidx = torch.randint(len(natural), (n_uncond,), generator=gen)
        examples = [_captioned_example(i, b_colors, b_shapes, by_pair, rng, cfg.partial_captions)
                    for i in idx.tolist()]
        idx = torch.tensor([i for i, _ in examples], dtype=torch.long)
        captions = [text for _, text in examples] + [""] * n_uncond
        x0 = torch.cat([balanced[idx], natural[uidx]])
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(x0),), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        a = alphas[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        pred = unet(zt, t, encoder_hidden_states=text_states(captions)).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % 250 == 0 or step == cfg.unet_steps - 1:
            rate = (step + 1) / (time.time() - start)
            log(f"unet  step {step:5d}/{cfg.unet_steps}  loss {loss.item():.4f}  {rate:.1f} it/s")
    return unet.eval(), scaling


def build_toy_world(out_dir: Path, cfg: ToyConfig | None = None,
                    log: Callable[[str], None] = _log_default) -> dict:
    """Train every part of the toy world and save it under ``out_dir`` (pipeline/, clip/, judge/)."""
    cfg = cfg or ToyConfig()
    out_dir = Path(out_dir)
    torch.manual_seed(cfg.seed)
    timings: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        timings[f"{name}_s"] = round(time.time() - since, 1)
        return time.time()

    t0 = t = time.time()
    tokenizer = build_tokenizer(out_dir / "pipeline" / "tokenizer")
    clip = train_clip(tokenizer, cfg, log)
    save_clip(clip, tokenizer, out_dir / "clip")
    clip_report = zero_shot_accuracy(clip, tokenizer)
    log(f"mini-CLIP zero-shot on fresh images: {clip_report}")
    t = lap("clip", t)
    vae = train_vae(cfg, log)
    t = lap("vae", t)
    text_encoder = text_encoder_of(clip)
    unet, scaling = train_unet(vae, TextStates(tokenizer, text_encoder), cfg, log)
    vae.register_to_config(scaling_factor=scaling)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=build_scheduler(), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(out_dir / "pipeline")
    t = lap("unet", t)
    judge = train_judge(cfg.judge_steps, cfg.batch_size, cfg.seed, log=log)
    accuracy = judge_accuracy(judge)
    judge.save(out_dir / "judge", report=accuracy)
    lap("judge", t)
    timings["total_s"] = round(time.time() - t0, 1)
    report = {"config": cfg.model_dump(), "clip_zero_shot": clip_report, "judge": accuracy, "timings": timings}
    (out_dir / "build.json").write_text(json.dumps(report, indent=2) + "\n")
    log(f"toy world built in {timings['total_s']:.0f} s: judge {accuracy}")
    return report
