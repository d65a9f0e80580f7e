"""What an erasure writes to its output folder (the names are :mod:`sdd.layout`'s)::

    model/              complete diffusers pipeline with the teacher UNet (and text encoders, when they train)
    patch.safetensors   the teacher's trained parameters only (text encoders' prefixed ``text_encoder.`` /
                        ``text_encoder_2.``, the UNet's unprefixed); see :func:`apply_patch`
    manifest.json       concepts, base model, config, loss summary, library versions
    loss.csv            step,loss

Every file is written atomically (:mod:`sdd.storage`), so a crash leaves the previous one or none.
"""

from __future__ import annotations

import csv
import io
import json
import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from diffusers import DiffusionPipeline
from safetensors.torch import load_file, save_file

import sdd
from sdd.config import ConfigError, LoraSettings
from sdd.erasure.components import UNET, split_qualified
from sdd.erasure.lora import lora_targets, merged, merged_patch, save_lora_file
from sdd.layout import LORA_FILE, LOSS_FILE, MANIFEST_FILE, MODEL_DIR, PATCH_FILE
from sdd.models import denoiser_attr, patch_targets, swapped_modules
from sdd.prompts import concepts_hash
from sdd.storage import atomic_path, copy_with_sorted_metadata, write_json_atomic, write_text_atomic

if TYPE_CHECKING:
    from sdd.erasure.engine import Distiller


@dataclass
class ErasureResult:
    out_dir: Path
    model_dir: Path
    patch: Path
    manifest: Path
    steps: int
    final_loss: float | None


def _versions() -> dict[str, str]:
    import diffusers
    import safetensors
    import transformers

    return {"sdd": sdd.__version__, "python": platform.python_version(), "torch": torch.__version__,
            "diffusers": diffusers.__version__, "transformers": transformers.__version__,
            "safetensors": safetensors.__version__}


def loss_summary(losses: list[float]) -> dict:
    if not losses:
        return {}
    tail = losses[-100:]
    return {"first": losses[0], "last": losses[-1], "min": min(losses), "mean": sum(losses) / len(losses),
            "mean_last_100": sum(tail) / len(tail)}


def save_patch(distiller: Distiller, path: Path, merged_net: torch.nn.Module | None = None) -> None:
    """The trained tensors, or (``merged_net``: a LoRA run's teacher with its adapter merged) the merged
    weights of the modules the adapter wraps, so that apply_patch needs no PEFT."""
    meta = {"format": "sdd-patch", "train_method": distiller.config.train_method,
            "base_unet_sha256": distiller.base_hash or "",
            "concepts": json.dumps([asdict(c) for c in distiller.concepts])}
    text_encoder_hashes = getattr(distiller, "base_text_encoder_hashes", None)  # only when text encoders train
    if text_encoder_hashes:
        meta["base_text_encoders_sha256"] = json.dumps(text_encoder_hashes, sort_keys=True)
    if merged_net is not None:
        tensors = merged_patch(distiller.teacher, merged_net)
    else:
        tensors = {name: t.detach().cpu().contiguous()
                   for name, t in zip(distiller.trained, distiller.teacher_params, strict=True)}
    with atomic_path(Path(path)) as tmp:
        raw = tmp.with_name(tmp.name + ".raw")  # in atomic_path's private folder, removed with it
        save_file(tensors, raw, metadata=meta)
        copy_with_sorted_metadata(raw, tmp)


def apply_patch(pipe: DiffusionPipeline, path: Path | str) -> DiffusionPipeline:
    """Overwrite ``pipe``'s parameters with a ``patch.safetensors``: the erased model, exactly.

    Tensors named ``text_encoder.*`` / ``text_encoder_2.*`` go to that text encoder,
    the rest to the denoiser (UNet or transformer).
    """
    patch = load_file(str(path))
    params = patch_targets(pipe)
    unknown = [n for n in patch if n not in params or params[n].shape != patch[n].shape]
    if unknown:
        raise ConfigError(f"{path}: patch does not fit this model ({len(unknown)} parameters, e.g. "
                          f"{unknown[0]}); apply it to the base model it was made from")
    with torch.no_grad():
        for name, value in patch.items():
            params[name].copy_(value)
    return pipe


