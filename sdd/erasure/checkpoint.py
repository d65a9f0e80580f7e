"""The erasure's resumable checkpoint: one run's whole state (:class:`sdd.erasure.engine.Distiller`).

``checkpoint/state.safetensors`` holds the tensors (student and teacher parameters, the text encoders'
when they train, optimizer state, the torch RNG, the losses, the trajectory pool, the retention
latents, the adversary's state) and ``state.json`` the rest (step, settings, concepts and base model
hash, Python RNG, schedulers).
Written atomically, so an interrupted write leaves the previous checkpoint; a run resumed from it
is bit-identical to an uninterrupted one (on CPU).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file

from sdd.erasure.sampler import Pool
from sdd.errors import ConfigError
from sdd.prompts import concepts_hash
from sdd.storage import atomic_path

if TYPE_CHECKING:
    from sdd.erasure.engine import Distiller

# Settings that may change between a checkpoint and its resumption.
_RESUMABLE_CHANGES = {"steps", "checkpoint_every"}


def identity(d: Distiller) -> dict:
    """What a checkpoint must agree on to be resumed by this run."""
    return {"config": d.config.model_dump(mode="json", exclude=_RESUMABLE_CHANGES),
            "concepts_sha256": concepts_hash(d.concepts),
            "base_unet_sha256": d.base_hash,
            "trained_parameters": d.trained,
            # Only when text encoders train: checkpoints of UNet methods keep their identity.
            **({"base_text_encoders_sha256": d.base_text_encoder_hashes} if d.base_text_encoder_hashes else {})}


def save_checkpoint(d: Distiller, directory: Path) -> None:
    """Write ``d``'s whole state to ``directory`` (atomically: the previous checkpoint or this one)."""
    tensors = {}
    for name, s, t in zip(d.trained, d.student_params, d.teacher_params, strict=True):
        tensors[f"student.{name}"] = s.detach()
        tensors[f"teacher.{name}"] = t.detach()
    optim = d.optimizer.state_dict()
    for index, state in optim["state"].items():
        for key, value in state.items():
            tensors[f"optimizer.{index}.{key}"] = value
    tensors["rng.torch"] = d.generator.get_state()
    tensors["loss"] = torch.tensor(d.losses, dtype=torch.float64)
    meta = {"step": d.step, **identity(d), "python_rng": d.rng.getstate(),
            "param_groups": optim["param_groups"], "grad_scaler": d.scaler.state_dict(),
            "lr_scheduler": d.lr_scheduler.state_dict()}
    if d.pool is not None:
        tensors["pool.latents"] = d.pool.latents
        tensors["pool.ks"] = torch.tensor(d.pool.ks, dtype=torch.int64)
        meta["pool_prompts"] = d.pool.prompts
    if d.retention is not None and d.retention.latents is not None:
        tensors["retention.latents"] = d.retention.latents
    if d.adversary is not None:
        adv_tensors, meta["adversarial"] = d.adversary.state_tensors()
        tensors.update(adv_tensors)
    with atomic_path(Path(directory)) as tmp:
        tmp.mkdir()
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                  tmp / "state.safetensors")
        (tmp / "state.json").write_text(json.dumps(meta, indent=1))
    d.last_checkpoint_step = d.step


def load_checkpoint(d: Distiller, directory: Path) -> None:
    """Restore ``d``'s state from ``directory``, refusing a checkpoint of other settings, concepts or base."""
    directory = Path(directory)
    try:
        meta = json.loads((directory / "state.json").read_text())
        tensors = load_file(directory / "state.safetensors")
    except (OSError, ValueError) as e:
        raise ConfigError(f"{directory}: unreadable checkpoint ({e}); delete it to start over") from None
    mine = identity(d)
    for key, value in mine.items():
        if key == "config":
            diff = sorted(k for k in value if meta[key].get(k) != value[k])
            if diff:
                raise ConfigError(f"{directory}: checkpoint was made with different settings "
                                  f"({', '.join(diff)}); use another --out or the same settings")
        elif meta.get(key) != value:
            raise ConfigError(f"{directory}: checkpoint was made for different {key.replace('_', ' ')}; "
                              f"use another --out")
    with torch.no_grad():
        for name, s, t in zip(d.trained, d.student_params, d.teacher_params, strict=True):
            s.copy_(tensors[f"student.{name}"])
            t.copy_(tensors[f"teacher.{name}"])
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    d.optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    d.scaler.load_state_dict(meta["grad_scaler"])
    if "lr_scheduler" in meta:  # checkpoints from before lr schedules were constant-lr
        d.lr_scheduler.load_state_dict(meta["lr_scheduler"])
    version, internal, gauss = meta["python_rng"]
    d.set_rng_state((tensors["rng.torch"], (version, tuple(internal), gauss)))
    d.losses = tensors["loss"].tolist()
    d.pool = None  # a checkpoint written before the pool was started has none
    if "pool.latents" in tensors:
        d.pool = Pool(tensors["pool.latents"].to(d.device), tensors["pool.ks"].tolist(),
                      meta["pool_prompts"])
    if d.retention is not None:
        d.retention.latents = tensors.get("retention.latents")
    if d.adversary is not None:
        d.adversary.load_state(tensors, meta.get("adversarial"))
    d.step = meta["step"]
    d.last_checkpoint_step = d.step
