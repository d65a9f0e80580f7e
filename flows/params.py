"""Flow parameters: the ``params/*.yaml`` settings as typed forms (concept sets: :mod:`sdd.prompts.concepts`).

Prefect renders a flow's pydantic parameters as a form in the UI. The models below are the
library's config models (:mod:`sdd.config`) with one change: **fields a caller leaves out come
from the params file** (``params/distill.yaml``, ``eval.yaml``, ``gates.yaml``, ``redteam.yaml``), read
when the parameters are validated, not the class defaults. So ``{"distill": {"steps": 2}}`` sent to
the REST API means "params/distill.yaml, with 2 steps", and an explicit ``null`` still means null
(which turns a gate off).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sdd.config import PARAMS_DIR, DistillConfig, EvalConfig, GatesConfig, RedteamConfig, load_model


def deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` applied; nested mappings are merged key by key."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _with_file_defaults(config: type[BaseModel], params_file: Path, data: Any) -> Any:
    if not isinstance(data, dict):  # already a model instance, or invalid: pydantic decides
        return data
    defaults = load_model(config, params_file).model_dump(mode="json")
    return deep_merge(defaults, data)


def _defaults_from(config: type[BaseModel], file_name: str):
    """A ``mode="before"`` validator filling the fields a caller left out from ``params/<file_name>``."""
    def file_defaults(cls, data: Any) -> Any:
        return _with_file_defaults(config, PARAMS_DIR / file_name, data)

    return model_validator(mode="before")(classmethod(file_defaults))


class DistillSettings(DistillConfig):
    """SDD hyperparameters; what you leave out comes from params/distill.yaml."""

    _file_defaults = _defaults_from(DistillConfig, "distill.yaml")


class EvalSettings(EvalConfig):
    """How images are generated and judged; what you leave out comes from params/eval.yaml."""

    _file_defaults = _defaults_from(EvalConfig, "eval.yaml")


class GateSettings(GatesConfig):
    """Pass/fail thresholds (null turns a gate off); what you leave out comes from params/gates.yaml."""

    _file_defaults = _defaults_from(GatesConfig, "gates.yaml")


class RedteamSettings(RedteamConfig):
    """Attacks and budgets of the red-team stage; what you leave out comes from params/redteam.yaml."""

    _file_defaults = _defaults_from(RedteamConfig, "redteam.yaml")


class PromptOptions(BaseModel):
    """Where the evaluation prompts come from (see ``sdd prompts build``)."""

    model_config = ConfigDict(extra="forbid")

    seeds_per_prompt: int = Field(2, ge=1, description="Toy world: seeds per evaluation prompt.")
    i2p: str | None = Field(None, description="Real models: I2P CSV (path or s3:// URI) for eval prompts.")
    i2p_categories: list[str] = Field(default_factory=list,
                                      description="Real models: I2P categories for every concept.")
    i2p_limit: int | None = Field(None, ge=1, description="Real models: keep at most this many I2P rows.")
    coco: str | None = Field(None, description="Real models: COCO captions (json/txt; path or s3://).")
    benign_limit: int = Field(1000, ge=1, description="Real models: number of COCO captions.")
    max_eval_prompts: int | None = Field(
        None, ge=2, description="Evaluate on at most this many rows, spread evenly over the eval and "
                                "benign sets (smoke runs); null = all.")
