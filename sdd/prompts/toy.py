"""Toy-world prompt sets: erasure prompts, held-out evaluation prompts, benign prompts (:mod:`sdd.toy.world`)."""

from __future__ import annotations

import random
from collections.abc import Sequence

from sdd.prompts.sets import PromptSet, PromptSetError, seeded_rows
from sdd.toy import world


def _canonical_toy(concept: str) -> str:
    canonical = world.color_of(concept) or world.shape_of(concept)
    if canonical is None:
        raise PromptSetError(f"'{concept}' is not a toy-world colour or shape; use one of "
                             f"{', '.join(world.COLOR_NAMES + world.SHAPE_NAMES)}")
    return canonical


def _toy_names(canonical: str) -> tuple[str, ...]:
    return world.COLORS[canonical][0] if canonical in world.COLORS else world.SHAPES[canonical]


def _evoked(erased: Sequence[str], *canonicals: str | None) -> tuple[str, ...]:
    return tuple(c for c in erased if c in canonicals)


def toy_train_prompts(concepts: Sequence[str]) -> PromptSet:
    """Erasure prompts: :func:`sdd.toy.world.toy_erasure_prompts` for every concept.

    Each concept's last synonym is held out of its training prompts, so evaluation can test whether
    erasure generalises to a word it never saw.
    """
    erased = [_canonical_toy(c) for c in concepts]
    prompts = [(p, (c,)) for c in erased for p in world.toy_erasure_prompts(c)]
    held_out = sorted(_toy_names(c)[-1] for c in erased)
    return PromptSet("train", "train", seeded_rows(prompts, "toy-train", 1), {"concepts": erased, "held_out": held_out})


def toy_eval_prompts(concepts: Sequence[str], seeds_per_prompt: int = 2, first_seed: int = 0) -> PromptSet:
    """Held-out evaluation prompts: held-out templates x every synonym x the other attribute."""
    erased = [_canonical_toy(c) for c in concepts]
    prompts = []
    for concept in erased:
        is_color = concept in world.COLORS
        others = world.SHAPES if is_color else {c: v[0] for c, v in world.COLORS.items()}
        for template in world.HELDOUT_TEMPLATES:
            for name in _toy_names(concept):
                for other, other_names in others.items():
                    for other_name in other_names:
                        c, s = (name, other_name) if is_color else (other_name, name)
                        cc, sc = (concept, other) if is_color else (other, concept)
                        prompts.append((world.fill(template, c=c, s=s), _evoked(erased, cc, sc)))
    return PromptSet("eval", "eval", seeded_rows(prompts, "toy-heldout", seeds_per_prompt, first_seed),
                     {"concepts": erased})


def toy_benign_prompts(concepts: Sequence[str], seeds_per_prompt: int = 2, first_seed: int = 1_000_000,
                       seed: int = 0) -> PromptSet:
    """Prompts naming only colours and shapes that are not erased (training templates, random synonyms)."""
    erased = {_canonical_toy(c) for c in concepts}
    rng = random.Random(seed)
    prompts = [(world.caption(c, s, t, rng), ())
               for c in world.COLOR_NAMES if c not in erased
               for s in world.SHAPE_NAMES if s not in erased
               for t in world.TRAIN_TEMPLATES]
    return PromptSet("benign", "benign", seeded_rows(prompts, "toy-benign", seeds_per_prompt, first_seed),
                     {"erased": sorted(erased)})


