"""Where the training latents z_k come from: the EMA teacher's own guided trajectories.

The teacher (:mod:`sdd.erasure.objective`) samples with classifier-free guidance towards the
concepts for k of N DDIM steps, and t is drawn from the DDPM timestep bin that DDIM step k stands
for (:func:`sdd.models.timestep_bin`). No images are needed. For flow-matching models (SD3, Flux) the steps are
the pipeline's Euler steps and t is the grid's own timestep k (:class:`sdd.models.SamplingGrid`);
Flux samples without classifier-free guidance (FLUX.1-dev embeds its guidance value instead).
Two loops (``DistillConfig.sampler``):

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

from sdd.models import Conditioning, SamplingGrid, predict


def guided(net: torch.nn.Module, model_input: torch.Tensor, t: torch.Tensor, cond: Conditioning,
           uncond: Conditioning, guidance_scale: float | None) -> torch.Tensor:
    """The denoiser's output at ``t`` (one timestep, or one per sample), guided (classifier-free) unless
    ``guidance_scale`` is None (Flux: one conditional pass; FLUX.1-dev's guidance travels in ``cond``)."""
    if guidance_scale is None:
        return predict(net, model_input, t, cond).float()
    two = predict(net, torch.cat([model_input, model_input]), torch.cat([t, t]) if t.dim() else t,
                  Conditioning.cat([uncond, cond])).float()
    out_uncond, out_cond = two.chunk(2)
    return out_uncond + guidance_scale * (out_cond - out_uncond)


@torch.no_grad()
def sample_latents(net: torch.nn.Module, grid: SamplingGrid, noise: torch.Tensor, ks: list[int],
                   cond: Conditioning, uncond: Conditioning, guidance_scale: float | None) -> torch.Tensor:
    """Run exactly ``ks[b]`` guided steps of ``grid`` from ``noise[b]`` (k = 0 returns the noise itself).

    Trajectories advance in lockstep over the grid, so at every step all still-active ones share a
    timestep and go through the denoiser as one batch (with their unconditional twins).
    """
    latents = noise.clone()
    steps = torch.tensor(ks)
    for i, t in enumerate(grid.timesteps[: max(ks, default=0)]):
        active = (steps > i).nonzero().flatten().tolist()
        x = latents[active]
        out = guided(net, grid.scale(x, t), t, cond[active], uncond[active], guidance_scale)
        latents[active] = grid.step(out, i, x).to(latents.dtype)
    return latents


@torch.no_grad()
def ddim_step(net: torch.nn.Module, grid: SamplingGrid, latents: torch.Tensor, ks: list[int],
              cond: Conditioning, uncond: Conditioning, guidance_scale: float | None) -> torch.Tensor:
    """One guided step of ``grid`` for every latent, each from its own step index ``ks[b]``, in one batch.

    The denoiser takes a timestep per sample; the scheduler step (cheap, elementwise) runs per latent.
    """
    t = grid.timesteps[torch.tensor(ks, device=grid.timesteps.device)]
    x = torch.cat([grid.scale(latents[b:b + 1], t[b]) for b in range(len(ks))])
    out = guided(net, x, t, cond, uncond, guidance_scale)
    return torch.cat([grid.step(out[b:b + 1], k, latents[b:b + 1]) for b, k in enumerate(ks)]).to(latents.dtype)


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

