"""What an erasure trains (``DistillConfig.train_method``): denoiser parameters, the text encoder(s), or both.

UNet methods (xattn, xattn_out, selfattn, noxattn, full) pick UNet parameters by name, transformer
methods (context, attn, attn+ff, full) SD3's and Flux's (:func:`sdd.models.select_parameters`).
Text-encoder methods (:data:`sdd.models.TEXT_ENCODER_METHODS`)
train every parameter of the pipeline's text encoder(s), SDXL's two included, as AdvUnlearn and DES
do: ``text_encoder`` leaves the UNet untouched, ``text_encoder+xattn`` trains its cross-attention too
(a transformer's ``context`` projections).

A trained parameter is named by :func:`qualified`: a UNet parameter as in the UNet (the names patches
and checkpoints always had), a text encoder's prefixed with the encoder's pipeline attribute
(``text_encoder.`` / ``text_encoder_2.``).
"""

from __future__ import annotations

import typing

import torch
from diffusers import DiffusionPipeline

from sdd.config import ConfigError, DistillConfig
from sdd.erasure.lora import lora_parameters
from sdd.erasure.objective import ema_copy
from sdd.models import TEXT_ENCODER_METHODS, TEXT_ENCODERS, denoiser, family, select_parameters, text_encoders

#: The denoiser's component name, whatever it is (a UNet, SD3's or Flux's transformer): its parameters
#: keep their own names in patches and checkpoints.
UNET = "unet"


def train_method_choices() -> tuple[str, ...]:
    return typing.get_args(DistillConfig.model_fields["train_method"].annotation)


def select_trained(pipe: DiffusionPipeline, train_method: str) -> dict[str, list[str]]:
    """Component (``unet``, ``text_encoder``, ``text_encoder_2``) -> names of its parameters that train.

    The UNet is always a key (with no names when only text encoders train)."""
    net = denoiser(pipe)
    if train_method == "lora":  # the adapter sdd.erasure.lora.add_lora put on the denoiser
        return {UNET: lora_parameters(net)}
    if train_method not in TEXT_ENCODER_METHODS:
        return {UNET: select_parameters(net, train_method)}
    encoders = text_encoders(pipe)
    if not encoders:
        unet_methods = [m for m in train_method_choices() if m not in TEXT_ENCODER_METHODS]
        raise ConfigError(f"train_method: '{train_method}' trains the text encoder and this pipeline has none; "
                          f"choose one of {', '.join(unet_methods)}")
    unet_method = TEXT_ENCODER_METHODS[train_method]
    if unet_method == "xattn" and family(pipe) != UNET:
        unet_method = "context"  # a joint-attention transformer's counterpart of cross-attention
    selected = {UNET: select_parameters(net, unet_method) if unet_method else []}
    for attr, encoder in encoders.items():
        selected[attr] = [name for name, _ in encoder.named_parameters()]
    return selected


def qualified(component: str, name: str) -> str:
    """A trained parameter's name in patches and checkpoints."""
    return name if component == UNET else f"{component}.{name}"


def split_qualified(name: str) -> tuple[str, str]:
    """(component, name in it) of a :func:`qualified` name."""
    head, _, rest = name.partition(".")
    return (head, rest) if head in TEXT_ENCODERS else (UNET, name)


def qualified_parameters(modules: dict[str, torch.nn.Module]) -> dict[str, torch.nn.Parameter]:
    """Every parameter of ``modules`` (component -> module) by its qualified name."""
    return {qualified(c, n): p for c, module in modules.items() for n, p in module.named_parameters()}


def frozen_copies(modules: dict[str, torch.nn.Module], selected: dict[str, list[str]]) -> dict[str, torch.nn.Module]:
    """A frozen copy of each component (an EMA teacher, a base model): its trained parameters copied,
    the rest shared with the student."""
    return {c: ema_copy(module, selected[c]) for c, module in modules.items()}