def save_model(distiller: Distiller, directory: Path, merged_net: torch.nn.Module | None = None) -> None:
    """Save the pipeline with the teacher denoiser (``merged_net`` for a LoRA run) and text encoders as a
    complete diffusers folder."""
    net = distiller.teacher if merged_net is None else merged_net
    teacher = {denoiser_attr(distiller.pipe): net, **distiller.teacher_text_encoders}
    with atomic_path(Path(directory)) as tmp, swapped_modules(distiller.pipe, teacher) as pipe:
        pipe.save_pretrained(tmp, safe_serialization=True)


def _trained_components(distiller: Distiller) -> dict[str, int]:
    """Component (unet, text_encoder, text_encoder_2) -> how many of its numbers trained."""
    numel: dict[str, int] = {}
    for name, p in zip(distiller.trained, distiller.teacher_params, strict=True):
        component = split_qualified(name)[0]
        component = denoiser_attr(distiller.pipe) if component == UNET else component
        numel[component] = numel.get(component, 0) + p.numel()
    return numel


def write_outputs(distiller: Distiller, out_dir: Path) -> ErasureResult:
    out_dir = Path(out_dir)
    lora = distiller.config.train_method == "lora"
    plain = merged(distiller.teacher) if lora else None  # one copy of the denoiser, for both
    save_model(distiller, out_dir / MODEL_DIR, plain)
    save_patch(distiller, out_dir / PATCH_FILE, plain)
    if lora:
        save_lora_file(distiller.pipe, distiller.teacher, out_dir)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["step", "loss"])
    writer.writerows((i + 1, repr(loss)) for i, loss in enumerate(distiller.losses))
    write_text_atomic(out_dir / LOSS_FILE, buf.getvalue())
    source = getattr(distiller.pipe, "sdd_source", None)
    manifest = {
        "concepts": [asdict(c) for c in distiller.concepts],
        "concepts_sha256": concepts_hash(distiller.concepts),
        "base_model": {**(asdict(source) if source else {}), "unet_sha256": distiller.base_hash,
                       **({"text_encoders_sha256": distiller.base_text_encoder_hashes}
                          if distiller.base_text_encoder_hashes else {})},
        "config": distiller.config.model_dump(mode="json"),
        "steps": distiller.step,
        "trained_parameters": {"method": distiller.config.train_method, "tensors": len(distiller.trained),
                               "numel": sum(p.numel() for p in distiller.teacher_params),
                               "components": _trained_components(distiller)},
        "loss": loss_summary(distiller.losses),
        "truncated_prompts": len(distiller.truncated_prompts),  # concept prompts cut to the token limit
        # Prompts the teacher samples with (several concepts: every join of one prompt per concept) cut.
        "truncated_sampling_prompts": distiller.sampling_truncation.cut,
        "sampling_prompts": distiller.sampling_truncation.possible,
        "text_max_tokens": distiller.conditioner.max_tokens,
        "outputs": {"model": MODEL_DIR, "patch": PATCH_FILE, "loss": LOSS_FILE,
                    **({"lora": LORA_FILE} if lora else {})},
        "versions": _versions(),
    }
    if lora:
        settings = distiller.config.lora or LoraSettings()
        manifest["lora"] = {**settings.model_dump(), "targets": lora_targets(distiller.pipe, settings)}
    if distiller.retention is not None:
        manifest["retention"] = distiller.retention.summary()
    if distiller.adversary is not None:
        manifest["adversarial"] = distiller.adversary.summary()
    write_json_atomic(out_dir / MANIFEST_FILE, manifest)
    return ErasureResult(out_dir, out_dir / MODEL_DIR, out_dir / PATCH_FILE, out_dir / MANIFEST_FILE,
                         distiller.step, distiller.losses[-1] if distiller.losses else None)
