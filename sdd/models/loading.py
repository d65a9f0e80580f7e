"""Loading pipelines: ``"toy"`` (the embedded toy world), a local diffusers folder or a Hugging Face Hub id.

``load_pipeline`` returns an ordinary diffusers pipeline -- ``StableDiffusionPipeline`` (SD 1.x/2.x),
``StableDiffusionXLPipeline`` (SDXL), ``StableDiffusion3Pipeline`` (SD 3 / 3.5) or ``FluxPipeline``
(FLUX.1-dev / -schnell) -- with every module in eval mode and frozen, and says where it came from
(:class:`ModelSource`), for manifests.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import (
    DiffusionPipeline,
    FluxPipeline,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)

from sdd.errors import ConfigError

#: The pipeline classes sdd erases, by ``model_index.json``'s ``_class_name``, and what to call them.
PIPELINE_CLASSES: dict[str, type[DiffusionPipeline]] = {
    "StableDiffusionPipeline": StableDiffusionPipeline,
    "StableDiffusionXLPipeline": StableDiffusionXLPipeline,
    "StableDiffusion3Pipeline": StableDiffusion3Pipeline,
    "FluxPipeline": FluxPipeline,
}
FAMILY_NAMES = {"StableDiffusionPipeline": "SD 1.x/2.x", "StableDiffusionXLPipeline": "SDXL",
                "StableDiffusion3Pipeline": "SD 3/3.5", "FluxPipeline": "FLUX.1"}
_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


@dataclass(frozen=True)
class ModelSource:
    """Where a pipeline came from, for manifests: what the user typed, the folder, the hub revision."""

    model: str
    path: str
    revision: str | None = None
    pipeline_class: str = ""


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast(device: torch.device | str, mixed_precision: str = "auto") -> contextlib.AbstractContextManager:
    """The autocast context for ``mixed_precision``: auto = bf16 on CUDA, full fp32 on CPU."""
    device = torch.device(device)
    if mixed_precision == "auto":
        mixed_precision = "bf16" if device.type == "cuda" else "no"
    if mixed_precision == "no":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[mixed_precision]
    return torch.autocast(device_type=device.type, dtype=dtype)


def _resolve(model: str, revision: str | None) -> tuple[Path, str | None]:
    """Map ``model`` to a local diffusers folder (downloading hub ids) and its hub revision."""
    if model == "toy":
        from sdd.toy import TOY_PIPELINE_DIR

        if not (TOY_PIPELINE_DIR / "model_index.json").is_file():
            raise ConfigError(f"the toy pipeline is not built yet ({TOY_PIPELINE_DIR}); run `sdd toy build`")
        return TOY_PIPELINE_DIR, None
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise ConfigError(f"{model}: not a diffusers pipeline folder (no model_index.json)")
        return path, revision
    if not _HUB_ID.match(model):
        raise ConfigError(f"{model}: no such folder, and not a Hugging Face Hub id")
    try:
        folder = Path(DiffusionPipeline.download(model, revision=revision))
    except Exception as e:  # any hub/network failure is a user-facing one-liner
        raise ConfigError(f"{model}: neither a local folder nor downloadable from the Hugging Face Hub "
                          f"({type(e).__name__}); pass a local diffusers folder") from None
    # The hub cache stores each download under .../snapshots/<commit sha>.
    return folder, folder.name if folder.parent.name == "snapshots" else revision


def pipeline_class_name(folder: Path) -> str:
    try:
        return json.loads((Path(folder) / "model_index.json").read_text())["_class_name"]
    except (OSError, ValueError, KeyError):
        raise ConfigError(f"{folder}: unreadable model_index.json (no _class_name)") from None


def load_pipeline(model: str, device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                  revision: str | None = None) -> DiffusionPipeline:
    """Load an SD 1.x/2.x, SDXL, SD3/3.5 or FLUX.1 pipeline: ``"toy"``, a local diffusers folder or a hub id.

    Weights load in ``dtype`` (default fp32, so trained parameters keep full precision; use
    :func:`autocast` for bf16 compute) on ``device`` (default: CUDA if available, else CPU).
    Every module is put in eval mode with gradients off; the engine re-enables what it trains.
    The SD safety checker is not loaded: erasure must be measured on what the model itself draws.
    The returned pipeline carries ``pipe.sdd_source`` (a :class:`ModelSource`).
    """
    folder, revision = _resolve(model, revision)
    class_name = pipeline_class_name(folder)
    if class_name not in PIPELINE_CLASSES:
        raise ConfigError(f"{model}: unsupported pipeline class {class_name}; sdd supports "
                          + ", ".join(f"{c} ({n})" for c, n in FAMILY_NAMES.items()))
    cls = PIPELINE_CLASSES[class_name]
    no_checker = {"safety_checker": None, "requires_safety_checker": False}
    extra = no_checker if cls is StableDiffusionPipeline else {}
    pipe = cls.from_pretrained(folder, dtype=dtype or torch.float32, **extra)
    pipe.to(device or default_device())
    pipe.set_progress_bar_config(disable=True)
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval().requires_grad_(False)
    pipe.sdd_source = ModelSource(model=model, path=str(folder), revision=revision, pipeline_class=class_name)
    return pipe


def unet_weights_hash(unet: torch.nn.Module) -> str:
    """sha256 over the denoiser's (UNet's or transformer's) parameter names, dtypes, shapes and bytes:
    identifies a base model. Manifests keep calling it ``unet_sha256``."""
    return weights_hash(unet)


def weights_hash(module: torch.nn.Module) -> str:
    """sha256 over a module's state names, dtypes, shapes and bytes (a UNet, a text encoder)."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()



def save_standin_erased(folder: Path) -> Path:
    """The toy pipeline with seeded noise on its cross-attention keys and values, saved to ``folder``:
    a stand-in "erased" model for tests and benches that need a second model without training one."""
    pipe = load_pipeline("toy", device="cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in pipe.unet.named_parameters():
            if ".attn2.to_k." in name or ".attn2.to_v." in name:
                p.add_(0.5 * p.std() * torch.randn(p.shape, generator=g))
    pipe.save_pretrained(folder)
    return folder
