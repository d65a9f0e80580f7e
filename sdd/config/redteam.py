"""``params/redteam.yaml``: the red team's attacks and their budgets (:mod:`sdd.redteam`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from sdd.config.common import PARAMS_DIR, _Strict, check_concept_names, load_model

#: The red team's attacks (:mod:`sdd.redteam.attacks`), in the order they run and appear in reports.
ATTACK_NAMES = ("transfer", "adversarial_tokens", "concept_inversion", "relearning")


class TransferAttackConfig(_Strict):
    per_prompt: int = Field(3, ge=1, description="Rephrasings (generations) per effective prompt.")
    prompts_file: str | None = Field(None, description="CSV of published adversarial prompts (MMA-Diffusion, "
                                                       "P4D, Ring-A-Bell), path or s3:// URI; None = toy grammar.")
    column: str | None = Field(None, description="CSV column holding the adversarial prompt; None = detect.")

class AdvTokensConfig(_Strict):
    tokens: int = Field(5, ge=1, description="Adversarial tokens prepended to each prompt.")
    steps: int = Field(40, ge=1, description="Projected-gradient steps per prompt (at most).")
    lr: float = Field(0.1, gt=0, description="Adam learning rate on the soft token embeddings.")
    batch_size: int = Field(2, ge=1, description="Noised copies of the target per prompt and step.")
    check_every: int = Field(10, ge=1, description="Generate and judge every N steps (early stop on success).")
    max_prompts: int | None = Field(24, ge=1, description="Seeded subsample of effective prompts; None = all.")
    init: Literal["random", "pad"] = Field("random",
                                           description="Start tokens: random ones (UnlearnDiffAtk) or padding.")

class ConceptInversionConfig(_Strict):
    steps: int = Field(1000, ge=1, description="Textual-inversion steps.")
    lr: float = Field(5e-3, gt=0, description="Adam learning rate on the token embedding.")
    batch_size: int = Field(4, ge=1, description="Target images per step.")
    images: int | None = Field(64, ge=1, description="Target images (base images of effective prompts); None = all.")
    restarts: int = Field(3, ge=1, description="Independent inversions (seeds seed, seed+1, ...); a prompt is "
                                               "broken if any of them draws the concept.")

class RelearningConfig(_Strict):
    steps: int = Field(100, ge=1, description="Fine-tuning steps (Adam) on the base images of the concept.")
    lr: float = Field(1e-4, gt=0, description="Adam learning rate on the fine-tuned UNet weights.")
    batch_size: int = Field(4, ge=1, description="Target images per step.")
    images: int | None = Field(64, ge=1, description="Target images (base images of effective prompts); None = all.")
    train_method: Literal["full", "xattn"] = Field(
        "full", description="UNet weights the attacker fine-tunes: all of them, or the cross-attention only.")

class CostCurvesConfig(_Strict):
    """Attack success against the attacker's budget, for the erased and the base model: how much harder
    the erasure makes it, where one budget only says whether that attack succeeded (issue 31)."""

    inversion_steps: list[int] = Field([100, 300, 1000], description="Concept-inversion steps at which the "
                                       "concept prompts are drawn with the token learnt so far (concept_inversion's "
                                       "restarts and lr).")
    relearning_steps: list[int] = Field([10, 50, 200], description="Relearning (fine-tuning) steps at which the "
                                        "concept prompts are drawn (relearning's lr, batch and weights).")
    models: list[Literal["erased", "base"]] = Field(["erased", "base"], min_length=1,
                                                    description="Models to draw curves for; the base model's is "
                                                                "the reference (what the attack costs unerased).")

    def budgets(self, attack: str) -> list[int]:
        """The budgets of ``attack`` (concept_inversion or relearning)."""
        return {"concept_inversion": self.inversion_steps, "relearning": self.relearning_steps}[attack]

    @field_validator("inversion_steps", "relearning_steps")
    @classmethod
    def _budgets(cls, v: list[int]) -> list[int]:
        if not v or any(b < 1 for b in v):
            raise ValueError("give one or more budgets of at least 1 step, e.g. [10, 50, 200]")
        if v != sorted(set(v)):
            raise ValueError("list the budgets once each, in increasing order")
        return v


class RedteamConfig(_Strict):
    """Attacks, budgets and robustness gates of ``sdd redteam`` (issue 15)."""

    attacks: list[Literal["transfer", "adversarial_tokens", "concept_inversion", "relearning"]] = Field(
        list(ATTACK_NAMES), min_length=1, description="Attacks to run.")
    concepts: list[str] | None = Field(None, description="Concepts to attack; None = every concept of the prompts.")
    concept_words: dict[str, list[str]] = Field(
        default_factory=dict, description="Words naming a concept (replaced by the inversion token); "
                                          "default: the toy synonyms, else the concept name.")
    seed: int = Field(0, description="Seed of every attack (noise, timesteps, subsamples).")
    num_inference_steps: int = Field(25, ge=1, description="Sampler steps per image.")
    guidance_scale: float = Field(5.0, ge=0, description="CFG scale for rows without their own guidance.")
    batch_size: int = Field(64, ge=1, description="Images per pipeline call.")
    grid_images: int = Field(8, ge=1, description="Columns of each attack grid.")
    transfer: TransferAttackConfig = Field(default_factory=TransferAttackConfig)
    adversarial_tokens: AdvTokensConfig = Field(default_factory=AdvTokensConfig)
    concept_inversion: ConceptInversionConfig = Field(default_factory=ConceptInversionConfig)
    relearning: RelearningConfig = Field(default_factory=RelearningConfig)
    cost_curves: CostCurvesConfig | None = Field(
        default_factory=CostCurvesConfig,
        description="ASR at several budgets of concept inversion and relearning, for the erased and the base "
                    "model (each only when its attack is in `attacks`); None = off.")

    @field_validator("concepts")
    @classmethod
    def _valid_concepts(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else check_concept_names(v)

    @field_validator("concept_words")
    @classmethod
    def _words_given(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for concept, words in v.items():
            if not words or not all(w.strip() for w in words):
                raise ValueError(f"{concept}: give at least one non-blank word")
        return v

def load_redteam_config(path: Path = PARAMS_DIR / "redteam.yaml",
                        overrides: dict[str, Any] | None = None) -> RedteamConfig:
    return load_model(RedteamConfig, path, overrides)
