"""Where the training latents z_k come from: the EMA teacher's own guided DDIM trajectories.

The teacher (:mod:`sdd.erasure.objective`) samples with classifier-free guidance towards the
concepts for k of N DDIM steps, and t is drawn from the DDPM timestep bin that DDIM step k stands
for (:func:`timestep_bin`). No images are needed. Two loops (``DistillConfig.sampler``):

* ``reference`` (the paper): every training sample is a fresh trajectory of k ~ U{0..N-1} guided
  DDIM steps, so a sample costs ~N+1 UNet image-passes (2 per CFG step, 2 for the loss), of which
  all but 2 only produce z_k. One optimizer step = ``batch_size`` such trajectories, batched.
* ``pool`` (the default): ``batch_size`` trajectories stay in flight at staggered steps. Each
  optimizer step trains on every slot's current z_k, then moves every slot one DDIM step on
  (a slot that just gave z_{N-1} restarts from fresh noise at k = 0): ~4 passes per sample. Each
  slot cycles through k = 0..N-1 from a uniformly random phase, so k stays uniform on
  {0..N-1} at every step, as in the paper. The price is staleness: z_k was sampled by the
  teachers of the last k steps rather than today's, which with an EMA teacher barely differs
  (bench/bench_loops.py measures the erasure outcome of both loops).

A :class:`Batch` is everything random about one optimizer step, a :class:`Pool` the trajectories in
flight; :class:`sdd.erasure.engine.Distiller` draws them with its seeded generators.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from diffusers import DDIMScheduler

from sdd.models import Conditioning


def timestep_bin(k: int, num_steps: int, num_train_timesteps: int) -> tuple[int, int]:
    """The DDPM timesteps [lo, hi) that DDIM step k of ``num_steps`` stands for."""
    lo = round((1 - (k + 1) / num_steps) * num_train_timesteps)
    hi = round((1 - k / num_steps) * num_train_timesteps)
    return lo, max(hi, lo + 1)


@torch.no_grad()
def sample_latents(unet: torch.nn.Module, scheduler: DDIMScheduler, noise: torch.Tensor, ks: list[int],
                   cond: Conditioning, uncond: Conditioning, guidance_scale: float) -> torch.Tensor:
    """Run exactly ``ks[b]`` guided DDIM steps from ``noise[b]`` (k = 0 returns the noise itself).

    Trajectories advance in lockstep over ``scheduler.timesteps``, so at every step all still-active
    ones share a timestep and go through the UNet as one batch (with their unconditional twins).
    """
    latents = noise.clone()
    steps = torch.tensor(ks)
    for i, t in enumerate(scheduler.timesteps[: max(ks, default=0)]):
        active = (steps > i).nonzero().flatten().tolist()
        x = latents[active]
        model_input = scheduler.scale_model_input(torch.cat([x, x]), t)
        out = unet(model_input, t, **Conditioning.cat([uncond[active], cond[active]]).unet_kwargs()).sample
        out_uncond, out_cond = out.float().chunk(2)
        guided = out_uncond + guidance_scale * (out_cond - out_uncond)
        latents[active] = scheduler.step(guided, t, x, eta=0.0).prev_sample.to(latents.dtype)
    return latents


@torch.no_grad()
def ddim_step(unet: torch.nn.Module, scheduler: DDIMScheduler, latents: torch.Tensor, ks: list[int],
              cond: Conditioning, uncond: Conditioning, guidance_scale: float) -> torch.Tensor:
    """One guided DDIM step for every latent, each from its own step index ``ks[b]``, in one UNet batch.

    The UNet takes a timestep per sample; the scheduler step (cheap, elementwise) runs per latent.
    """
    t = scheduler.timesteps[torch.tensor(ks, device=scheduler.timesteps.device)]
    x = torch.cat([scheduler.scale_model_input(latents[b:b + 1], t[b]) for b in range(len(ks))])
    out = unet(torch.cat([x, x]), torch.cat([t, t]), **Conditioning.cat([uncond, cond]).unet_kwargs()).sample
    out_uncond, out_cond = out.float().chunk(2)
    guided = out_uncond + guidance_scale * (out_cond - out_uncond)
    return torch.cat([scheduler.step(guided[b:b + 1], t[b], latents[b:b + 1], eta=0.0).prev_sample
                      for b in range(len(ks))]).to(latents.dtype)


def pool_phases(offset: int, size: int, num_steps: int) -> list[int]:
    """Starting step indices of ``size`` trajectories, evenly staggered over ``num_steps`` from ``offset``."""
    return [(offset + b * num_steps // size) % num_steps for b in range(size)]



@dataclass
class Batch:
    """Everything random about one optimizer step.

    Reference loop: ``noise`` holds z_T of every sample. Pool: ``latents`` holds the pool's z_k,
    ``noise`` and ``restart_prompts`` the fresh starts of the slots that finish this step.
    """

    ks: list[int]
    timesteps: list[int]
    sampling_prompts: list[str]
    erased_prompts: list[str]
    noise: torch.Tensor
    latents: torch.Tensor | None = None
    restart_prompts: list[str] = field(default_factory=list)


@dataclass
class Pool:
    """In-flight teacher trajectories: slot b holds z_{ks[b]}, sampled towards ``prompts[b]``."""

    latents: torch.Tensor
    ks: list[int]
    prompts: list[str]

