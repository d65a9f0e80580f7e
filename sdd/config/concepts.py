"""``params/concepts.yaml``: named concept sets, and the one production must have erased
(:mod:`sdd.prompts.concepts`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from sdd.config.common import PARAMS_DIR, _Strict, check_concept_name, read_yaml, validate


class ConceptSet(_Strict):
    """A named list of concepts to erase, and the base model to erase them from."""

    concepts: list[str] = Field(min_length=1, description="Concept names, e.g. [nudity] or [red, triangle].")
    base_model: str = Field("toy", min_length=1, description="'toy', a diffusers folder or a hub id.")
    description: str = Field("", description="What the set is for (shown in reports).")

    @field_validator("concepts")
    @classmethod
    def _valid_names(cls, names: list[str]) -> list[str]:
        return [check_concept_name(n) for n in names]  # duplicates are fine here: the set is normalised

    @model_validator(mode="before")
    @classmethod
    def _bare_list(cls, data: Any) -> Any:
        """``toy-colors: [red]`` is shorthand for ``toy-colors: {concepts: [red]}``."""
        return {"concepts": data} if isinstance(data, list) else data


class ConceptSets(_Strict):
    """``params/concepts.yaml``: named concept sets and the one the nightly re-erasure keeps in production."""

    active: str = Field(..., min_length=1, description="Name of the set production must have erased.")
    sets: dict[str, ConceptSet] = Field(..., min_length=1, description="Named concept sets.")

    @model_validator(mode="after")
    def _active_exists(self) -> ConceptSets:
        if self.active not in self.sets:
            raise ValueError(f"active set '{self.active}' is not one of: {', '.join(self.sets)}")
        return self

    @property
    def active_set(self) -> ConceptSet:
        return self.sets[self.active]


def load_concept_sets(path: Path = PARAMS_DIR / "concepts.yaml") -> ConceptSets:
    """Load the concept sets; unlike the other params files this one must exist."""
    return validate(ConceptSets, read_yaml(path), str(path))

