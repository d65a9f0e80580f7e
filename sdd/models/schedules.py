"""Noise schedules, as each family's pipeline uses them: the teacher's sampling grid and training noise.

:class:`SamplingGrid` is the N-step grid the EMA teacher samples on. For UNet models it is DDIM
(eta 0) on the scheduler's own config; for SD3 and Flux it is the flow-matching Euler grid of the
pipeline's ``FlowMatchEulerDiscreteScheduler``, set up exactly as the pipeline sets it up (SD3's shift;
Flux's sigmas ``linspace(1, 1/N, N)`` with its resolution-dependent shift ``mu``), and one Euler step
is ``x + (σ_{k+1} − σ_k)·v``, what ``FlowMatchEulerDiscreteScheduler.step`` does.

:class:`TrainingNoise` noises clean latents at random timesteps for the losses that need it (the
retention term, concept inversion, relearning): DDPM noise and ε/v targets for UNet models,
``x_t = (1 − σ)·x_0 + σ·noise`` with the velocity target ``noise − x_0`` for flow matching.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DiffusionPipeline, FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.flux.pipeline_flux import calculate_shift

from sdd.models.families import FLUX, family, is_flow_matching

#: the transformers' timestep scale: t = 1000·σ
FLOW_TIMESTEPS = 1000


def _flow_shift_mu(scheduler: FlowMatchEulerDiscreteScheduler, image_seq_len: int, max_shift: float) -> float:
    cfg = scheduler.config
    return calculate_shift(image_seq_len, cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
                           cfg.get("base_shift", 0.5), cfg.get("max_shift", max_shift))


def timestep_bin(k: int, num_steps: int, num_train_timesteps: int) -> tuple[int, int]:
    """The DDPM timesteps [lo, hi) that DDIM step k of ``num_steps`` stands for."""
    lo = round((1 - (k + 1) / num_steps) * num_train_timesteps)
    hi = round((1 - k / num_steps) * num_train_timesteps)
    return lo, max(hi, lo + 1)


class SamplingGrid:
    """The teacher's N-step sampling grid: model-input timesteps, the scheduler step, timesteps to train at."""

    def __init__(self, pipe: DiffusionPipeline, num_steps: int, latent_shape: tuple[int, ...], device):
        self.family, self.num_steps = family(pipe), num_steps
        self.flow = is_flow_matching(pipe)
        if not self.flow:
            self.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
            self.scheduler.set_timesteps(num_steps, device=device)
            self.timesteps = self.scheduler.timesteps
            self.num_train_timesteps = self.scheduler.config.num_train_timesteps
            self.init_noise_sigma = float(self.scheduler.init_noise_sigma)
            return
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
        kwargs: dict = {}
        if self.family == FLUX:
            if not scheduler.config.get("use_flow_sigmas", False):
                kwargs["sigmas"] = np.linspace(1.0, 1 / num_steps, num_steps).tolist()
            kwargs["mu"] = _flow_shift_mu(scheduler, latent_shape[0], 1.15)
        elif scheduler.config.get("use_dynamic_shifting", False):
            patch = pipe.transformer.config.patch_size
            kwargs["mu"] = _flow_shift_mu(scheduler, (latent_shape[1] // patch) * (latent_shape[2] // patch), 1.16)
        scheduler.set_timesteps(None if "sigmas" in kwargs else num_steps, device=device, **kwargs)
        self.scheduler = scheduler
        self.timesteps = scheduler.timesteps
        self.sigmas = scheduler.sigmas.to(device)  # N + 1 values, the last 0
        self.num_train_timesteps = FLOW_TIMESTEPS
        self.init_noise_sigma = 1.0

    def scale(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The model input for ``x`` at ``t`` (DDIM's scale_model_input; flow matching takes x as it is)."""
        return x if self.flow else self.scheduler.scale_model_input(x, t)

    def step(self, out: torch.Tensor, k: int, x: torch.Tensor) -> torch.Tensor:
        """z_{k+1} from z_k and the (guided) model output at grid step k."""
        if self.flow:
            return x + (self.sigmas[k + 1] - self.sigmas[k]).to(out.dtype) * out
        return self.scheduler.step(out, self.timesteps[k], x, eta=0.0).prev_sample

    def timestep_range(self, k: int) -> tuple[int, int] | None:
        """The DDPM timesteps [lo, hi) DDIM step k stands for, drawn from when training (the paper);
        None for flow matching, which trains at the grid's own timestep (z_k is exactly at σ_k)."""
        return None if self.flow else timestep_bin(k, self.num_steps, self.num_train_timesteps)


class TrainingNoise:
    """Noising clean latents at random timesteps, and the denoiser's target there."""

    def __init__(self, pipe: DiffusionPipeline):
        self.flow = is_flow_matching(pipe)
        self.scheduler = None if self.flow else DDPMScheduler.from_config(pipe.scheduler.config)
        self.num_train_timesteps = FLOW_TIMESTEPS if self.flow else self.scheduler.config.num_train_timesteps

    def timesteps(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` random training timesteps (integers below ``num_train_timesteps``, for both families)."""
        return torch.randint(0, self.num_train_timesteps, (n,), generator=generator)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if not self.flow:
            return self.scheduler.add_noise(x0, noise, t)
        sigma = (t.float() / FLOW_TIMESTEPS).view(-1, *[1] * (x0.dim() - 1)).to(x0.dtype)
        return (1 - sigma) * x0 + sigma * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the denoiser is trained to predict: ε, v, or the velocity ``noise − x_0``."""
        if self.flow:
            return noise - x0
        if self.scheduler.config.prediction_type == "epsilon":
            return noise
        return self.scheduler.get_velocity(x0, noise, t)
