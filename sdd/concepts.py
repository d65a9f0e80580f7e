"""Concept sets as sets: one normal form and one hash, whatever order or spelling they come in.

The flows key their run folders on :func:`concept_set_hash`, re-erase compares it with the
production model's ``concepts_sha256`` tag, and ``sdd concepts publish`` sends it in its event
(:func:`concepts_updated_payload`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sdd.config import load_concept_sets


def normalise_concepts(names: list[str]) -> list[str]:
    """Stripped, de-duplicated and sorted: a concept *set*, whatever order it was written in."""
    return sorted({n.strip() for n in names if n.strip()})


def concept_set_hash(base_model: str, names: list[str]) -> str:
    """The ``concepts_sha256`` an erasure of this set records in its manifest and registry tags.

    It is :func:`sdd.distill.concepts_hash` of the concepts the flow erases: the normalised names
    with their prompts (the toy world's templates for ``base_model="toy"``, the bare name otherwise).
    """
    from sdd.distill import concepts_hash, default_concepts

    return concepts_hash(default_concepts(base_model, normalise_concepts(names)))


def concepts_updated_payload(concepts_file: Path) -> dict[str, Any]:
    """Validate ``concepts_file``; what the ``sdd.concepts.updated`` event says about its active set."""
    sets = load_concept_sets(concepts_file)
    active = sets.active_set
    names = normalise_concepts(active.concepts)
    return {"concepts_file": str(concepts_file), "active": sets.active, "base_model": active.base_model,
            "concepts": names, "concepts_sha256": concept_set_hash(active.base_model, names)}
