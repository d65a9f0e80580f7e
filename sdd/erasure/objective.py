"""The SDD objective (Kim et al. 2023) and what it trains.

The student UNet θ learns to predict, for a prompt naming the concept, what it predicts for the
empty prompt:

    L(θ) = || ε_θ(z_t, c_s, t) − sg[ε_θ(z_t, ∅, t)] ||²

(:func:`sdd_loss`), on the parameters its ``train_method`` selects (:func:`select_parameters`). The
model that is shipped is θ*, an EMA copy of the student (:func:`ema_copy`, :func:`ema_update`): the
*teacher*, which also samples the training latents (:mod:`sdd.erasure.sampler`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F

from sdd.errors import ConfigError
from sdd.models import Conditioning

#: Which UNet parameters each ``train_method`` trains, by parameter name.
TRAIN_METHODS: dict[str, Callable[[str], bool]] = {
    "xattn": lambda name: "attn2" in name,
    # Only the cross-attention output projections: their input is the few-dimensional value space,
    # so erasing a direction there removes it for every text embedding, an attacker's included.
    "xattn_out": lambda name: "attn2.to_out" in name,
    "selfattn": lambda name: "attn1" in name,
    "noxattn": lambda name: "attn2" not in name,
    "full": lambda name: True,
}


def select_parameters(unet: torch.nn.Module, train_method: str) -> list[str]:
    """Names of the parameters ``train_method`` trains (xattn, xattn_out, selfattn, noxattn, full)."""
    keep = TRAIN_METHODS[train_method]
    names = [name for name, _ in unet.named_parameters() if keep(name)]
    if not names:
        raise ConfigError(f"train_method '{train_method}' selects no parameters of this UNet")
    return names


def sdd_loss(unet: torch.nn.Module, latents: torch.Tensor, timesteps: torch.Tensor, cond: Conditioning,
             uncond: Conditioning) -> torch.Tensor:
    """MSE between the conditional prediction and the stop-gradient unconditional one."""
    with torch.no_grad():
        target = unet(latents, timesteps, **uncond.unet_kwargs()).sample
    pred = unet(latents, timesteps, **cond.unet_kwargs()).sample
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


