"""``train_method: lora``: a PEFT LoRA adapter on the denoiser trains, its weights stay the base's.

The adapter goes on the student before anything is copied, so the EMA teacher and the frozen base copy
carry it too (the base's stays at its initial, zero update: LoRA's B starts at zero). What is written:

* ``model/`` and ``patch.safetensors``: the teacher with the adapter merged (``fuse_lora``), so the
  patch holds the merged weights of the wrapped modules under their base names and ``apply_patch``
  gives the erased model exactly, as for every other method;
* ``lora.safetensors``: the adapter itself in diffusers' LoRA format, which
  ``pipe.load_lora_weights(out_dir, weight_name="lora.safetensors")`` loads onto the base model in
  diffusers (and the tools that read that format); its keys are ``unet.…`` or ``transformer.…``.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from diffusers import DiffusionPipeline
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

from sdd.config import ConfigError, LoraSettings
from sdd.layout import LORA_FILE
from sdd.models import UNET, denoiser_attr, family
from sdd.storage import atomic_path, copy_with_sorted_metadata

#: Where the adapter goes by default: where the prompt enters the image.
DEFAULT_TARGETS = {
    UNET: ["attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0"],
    "transformer": ["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out"],
}
ADAPTER = "default"


def lora_targets(pipe: DiffusionPipeline, settings: LoraSettings | None) -> list[str]:
    settings = settings or LoraSettings()
    return settings.targets or DEFAULT_TARGETS[UNET if family(pipe) == UNET else "transformer"]


def add_lora(pipe: DiffusionPipeline, net: torch.nn.Module, settings: LoraSettings | None, seed: int) -> None:
    """Wrap ``net``'s target modules with a LoRA adapter (A seeded by ``seed``, B zero); its parameters
    (:func:`lora_parameters`) are what trains."""
    settings = settings or LoraSettings()
    targets = lora_targets(pipe, settings)
    config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, target_modules=targets,
                        init_lora_weights="gaussian")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            net.add_adapter(config, adapter_name=ADAPTER)
        except ValueError as e:  # PEFT: "Target modules {...} not found in the base model"
            raise ConfigError(f"lora.targets: {targets} match no module of this {type(net).__name__} ({e}); "
                              f"give module names such as {DEFAULT_TARGETS[UNET][1]} or "
                              f"{DEFAULT_TARGETS['transformer'][1]}") from None


def lora_parameters(net: torch.nn.Module) -> list[str]:
    """The names of the adapter's parameters in ``net`` (its A and B matrices)."""
    return [name for name, _ in net.named_parameters() if ".lora_A." in name or ".lora_B." in name]


def merged(net: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``net`` with its adapter merged into the wrapped weights and the LoRA layers removed:
    a plain denoiser, as its class saves and loads it."""
    plain = copy.deepcopy(net)
    plain.fuse_lora()
    plain.unload_lora()
    return plain


def merged_patch(net: torch.nn.Module, plain: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The merged weights (from ``plain``, :func:`merged` of ``net``) of every module ``net``'s adapter
    wraps, by the base model's parameter names."""
    suffix = f".lora_A.{ADAPTER}.weight"
    wrapped = {name.removesuffix(suffix) for name in lora_parameters(net) if name.endswith(suffix)}
    params = dict(plain.named_parameters())
    return {f"{module}.weight": params[f"{module}.weight"].detach().cpu().contiguous() for module in sorted(wrapped)}


def save_lora_file(pipe: DiffusionPipeline, net: torch.nn.Module, out_dir: Path) -> Path:
    """The adapter of ``net`` as ``out_dir/lora.safetensors`` in diffusers' LoRA format (atomic)."""
    layers = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(net, adapter_name=ADAPTER).items()}
    path = Path(out_dir) / LORA_FILE
    with atomic_path(path) as staged:  # a file in a private folder: the writer may put only it there
        # The adapter's config (alpha, rank, targets) travels in the file's metadata: without it a
        # loader would scale the update by 1 instead of alpha / rank.
        component = denoiser_attr(pipe)
        raw = staged.with_name(staged.name + ".raw")
        type(pipe).save_lora_weights(staged.parent, weight_name=raw.name, safe_serialization=True,
                                     **{f"{component}_lora_layers": layers,
                                        f"{component}_lora_adapter_metadata": adapter_metadata(net)})
        copy_with_sorted_metadata(raw, staged)  # the same bytes on every run, as the patch
    return path


def adapter_metadata(net: torch.nn.Module) -> dict:
    """The adapter's PEFT config as the LoRA file stores it, sets sorted (their order changes per process)."""
    return {k: sorted(v) if isinstance(v, set) else v for k, v in net.peft_config[ADAPTER].to_dict().items()}
