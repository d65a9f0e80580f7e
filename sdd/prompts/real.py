"""Prompt sets for real models: the literal concept, I2P prompts and COCO captions, from a path or ``s3://``."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence

from sdd.prompts.sets import PromptRow, PromptSet, PromptSetError, read_text, seeded_rows, validate_row

#: I2P categories a concept name maps to when the name itself is not one.
I2P_CATEGORY_ALIASES = {"nudity": "sexual", "nude": "sexual", "naked": "sexual"}


def literal_prompts(concepts: Sequence[str], seeds_per_prompt: int = 1, first_seed: int = 0,
                    kind: str = "train") -> PromptSet:
    """The concept itself as the prompt ("nudity"): SDD's erasure prompt for real models."""
    prompts = [(c.strip(), (c.strip().lower(),)) for c in concepts]
    return PromptSet(kind, kind, seeded_rows(prompts, "literal", seeds_per_prompt, first_seed))


def import_i2p(uri: str, concepts: Sequence[str], categories: dict[str, Sequence[str]] | None = None,
               limit: int | None = None) -> PromptSet:
    """I2P prompts (CSV: prompt, categories, evaluation_seed, evaluation_guidance) for ``concepts``.

    A row is kept if its comma-separated categories include one mapped to a concept; by default a
    concept maps to the category of the same name, or ``nudity`` -> ``sexual``. The row's concepts
    are every concept it matched; its seed and guidance are I2P's own.
    """
    categories = {c.lower(): tuple(x.lower() for x in v) for c, v in (categories or {}).items()}
    wanted = {c.lower(): categories.get(c.lower(), (I2P_CATEGORY_ALIASES.get(c.lower(), c.lower()),))
              for c in concepts}
    reader = csv.DictReader(io.StringIO(read_text(uri)))
    needed = {"prompt", "categories", "evaluation_seed", "evaluation_guidance"}
    missing = needed - set(reader.fieldnames or [])
    if missing:
        raise PromptSetError(f"{uri}: not an I2P CSV (missing columns: {', '.join(sorted(missing))})")
    rows = []
    for n, record in enumerate(reader, start=1):
        row_categories = {c.strip().lower() for c in (record["categories"] or "").split(",")}
        evoked = tuple(c for c, cats in wanted.items() if row_categories & set(cats))
        if not evoked:
            continue
        seed, guidance = _number(record, "evaluation_seed", int, uri, n), \
            _number(record, "evaluation_guidance", float, uri, n)
        rows.append(validate_row({"prompt": record["prompt"], "seed": seed, "concepts": evoked, "source": "i2p",
                          "guidance": guidance}, f"{uri}: row {n}"))
        if limit is not None and len(rows) >= limit:
            break
    if not rows:
        raise PromptSetError(f"{uri}: no I2P rows in categories "
                             f"{', '.join(sorted({x for v in wanted.values() for x in v}))}")
    meta = {"i2p": uri, "categories": {k: list(v) for k, v in wanted.items()}}
    return PromptSet("eval", "eval", tuple(rows), meta)


def _number(record: dict, column: str, kind: type, uri: str, n: int):
    value = (record.get(column) or "").strip()
    try:
        return kind(float(value)) if kind is int else kind(value)
    except ValueError:
        raise PromptSetError(f"{uri}: row {n}: field '{column}': expected a number, got {value!r}") from None


def import_coco_captions(uri: str, limit: int | None = None, first_seed: int = 2_000_000,
                         one_per_image: bool = True) -> PromptSet:
    """Benign prompts from COCO captions: a ``captions_*.json`` file, or plain text, one per line.

    From the JSON, the first caption (lowest annotation id) of each image is kept by default, images
    in id order, so the same ``limit`` always selects the same captions.
    """
    text = read_text(uri)
    if uri.lower().endswith(".json"):
        try:
            annotations = json.loads(text)["annotations"]
            pairs = sorted((a["image_id"], a["id"], a["caption"]) for a in annotations)
        except (ValueError, KeyError, TypeError):
            raise PromptSetError(f"{uri}: not a COCO captions file (needs annotations with "
                                 "image_id, id, caption)") from None
        seen: set = set()
        captions = []
        for image_id, _, cap in pairs:
            if one_per_image and image_id in seen:
                continue
            seen.add(image_id)
            captions.append(cap)
    else:
        captions = text.splitlines()
    captions = [" ".join(c.split()) for c in captions if c.strip()][:limit]
    if not captions:
        raise PromptSetError(f"{uri}: no captions found")
    rows = tuple(PromptRow(prompt=c, seed=first_seed + i, source="coco") for i, c in enumerate(captions))
    return PromptSet("benign", "benign", rows, {"coco": uri})


