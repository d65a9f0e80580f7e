"""``params/toy.yaml``: how the toy world is built (:mod:`sdd.toy`)."""

from __future__ import annotations

from pydantic import Field

from sdd.config.common import _Strict


class ToyConfig(_Strict):
    """How the toy world is built (``sdd toy build``)."""

    seed: int = Field(0, ge=0, description="Seed of every random draw (numpy wants it non-negative).")
    clip_steps: int = Field(1200, ge=1, description="Contrastive pretraining steps of the mini-CLIP.")
    clip_batch_size: int = Field(128, ge=2, description="Image-caption pairs per CLIP step (the negatives).")
    clip_lr: float = Field(5e-4, gt=0, description="Peak learning rate of the mini-CLIP (cosine schedule).")
    vae_steps: int = Field(500, ge=1)
    unet_steps: int = Field(3000, ge=1)
    judge_steps: int = Field(800, ge=1)
    batch_size: int = Field(64, ge=1)
    caption_dropout: float = Field(0.2, ge=0, lt=1, description="Fraction of empty-caption (natural) examples.")
    partial_captions: float = Field(0.4, ge=0, lt=1, description="Fraction naming only colour or only shape.")

