"""The retention term: benign prompts keep the frozen base model's predictions while a concept is erased.

SDD's update moves whatever the erased prompts' cross-attention inputs share with other prompts'.
Where the text encoder spreads a family of concepts apart (contrastive pretraining puts four shapes
or five colours near a simplex, each opposed to the rest), the map that sends one of them to the
unconditional output also sends the others towards it: erasing "triangle" drew circles as crosses
and triangles on the toy world (docs/toy-world.md). Like the preservation terms of MACE, UCE or
AdvUnlearn's utility loss, retention adds

    weight · ‖ε_student(x_t, c_b, t) − sg(ε_base(x_t, c_b, t))‖²

for benign prompts c_b (``retention.prompts``), at x_t = noised final latents that the frozen base
model drew for them once, before the first step (kept in the checkpoint). When the text encoder
trains, c_b goes through the student's text encoder for the prediction and through the frozen base
text encoder for the target. Prompts naming a concept being erased are left out: held at the base,
they would pull the concept back.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from sdd.errors import ConfigError
from sdd.models import TrainingNoise, predict
from sdd.tokens import words_pattern

if TYPE_CHECKING:
    from sdd.erasure.engine import Distiller

logger = logging.getLogger("sdd.distill")


class Retention:
    """The retention term of one :class:`sdd.erasure.engine.Distiller` run."""

    def __init__(self, distiller: Distiller):
        self.d, self.cfg = distiller, distiller.config.retention
        self.prompts = benign_only(self.cfg.prompts, distiller.concepts)
        if not self.prompts:
            raise ConfigError("retention.prompts: every prompt names a concept being erased; "
                              "give benign prompts (none naming the concepts)")
        self.noise = TrainingNoise(distiller.pipe)
        self.target_prompts = cycle(self.prompts, self.cfg.targets)  # the prompt of each latent
        self.latents: torch.Tensor | None = None  # (targets, C, H, W), drawn by the base before step 0
        self.last_loss = 0.0

    def draw_latents(self) -> torch.Tensor:
        """The frozen base model's final DDIM latents for the benign prompts (the Distiller's guidance)."""
        return self.d.draw_base_latents(self.target_prompts)

    def loss(self) -> torch.Tensor:
        """w · MSE(student, frozen base) on a batch of noised benign latents with their prompts."""
        cfg, d = self.cfg, self.d
        idx = torch.randint(len(self.latents), (cfg.batch,), generator=d.generator).tolist()
        x0 = self.latents[idx].to(d.device)
        noise = torch.randn(x0.shape, generator=d.generator).to(d.device, x0.dtype)
        t = self.noise.timesteps(len(idx), d.generator).to(d.device)
        noisy = self.noise.add_noise(x0, noise, t)
        prompts = [self.target_prompts[i] for i in idx]
        with torch.no_grad():
            target = predict(d.base, noisy, t, d.base_conditioner.encode(prompts))
        # Through the student's text encoder when it trains: what keeps it from collapsing every prompt.
        pred = predict(d.student, noisy, t, d.encode_student(prompts))
        loss = cfg.weight * F.mse_loss(pred.float(), target.float())
        self.last_loss = loss.item()
        return loss

    def summary(self) -> dict:
        return {"prompts": len(self.prompts), "latents": 0 if self.latents is None else len(self.latents),
                "weight": self.cfg.weight, "last_loss": self.last_loss}


def benign_only(prompts: list[str], concepts) -> list[str]:
    """``prompts`` without those naming a concept being erased (its name or one of its prompts, as
    whole words): kept close to the base model, they would pull the erased concept back."""
    pattern = words_pattern({w for c in concepts for w in [c.name, *c.prompts]})
    kept = [p for p in prompts if not pattern.search(p)]
    if len(kept) < len(prompts):
        logger.warning("retention: %d of %d prompts name a concept being erased and are left out",
                       len(prompts) - len(kept), len(prompts))
    return kept


def cycle(items: list[str], n: int) -> list[str]:
    return [items[i % len(items)] for i in range(n)]
