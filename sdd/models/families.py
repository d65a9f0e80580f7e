"""The model families sdd drives, and what differs between them: the denoising network and its call,
the latent layout, and which weights each ``train_method`` trains.

==========  ==========================  ============================  ===========================
family      pipelines                   denoiser (``pipe.<attr>``)    prediction
==========  ==========================  ============================  ===========================
``unet``    SD 1.x/2.x, SDXL, the toy   ``unet``                      ε or v (the scheduler's)
``sd3``     SD 3 / 3.5 (MMDiT)          ``transformer``               flow-matching velocity
``flux``    FLUX.1-dev / -schnell       ``transformer``               flow-matching velocity
==========  ==========================  ============================  ===========================

:func:`predict` is the one place that calls a denoiser, with a :class:`~sdd.models.conditioning.Conditioning`
made for it. Flux's latents are kept *packed* (``(batch, H/2·W/2, 4·C)``), as its pipeline and transformer
use them, so every latent sdd draws or trains on is already in the transformer's layout.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import torch
from diffusers import (
    DiffusionPipeline,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionXLPipeline,
)

from sdd.errors import ConfigError

UNET, SD3, FLUX = "unet", "sd3", "flux"


def family(pipe: DiffusionPipeline) -> str:
    """``unet``, ``sd3`` or ``flux``."""
    if isinstance(pipe, StableDiffusion3Pipeline):
        return SD3
    if isinstance(pipe, FluxPipeline):
        return FLUX
    return UNET


def network_family(net: torch.nn.Module) -> str:
    """The family of a denoiser by its class (a student, an EMA teacher and a base copy all share it)."""
    if isinstance(net, SD3Transformer2DModel):
        return SD3
    if isinstance(net, FluxTransformer2DModel):
        return FLUX
    return UNET


def denoiser_attr(pipe: DiffusionPipeline) -> str:
    """The pipeline attribute holding the denoiser: ``unet`` or ``transformer``."""
    return UNET if family(pipe) == UNET else "transformer"


def denoiser(pipe: DiffusionPipeline) -> torch.nn.Module:
    """The pipeline's denoising network: its UNet or its transformer."""
    return getattr(pipe, denoiser_attr(pipe))


def is_sdxl(pipe: DiffusionPipeline) -> bool:
    return isinstance(pipe, StableDiffusionXLPipeline)


def is_flow_matching(pipe: DiffusionPipeline) -> bool:
    """Rectified-flow models (SD3, Flux): the denoiser predicts a velocity along straight paths."""
    return family(pipe) != UNET


def uses_classifier_free_guidance(pipe: DiffusionPipeline) -> bool:
    """Whether sampling mixes a conditional and an unconditional pass. Flux is guidance-distilled:
    dev takes the guidance value as an input instead, schnell none at all."""
    return family(pipe) != FLUX


def has_guidance_embedding(pipe_or_net) -> bool:
    """FLUX.1-dev: the transformer embeds a guidance value (schnell's does not)."""
    net = pipe_or_net if isinstance(pipe_or_net, torch.nn.Module) else denoiser(pipe_or_net)
    return bool(getattr(net.config, "guidance_embeds", False))


def latent_shape(pipe: DiffusionPipeline, resolution: int | None = None) -> tuple[int, ...]:
    """The shape of one latent, batch left out; ``resolution`` in pixels, None = the native size.

    UNet and SD3: (channels, height, width). Flux: packed, (H/2·W/2, 4·channels)."""
    if family(pipe) == FLUX:
        side = resolution or pipe.default_sample_size * pipe.vae_scale_factor
        half = side // (pipe.vae_scale_factor * 2)  # the pipeline's own rounding: packing needs even sides
        return half * half, pipe.transformer.config.in_channels
    net = denoiser(pipe)
    side = net.config.sample_size if resolution is None else resolution // pipe.vae_scale_factor
    return net.config.in_channels, side, side


def image_side(pipe: DiffusionPipeline, resolution: int | None = None) -> int:
    """The image side in pixels that ``resolution`` (None = native) stands for."""
    if resolution is not None:
        return resolution
    if family(pipe) == FLUX:
        return pipe.default_sample_size * pipe.vae_scale_factor
    return denoiser(pipe).config.sample_size * pipe.vae_scale_factor


def predict(net: torch.nn.Module, latents: torch.Tensor, timesteps: torch.Tensor, cond) -> torch.Tensor:
    """The denoiser's output (ε, v or velocity) for ``latents`` at ``timesteps`` under ``cond`` (a
    :class:`~sdd.models.conditioning.Conditioning`), as each family's pipeline calls it."""
    kind = network_family(net)
    if kind == UNET:
        return net(latents, timesteps, encoder_hidden_states=cond.hidden_states,
                   added_cond_kwargs=cond.added or None).sample
    timesteps = timesteps.to(latents.dtype if latents.is_floating_point() else torch.float32).expand(len(latents))
    if kind == SD3:
        return net(hidden_states=latents, timestep=timesteps, encoder_hidden_states=cond.hidden_states,
                   pooled_projections=cond.added["pooled_projections"]).sample
    return net(hidden_states=latents, timestep=timesteps / 1000, guidance=cond.added.get("guidance"),
               pooled_projections=cond.added["pooled_projections"], encoder_hidden_states=cond.hidden_states,
               txt_ids=cond.shared["txt_ids"], img_ids=flux_image_ids(latents.shape[1], latents.device)).sample


