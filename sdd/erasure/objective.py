"""The SDD objective (Kim et al. 2023) and what it trains.

The student UNet θ learns to predict, for a prompt naming the concept, what it predicts for the
empty prompt:

    L(θ) = || ε_θ(z_t, c_s, t) − sg[ε_θ(z_t, ∅, t)] ||²

(in velocity space for the flow-matching transformers, SD3 and Flux: v_θ in place of ε_θ)
(:func:`sdd_loss`), on the parameters its ``train_method`` selects (:func:`select_parameters`). The
model that is shipped is θ*, an EMA copy of the student (:func:`ema_copy`, :func:`ema_update`): the
*teacher*, which also samples the training latents (:mod:`sdd.erasure.sampler`).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from sdd.models import TRAIN_METHODS, Conditioning, predict, select_parameters

# TRAIN_METHODS and select_parameters live in sdd.models: the red team's relearning attacker picks weights
# the same way.
__all__ = ["TRAIN_METHODS", "ema_copy", "ema_update", "sdd_loss", "select_parameters"]


def sdd_loss(net: torch.nn.Module, latents: torch.Tensor, timesteps: torch.Tensor, cond: Conditioning,
             uncond: Conditioning) -> torch.Tensor:
    """MSE between the conditional prediction and the stop-gradient unconditional one: ε (or v) for a
    UNet, the flow-matching velocity for SD3 and Flux, always the student's at the same x_t."""
    with torch.no_grad():
        target = predict(net, latents, timesteps, uncond)
    pred = predict(net, latents, timesteps, cond)
    return F.mse_loss(pred.float(), target.float())


@torch.no_grad()
def ema_update(teacher: list[torch.Tensor], student: list[torch.Tensor], decay: float) -> None:
    """θ* ← decay·θ* + (1 − decay)·θ, with a constant decay (no warm-up ramp)."""
    torch._foreach_lerp_(teacher, student, 1.0 - decay)


def ema_copy(unet: torch.nn.Module, trained: list[str]) -> torch.nn.Module:
    """A frozen copy of ``unet`` that shares storage for every parameter that is not trained."""
    params = dict(unet.named_parameters())
    trained = set(trained)
    frozen = {id(p): p for name, p in params.items() if name not in trained}
    teacher = copy.deepcopy(unet, memo=frozen)
    return teacher.eval().requires_grad_(False)


