"""The on-disk contract: what an erasure output folder and an evaluation folder hold, and readers.

An **erasure output folder** (``sdd erase --out``, written by :mod:`sdd.erasure`)::

    model/               the erased diffusers pipeline
    patch.safetensors    the trained parameters only
    manifest.json        concepts, base model, settings, versions, loss summary
    loss.csv             step,loss
    checkpoint/          resumable state while training runs

An **evaluation folder** (``sdd evaluate --out``, written by :mod:`sdd.evaluation` and :mod:`sdd.evaluation.report`)::

    metrics.json  report.md  rates.csv  judgements.jsonl
    grids/<stem>.png                  one per concept (:func:`concept_stem`), and benign.png
    images/base/  images/erased/      generated images (base: shareable with --base-images)
    shards.json                       sharded runs only (:mod:`sdd.evaluation.shards`)
    registration.json                 the flow's registry record (:mod:`flows.erase`)
    prompts.jsonl                     the rows evaluated (:mod:`flows.erase`), logged with the MLflow
                                      run so ``promoted-check`` can redraw them (:mod:`sdd.registry.check`)
    redteam/                          ``sdd redteam --eval``: metrics.json, report.md, grids
                                      (:mod:`sdd.redteam`); its robustness gates are folded into
                                      the evaluation's metrics.json and verdict

Engine, evaluation, registry and flows take these names from here. Only the standard library and
:mod:`sdd.errors` are imported, so ``sdd plots`` (a DVC stage) stays free of torch.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from pathlib import Path
from typing import Any

from sdd.errors import ConfigError

# --- erasure output folder ----------------------------------------------------------------------

MODEL_DIR = "model"
PATCH_FILE = "patch.safetensors"
MANIFEST_FILE = "manifest.json"
LOSS_FILE = "loss.csv"
LORA_FILE = "lora.safetensors"  # train_method lora: the adapter, in diffusers' LoRA format
CHECKPOINT_DIR = "checkpoint"
#: What a finished erasure folder holds (the checkpoint is gone once training ends).
ERASURE_OUTPUTS = (MODEL_DIR, PATCH_FILE, MANIFEST_FILE, LOSS_FILE)

# --- evaluation folder --------------------------------------------------------------------------

METRICS_FILE = "metrics.json"
REPORT_FILE = "report.md"
RATES_FILE = "rates.csv"
JUDGEMENTS_FILE = "judgements.jsonl"
GRIDS_DIR = "grids"
IMAGES_DIR = "images"
SHARDS_FILE = "shards.json"
REGISTRATION_FILE = "registration.json"
#: The prompt set the evaluation drew (the flow writes it before registering; logged with the run).
EVAL_PROMPTS_FILE = "prompts.jsonl"
REDTEAM_DIR = "redteam"
ROLES = ("base", "erased")
BENIGN_STEM = "benign"  # grids/benign.png: the benign prompts' grid
#: Stems of files that are no concept's: :func:`concept_stem` never returns one of these.
RESERVED_STEMS = frozenset({BENIGN_STEM})
MAX_STEM_LEN = 80
_HASHED = re.compile(r".*-[0-9a-f]{8}")


def concept_stem(name: str, prefix: str = "") -> str:
    """The file-name stem of concept ``name``'s files: ``prefix`` + [a-z0-9-], at most 80 characters.

    A name that already is such a stem (``red``, ``van-gogh``) is kept as it is; any other
    (``van gogh``, ``Van-Gogh``, ``benign``, a long one) is slugged and gets the first 8 hex digits
    of the sha256 of the exact name, so different names never share a file. Kept names never end
    in ``-`` + 8 hex digits, so a kept name cannot equal a hashed one.
    """
    plain = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "concept"
    room = MAX_STEM_LEN - len(prefix)
    if plain == name and len(plain) <= room and plain not in RESERVED_STEMS and not _HASHED.fullmatch(plain):
        return prefix + plain
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{prefix}{plain[:room - 9].rstrip('-')}-{digest}"


def image_dirs(eval_dir: Path, base_images: Path | None = None) -> dict[str, Path]:
    """``{role: folder}`` of an evaluation's images; ``base_images`` shares the base model's."""
    images = Path(eval_dir) / IMAGES_DIR
    return {"base": Path(base_images or images / "base"), "erased": images / "erased"}


# --- readers ------------------------------------------------------------------------------------


def missing_erasure_outputs(out_dir: Path) -> list[str]:
    return [name for name in ERASURE_OUTPUTS if not (Path(out_dir) / name).exists()]


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def read_manifest(out_dir: Path) -> dict[str, Any]:
    return read_json(Path(out_dir) / MANIFEST_FILE)


def read_metrics(eval_dir: Path) -> dict[str, Any]:
    return read_json(Path(eval_dir) / METRICS_FILE)


def read_csv_columns(path: Path, columns: tuple[str, ...]) -> list[dict[str, str]]:
    """The rows of a CSV file that must have ``columns``; a one-line ConfigError otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in columns if c not in (reader.fieldnames or [])]
            if missing:
                raise ConfigError(f"{path}: missing column(s) {', '.join(missing)}")
            return list(reader)
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; save the file as UTF-8") from None
    except csv.Error as e:
        raise ConfigError(f"{path}: not a valid CSV file ({e})") from None


def read_losses(path: Path) -> list[tuple[int, float]]:
    """(step, loss) rows of a ``loss.csv``."""
    rows = read_csv_columns(path, ("step", "loss"))
    try:
        return [(int(r["step"]), float(r["loss"])) for r in rows]
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{path}: not a number ({e})") from None


def read_rates(path: Path) -> dict[str, dict[str, float]]:
    """``{concept: {model: rate}}`` from a ``rates.csv`` (columns concept, model, rate)."""
    rows = read_csv_columns(path, ("concept", "model", "rate"))
    rates: dict[str, dict[str, float]] = {}
    try:
        for r in rows:
            rates.setdefault(r["concept"], {})[r["model"]] = float(r["rate"])
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{path}: not a number ({e})") from None
    return rates