def flux_image_ids(tokens: int, device) -> torch.Tensor:
    """RoPE positions of a square packed latent of ``tokens`` tokens, as ``FluxPipeline.prepare_latents``
    makes them (sdd's images are square, whatever their resolution)."""
    half = math.isqrt(tokens)
    if half * half != tokens:
        raise ValueError(f"a packed Flux latent of {tokens} tokens is not square")
    return FluxPipeline._prepare_latent_image_ids(1, half, half, device, torch.float32)


# --- which weights a method trains (the erasure; the red team's relearning attacker) ----------------

#: Which UNet parameters each UNet ``train_method`` trains, by parameter name.
TRAIN_METHODS: dict[str, Callable[[str], bool]] = {
    "xattn": lambda name: "attn2" in name,
    # Only the cross-attention output projections: their input is the few-dimensional value space,
    # so erasing a direction there removes it for every text embedding, an attacker's included.
    "xattn_out": lambda name: "attn2.to_out" in name,
    "selfattn": lambda name: "attn1" in name,
    "noxattn": lambda name: "attn2" not in name,
    "full": lambda name: True,
}

_CONTEXT_PROJECTIONS = ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out")
_FEED_FORWARD = (".ff.", ".ff_context.", ".proj_mlp.", "single_transformer_blocks.")

#: The joint-attention transformers' (SD3, SD3.5, Flux) methods. ``context``: the text stream's
#: projections in the joint attention (where the prompt enters the image; EraseAnything's LoRA targets);
#: ``attn``: every attention weight (both streams, SD3.5's extra attention, Flux's single-stream blocks);
#: ``attn+ff``: those and the feed-forward layers.
TRANSFORMER_TRAIN_METHODS: dict[str, Callable[[str], bool]] = {
    "context": lambda name: any(p in name for p in _CONTEXT_PROJECTIONS),
    "attn": lambda name: ".attn." in name or ".attn2." in name,
    "attn+ff": lambda name: ".attn." in name or ".attn2." in name or any(p in name for p in _FEED_FORWARD),
    "full": lambda name: True,
}


#: Train methods that train every parameter of the pipeline's text encoder(s) (as AdvUnlearn and DES do),
#: and the UNet method that trains beside them (None: the UNet stays untouched). See sdd/erasure/components.py.
TEXT_ENCODER_METHODS: dict[str, str | None] = {"text_encoder": None, "text_encoder+xattn": "xattn"}


def denoiser_methods(net: torch.nn.Module) -> dict[str, Callable[[str], bool]]:
    """The train methods that pick this denoiser's weights."""
    return TRAIN_METHODS if network_family(net) == UNET else TRANSFORMER_TRAIN_METHODS


def select_parameters(net: torch.nn.Module, train_method: str) -> list[str]:
    """Names of the denoiser parameters ``train_method`` trains (UNet: xattn, xattn_out, selfattn,
    noxattn, full; transformers: context, attn, attn+ff, full)."""
    methods = denoiser_methods(net)
    if train_method not in methods:
        raise ConfigError(f"train_method: '{train_method}' is not a method for {type(net).__name__}; "
                          f"it supports {', '.join(methods)} (and lora, text_encoder, text_encoder+xattn)")
    keep = methods[train_method]
    names = [name for name, _ in net.named_parameters() if keep(name)]
    if not names:
        raise ConfigError(f"train_method: '{train_method}' selects no parameters of this {type(net).__name__}")
    return names


#: The pipeline attributes that may hold a text encoder (SD 1.x/2.x and the toy: the first; SDXL and
#: Flux: two; SD3: three, the third T5).
TEXT_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")


def text_encoders(pipe: DiffusionPipeline) -> dict[str, torch.nn.Module]:
    """The pipeline's text encoders by attribute name."""
    return {n: m for n in TEXT_ENCODERS if (m := getattr(pipe, n, None)) is not None}


def patch_targets(pipe: DiffusionPipeline) -> dict[str, torch.nn.Parameter]:
    """Every parameter an erasure's patch may hold, by its name there: a denoiser parameter as named in
    the denoiser, a text encoder's prefixed with its pipeline attribute (``text_encoder.``, ...)."""
    params = dict(denoiser(pipe).named_parameters())
    for attr, encoder in text_encoders(pipe).items():
        params.update({f"{attr}.{name}": p for name, p in encoder.named_parameters()})
    return params


@contextlib.contextmanager
def swapped_modules(pipe: DiffusionPipeline, modules: dict[str, torch.nn.Module]):
    """``pipe``'s components ``modules`` (attribute -> module) in place of its own for the block."""
    originals = {name: getattr(pipe, name) for name in modules}
    try:
        for name, module in modules.items():
            setattr(pipe, name, module)
        yield pipe
    finally:
        for name, module in originals.items():
            setattr(pipe, name, module)
