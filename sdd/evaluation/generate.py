"""Seeded, batched, resumable image generation for a prompt set with any diffusers text-to-image pipeline.

Each row gets its own ``torch.Generator`` seeded with the row's seed (on the CPU, so the initial noise
is the same on every device), which makes every image independent of the batch size and of which
rows were already done. Output layout::

    out_dir/generation.json    settings the images were made with (checked on resume)
    out_dir/index.jsonl        one line per finished image: key, file, prompt, seed, guidance
    out_dir/images/<key>.png

A batch's PNGs are written atomically first, then its index lines are appended in one write; a
crash can leave at most a torn last index line, which is ignored, and the batch is redone.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm.auto import tqdm

from sdd.config import ConfigError, EvalConfig
from sdd.progress import ProgressLog
from sdd.prompts import PromptRow, PromptSet
from sdd.storage import atomic_path, write_json_atomic

INDEX_FILE = "index.jsonl"
SETTINGS_FILE = "generation.json"


@dataclass(frozen=True)
class GenerationSettings:
    num_inference_steps: int = EvalConfig.model_fields["num_inference_steps"].default
    guidance_scale: float = EvalConfig.model_fields["guidance_scale"].default  # for rows without their own
    height: int | None = None
    width: int | None = None
    model_id: str | None = None  # e.g. the UNet weights hash; images of another model are never reused


def row_guidance(row: PromptRow, settings: GenerationSettings) -> float:
    return settings.guidance_scale if row.guidance is None else row.guidance


def image_key(row: PromptRow, settings: GenerationSettings) -> str:
    """What determines an image (given the model and settings): prompt, seed and guidance."""
    ident = json.dumps([row.prompt, row.seed, row_guidance(row, settings)], ensure_ascii=False)
    return hashlib.sha256(ident.encode("utf-8")).hexdigest()[:20]


def read_index(out_dir: Path) -> dict[str, dict[str, Any]]:
    """Finished images by key; a torn (unterminated) last line is skipped."""
    path = Path(out_dir) / INDEX_FILE
    if not path.is_file():
        return {}
    done = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if (Path(out_dir) / record["file"]).is_file():
            done[record["key"]] = record
    return done


def _check_settings(out_dir: Path, settings: GenerationSettings) -> None:
    path = out_dir / SETTINGS_FILE
    if path.is_file():
        previous = json.loads(path.read_text())
        if previous != asdict(settings):
            changed = sorted(k for k in asdict(settings) if previous.get(k) != asdict(settings)[k])
            raise ConfigError(f"{out_dir}: holds images made with other settings ({', '.join(changed)} "
                              "differ); use another output folder or delete this one")
    else:
        write_json_atomic(path, asdict(settings))


def _drop_torn_tail(out_dir: Path) -> None:
    """Cut an unterminated last index line (a crash mid-append) so new lines start cleanly."""
    path = out_dir / INDEX_FILE
    if path.is_file():
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(path, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)


def _append_index(out_dir: Path, records: list[dict[str, Any]]) -> None:
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    with open(out_dir / INDEX_FILE, "ab") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _batches(rows: list[tuple[str, PromptRow]], settings: GenerationSettings, batch_size: int):
    """Chunks of rows sharing one guidance scale (a pipeline call takes a single scale)."""
    by_guidance: dict[float, list[tuple[str, PromptRow]]] = {}
    for key, row in rows:
        by_guidance.setdefault(row_guidance(row, settings), []).append((key, row))
    for guidance, group in by_guidance.items():
        for i in range(0, len(group), batch_size):
            yield guidance, group[i:i + batch_size]


def generate(pipe, prompts: PromptSet | Sequence[PromptRow], out_dir: Path,
             settings: GenerationSettings = GenerationSettings(), batch_size: int = 8,
             progress: bool = True, desc: str = "generate", log: Callable[[str], None] | None = None,
             **pipe_kwargs) -> list[Path]:
    """Generate one image per row into ``out_dir``, skipping rows already there; returns their paths.

    ``log`` (e.g. a flow's logger) also gets a progress line every few seconds (:mod:`sdd.progress`).

    ``pipe`` is any diffusers text-to-image pipeline (SD, SDXL, base or erased) called as
    ``pipe(prompt=[...], generator=[...], num_inference_steps=..., guidance_scale=..., output_type="pil")``.
    The returned list is aligned with the rows of ``prompts``.
    """
    rows = list(prompts.rows if isinstance(prompts, PromptSet) else prompts)
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    _check_settings(out_dir, settings)
    _drop_torn_tail(out_dir)
    keys = [image_key(row, settings) for row in rows]
    done = read_index(out_dir)
    todo = list({k: (k, r) for k, r in zip(keys, rows, strict=True) if k not in done}.values())
    size = {k: v for k, v in (("height", settings.height), ("width", settings.width)) if v is not None}
    total = len(set(keys))
    finished = total - len(todo)
    logged = ProgressLog(desc, total, log, unit="images", start=finished) if log else None
    with tqdm(total=total, initial=total - len(todo), desc=desc, unit="img",
              disable=not progress) as bar:
        for guidance, batch in _batches(todo, settings, batch_size):
            generators = [torch.Generator("cpu").manual_seed(row.seed) for _, row in batch]
            images = pipe(prompt=[row.prompt for _, row in batch], generator=generators,
                          num_inference_steps=settings.num_inference_steps, guidance_scale=guidance,
                          output_type="pil", **size, **pipe_kwargs).images
            records = []
            for (key, row), image in zip(batch, images, strict=True):
                file = f"images/{key}.png"
                with atomic_path(out_dir / file) as tmp:
                    image.save(tmp, format="PNG")
                records.append({"key": key, "file": file, "prompt": row.prompt, "seed": row.seed,
                                "guidance": guidance})
            _append_index(out_dir, records)
            bar.update(len(batch))
            finished += len(batch)
            if logged:
                logged(finished)
    return [out_dir / "images" / f"{k}.png" for k in keys]


def load_images(paths: Sequence[Path]) -> list[Image.Image]:
    """Open generated PNGs as RGB images (fully loaded, files closed)."""
    images = []
    for p in paths:
        with Image.open(p) as im:
            images.append(im.convert("RGB"))
    return images
