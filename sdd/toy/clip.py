"""The toy world's mini-CLIP: a text tower and an image tower pretrained contrastively, then frozen.

Stable Diffusion's text encoder is the text tower of a CLIP model that was trained before the
diffusion model existed, on image-caption pairs, with the contrastive (InfoNCE) loss; the UNet is
then trained on its frozen hidden states. The toy world is built the same way, at toy size:

* the text tower is a real ``CLIPTextModel``: ``TEXT_LAYERS`` transformer layers with causal
  attention, learned position embeddings and end-token pooling, ``TEXT_DIM`` wide (the UNet's
  cross-attention width), on the toy BPE tokenizer;
* the image tower is a small ``CLIPVisionModel`` (a ViT on 8x8 patches of the 32x32 images);
* both are trained from random initialisation with CLIP's own loss (``CLIPModel(return_loss=True)``)
  on freshly drawn toy images and their captions: the training templates and the partial captions
  (only the colour or only the shape named), never the held-out templates.

Nothing is placed by hand: whatever geometry the text states have (synonyms close, colours apart,
the empty prompt's states) comes from the contrastive training, as in CLIP. The trained model is
saved as a ``CLIPModel`` folder with a ``CLIPProcessor`` (``CLIPModel.from_pretrained`` and
``CLIPProcessor.from_pretrained`` load it), so the CLIP score and the CLIP zero-shot judge can use it
where a real CLIP would be used.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionConfig,
)

from sdd.config import ToyConfig
from sdd.toy import world

MAX_TOKENS = 24  # captions are at most ~10 words; the text tower's context is this long
TEXT_DIM = 256  # text width = the UNet's cross-attention width (SD 1.x: 768, 12 layers)
TEXT_LAYERS = 4
VISION_DIM = 128
PATCH_SIZE = 8
PROJECTION_DIM = 128
#: pixel normalisation of the image tower: [0, 1] -> [-1, 1]
IMAGE_MEAN = IMAGE_STD = (0.5, 0.5, 0.5)


def build_clip(tokenizer: CLIPTokenizer) -> CLIPModel:
    """A randomly initialised mini-CLIP for ``tokenizer``'s vocabulary."""
    text = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=TEXT_DIM, intermediate_size=2 * TEXT_DIM,
        num_hidden_layers=TEXT_LAYERS, num_attention_heads=4, max_position_embeddings=MAX_TOKENS,
        projection_dim=PROJECTION_DIM, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    vision = CLIPVisionConfig(
        hidden_size=VISION_DIM, intermediate_size=2 * VISION_DIM, num_hidden_layers=4, num_attention_heads=4,
        image_size=world.IMAGE_SIZE, patch_size=PATCH_SIZE, projection_dim=PROJECTION_DIM)
    return CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                                projection_dim=PROJECTION_DIM))


def image_processor() -> CLIPImageProcessor:
    """The processor that turns toy images (PIL or tensors in [0, 1]) into the image tower's input."""
    size = world.IMAGE_SIZE
    return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                              image_mean=list(IMAGE_MEAN), image_std=list(IMAGE_STD))


def pixel_values(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) float images in [0, 1] -> normalised (N, 3, H, W), as :func:`image_processor` does."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    mean, std = torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGE_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def cosine_lr(opt: torch.optim.Optimizer, steps: int, warmup: int = 100) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then cosine decay to 0: the schedule of every toy training loop."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))
    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def train_clip(tokenizer: CLIPTokenizer, cfg: ToyConfig,
               log: Callable[[str], None] = print) -> CLIPModel:
    """Pretrain the mini-CLIP contrastively on toy images and their (full or partial) captions."""
    torch.manual_seed(cfg.seed)
    clip = build_clip(tokenizer)
    opt = torch.optim.AdamW(clip.parameters(), lr=cfg.clip_lr, weight_decay=0.1, betas=(0.9, 0.98))
    sched = cosine_lr(opt, cfg.clip_steps)
    clip.train()
    start = time.time()
    for step in range(cfg.clip_steps):
        images, captions, *_ = world.sample_batch(cfg.clip_batch_size, seed=cfg.seed * 15485863 + step,
                                                  partial_fraction=cfg.partial_captions)
        # pad to the batch's longest caption: with causal attention the states up to the end token
        # (the pooled one) do not depend on what follows, so padding further changes nothing
        text = tokenizer(captions, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
        out = clip(input_ids=text.input_ids, attention_mask=text.attention_mask,
                   pixel_values=pixel_values(images), return_loss=True)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(clip.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 200 == 0 or step == cfg.clip_steps - 1:
            rate = (step + 1) / (time.time() - start)
            log(f"clip  step {step:5d}/{cfg.clip_steps}  loss {out.loss.item():.4f}  {rate:.1f} it/s")
    return clip.eval().requires_grad_(False)


def save_clip(clip: CLIPModel, tokenizer: CLIPTokenizer, directory: Path) -> None:
    """Write the mini-CLIP as ``CLIPModel`` + ``CLIPProcessor`` folder."""
    clip.save_pretrained(directory)
    CLIPProcessor(image_processor=image_processor(), tokenizer=tokenizer).save_pretrained(directory)


def text_encoder_of(clip: CLIPModel) -> CLIPTextModel:
    """The mini-CLIP's text tower as a frozen ``CLIPTextModel`` (what the pipeline's ``text_encoder`` is)."""
    encoder = CLIPTextModel(clip.config.text_config)
    encoder.load_state_dict(clip.text_model.state_dict())
    return encoder.requires_grad_(False).eval()


@torch.no_grad()
def zero_shot_accuracy(clip: CLIPModel, tokenizer: CLIPTokenizer, n: int = 500, seed: int = 54321) -> dict:
    """Zero-shot colour and shape accuracy on fresh images, with held-out-template prompts."""
    images, _, colors, shapes = world.sample_batch(n, seed=seed)
    feats = clip.get_image_features(pixel_values=pixel_values(images))
    feats = getattr(feats, "pooler_output", feats)
    feats = feats / feats.norm(dim=-1, keepdim=True)

    def classify(prompts: list[str]) -> list[int]:
        ids = tokenizer(prompts, padding=True, return_tensors="pt")
        text = clip.get_text_features(input_ids=ids.input_ids, attention_mask=ids.attention_mask)
        text = getattr(text, "pooler_output", text)
        text = text / text.norm(dim=-1, keepdim=True)
        return (feats @ text.T).argmax(-1).tolist()

    color_pred = classify([world.fill("an image showing a {c} shape", c=c) for c in world.COLOR_NAMES])
    shape_pred = classify([world.fill("an image showing a {s}", s=s) for s in world.SHAPE_NAMES])
    color_ok = [world.COLOR_NAMES[p] == c for p, c in zip(color_pred, colors, strict=True)]
    shape_ok = [world.SHAPE_NAMES[p] == s for p, s in zip(shape_pred, shapes, strict=True)]
    return {"color_accuracy": float(np.mean(color_ok)), "shape_accuracy": float(np.mean(shape_ok)), "n": n}
