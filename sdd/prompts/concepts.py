"""Concepts: what one erasure erases (:class:`Concept`, its prompts and hash), and concept *sets*
with one normal form and one hash, whatever order or spelling they come in.

The flows key their run folders on :func:`concept_set_hash`, re-erase compares it with the
production model's ``concepts_sha256`` tag, and ``sdd concepts publish`` sends it in its event
(:func:`concepts_updated_payload`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sdd.config import ConfigError, check_concept_name, check_concept_names, load_concept_sets


@dataclass
class Concept:
    """A concept to erase: its name and the prompts that express it (default: the name itself)."""

    name: str
    prompts: list[str] = field(default_factory=list)

    def __post_init__(self):
        check_concept_name(self.name)  # no blanks, control characters, path separators; <= 200 chars
        self.prompts = list(self.prompts) or [self.name]
        if not all(p.strip() for p in self.prompts):
            raise ConfigError(f"concept '{self.name}': prompts must be non-empty strings")


def concepts_hash(concepts: list[Concept]) -> str:
    """sha256 of the concept list (names and prompts, in order)."""
    return hashlib.sha256(json.dumps([asdict(c) for c in concepts], sort_keys=True).encode()).hexdigest()


def default_concepts(model: str, names: list[str]) -> list[Concept]:
    """Concepts from names: toy-world template prompts for the toy model, the bare name otherwise."""
    check_concept_names(names)  # before anything else uses a name
    if model != "toy":
        return [Concept(n) for n in names]
    from sdd.toy.world import toy_erasure_prompts

    try:
        return [Concept(n, toy_erasure_prompts(n)) for n in names]
    except ValueError as e:
        raise ConfigError(str(e)) from None


def normalise_concepts(names: list[str]) -> list[str]:
    """Stripped, de-duplicated and sorted: a concept *set*, whatever order it was written in."""
    return sorted({n.strip() for n in names if n.strip()})


def concept_set_hash(base_model: str, names: list[str]) -> str:
    """The ``concepts_sha256`` an erasure of this set records in its manifest and registry tags.

    It is :func:`concepts_hash` of the concepts the flow erases: the normalised names with their
    prompts (the toy world's templates for ``base_model="toy"``, the bare name otherwise).
    """
    return concepts_hash(default_concepts(base_model, normalise_concepts(names)))


def concepts_updated_payload(concepts_file: Path) -> dict[str, Any]:
    """Validate ``concepts_file``; what the ``sdd.concepts.updated`` event says about its active set."""
    sets = load_concept_sets(concepts_file)
    active = sets.active_set
    names = normalise_concepts(active.concepts)
    return {"concepts_file": str(concepts_file), "active": sets.active, "base_model": active.base_model,
            "concepts": names, "concepts_sha256": concept_set_hash(active.base_model, names)}
