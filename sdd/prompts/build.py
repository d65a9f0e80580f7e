"""``sdd prompts build``: the train / eval / benign sets of some concepts and their ``index.json``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sdd.config import check_concept_names
from sdd.prompts.real import import_coco_captions, import_i2p, literal_prompts
from sdd.prompts.sets import FORMAT, FORMAT_VERSION, INDEX_FILE, PromptSetError, write_prompt_set
from sdd.prompts.toy import toy_benign_prompts, toy_eval_prompts, toy_train_prompts
from sdd.storage import check_writable_dir, write_json_atomic


def build_prompt_sets(concepts: Sequence[str], model_kind: str = "toy", out_dir: Path = Path("data/prompts"),
                      *, seeds_per_prompt: int = 2, i2p: str | None = None,
                      i2p_categories: dict[str, Sequence[str]] | None = None, i2p_limit: int | None = None,
                      coco: str | None = None, benign_limit: int | None = 1000,
                      literal_eval_seeds: int = 100) -> dict[str, Any]:
    """Write ``train``, ``eval`` and ``benign`` sets plus ``index.json`` to ``out_dir``.

    ``model_kind="toy"``: toy-world prompts (see the ``toy_*_prompts`` builders).
    ``model_kind="real"``: the literal concept for training; I2P rows for evaluation if ``i2p`` is
    given (else the literal concept with ``literal_eval_seeds`` seeds); COCO captions as benign
    prompts if ``coco`` is given (else no benign set, and no quality metrics).
    Returns the index (set name -> file, rows, sha256).
    """
    if not concepts:
        raise PromptSetError("no concepts given; pass at least one --concept")
    check_concept_names(concepts)
    if model_kind == "toy":
        sets = [toy_train_prompts(concepts), toy_eval_prompts(concepts, seeds_per_prompt),
                toy_benign_prompts(concepts, seeds_per_prompt)]
    elif model_kind == "real":
        evaluation = (import_i2p(i2p, concepts, i2p_categories, i2p_limit) if i2p
                      else literal_prompts(concepts, literal_eval_seeds, kind="eval"))
        sets = [literal_prompts(concepts), evaluation]
        if coco:
            sets.append(import_coco_captions(coco, benign_limit))
    else:
        raise PromptSetError(f"model kind '{model_kind}' is unknown; use toy or real")
    out_dir = Path(out_dir)
    check_writable_dir(out_dir)  # a one-line ConfigError, not an OSError traceback at the first write
    index: dict[str, Any] = {"format": FORMAT, "version": FORMAT_VERSION, "model_kind": model_kind,
                             "concepts": [c.strip().lower() for c in concepts], "sets": {}}
    for ps in sets:
        file = f"{ps.kind}.jsonl"
        digest = write_prompt_set(ps, out_dir / file)
        index["sets"][ps.kind] = {"file": file, "rows": len(ps), "sha256": digest}
    write_json_atomic(out_dir / INDEX_FILE, index)
    return index
