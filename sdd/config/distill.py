"""``params/distill.yaml``: the SDD engine's settings (:mod:`sdd.erasure`), robust erasure's adversary included."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from sdd.config.common import _Strict


class AdversarialConfig(_Strict):
    """Robust erasure (issue 15): a min-max SDD run, in the spirit of AdvUnlearn / STEREO / RECE.

    Every ``every`` steps the current student is attacked, in turn by each of ``attacks``: concept
    inversion (one new token learnt on the base model's images of a concept) or a discrete token
    prefix (PEZ); the encoded conditionings of the found prompts join a pool whose members replace
    ``fraction`` of each batch's erased conditionings. See sdd/erasure/adversary.py; benign prompts
    are kept by :class:`RetentionConfig`.
    """

    every: int = Field(50, ge=1, description="Attack the student every N steps (the first at step 0).")
    settle_steps: int = Field(0, ge=0, description="The last N steps attack no more: they distil the pool "
                                                   "found so far, so the run does not end on an unpatched attack.")
    attacks: list[Literal["inversion", "tokens"]] = Field(
        ["inversion"], min_length=1, description="In-loop attacks, taken in turn: inversion (one continuous "
                                                 "token embedding) or tokens (a discrete prefix, PEZ).")
    inversion_steps: int = Field(50, ge=1, description="Textual-inversion steps per attack.")
    inversion_lr: float = Field(2e-2, gt=0, description="Adam learning rate on the inverted token embedding.")
    inversion_batch: int = Field(4, ge=1, description="Target latents per inversion step.")
    prefix_tokens: int = Field(5, ge=1, description="Tokens of the discrete prefix the tokens attack finds.")
    prefix_steps: int = Field(30, ge=1, description="PEZ steps per tokens attack.")
    prefix_lr: float = Field(0.1, gt=0, description="Adam learning rate on the prefix's soft embeddings.")
    warm_start: bool = Field(True, description="Each attack starts from the previous attack's embedding "
                                               "(else from the concept word's).")
    targets: int = Field(16, ge=1, description="Target latents per concept: the base model drawing its prompts.")
    fraction: float = Field(0.5, ge=0, le=1, description="Share of each batch whose erased conditioning is "
                                                          "an adversarial one (once the pool has any).")
    pool_size: int = Field(8, ge=1, description="Adversarial conditionings kept (oldest dropped first).")
    jitter: float = Field(0.0, ge=0, description="Gaussian noise added to a pool conditioning's hidden states "
                                                 "each time it is distilled, as a fraction of each token's RMS: "
                                                 "a neighbourhood of each found embedding is erased, not a point.")
    blend: float = Field(0.0, ge=0, le=1, description="Share of the pool draws that are an affine blend "
                                                      "λ·a + (1-λ)·b of two pool conditionings, λ ~ U(-0.5, 1.5): "
                                                      "the region between (and past) the attacks found is erased.")


class RetentionConfig(_Strict):
    """The retention term (sdd/erasure/retention.py): the student's predictions on benign prompts are
    pulled towards the frozen base model's, at noised latents the base drew for them before step 0."""

    prompts: list[str] = Field(..., min_length=1, description="Benign prompts to keep; any naming a concept "
                                                              "being erased is left out at run time.")
    weight: float = Field(1.0, gt=0, description="Weight of the retention loss beside the SDD loss.")
    batch: int = Field(4, ge=1, description="Benign samples per step.")
    targets: int = Field(32, ge=1, description="Benign latents drawn by the base model (cycling over prompts).")

    @field_validator("prompts")
    @classmethod
    def _non_empty_prompts(cls, v: list[str]) -> list[str]:
        if not all(p.strip() for p in v):
            raise ValueError("retention prompts must be non-empty strings")
        return v


class LoraSettings(_Strict):
    """``train_method: lora`` (sdd/erasure/lora.py): a PEFT LoRA adapter on the denoiser trains instead
    of its weights. The erased model is the base with the adapter merged; the adapter is also written
    as a diffusers LoRA file that ``pipe.load_lora_weights`` loads onto the base model."""

    rank: int = Field(8, ge=1, description="LoRA rank r.")
    alpha: float = Field(8.0, gt=0, description="LoRA alpha: the update is scaled by alpha / rank.")
    targets: list[str] | None = Field(
        None, description="Module names (or name suffixes) the adapter wraps; None = the family's default: "
                          "the UNet's cross-attention projections (attn2.to_q/k/v/out.0), a joint-attention "
                          "transformer's context projections (add_q/k/v_proj, to_add_out: EraseAnything's).")

    @field_validator("targets")
    @classmethod
    def _targets(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and (not v or not all(t.strip() for t in v)):
            raise ValueError("give module names, e.g. [attn2.to_k, attn2.to_v], or null for the default")
        return v


class DistillConfig(_Strict):
    """SDD hyperparameters; defaults are the paper's (Kim et al. 2023), except ``sampler``.

    ``sampler: reference`` is the paper's loop (a fresh teacher trajectory of k DDIM steps for
    every training sample); ``pool`` reuses in-flight trajectories and costs ~2 instead of ~N
    teacher passes per sample (see sdd/erasure/engine.py). The last three settings trade compute for
    memory and do not change what is learnt beyond rounding.
    """

    steps: int = Field(1500, ge=1, description="Optimizer steps (training samples at batch 1).")
    lr: float = Field(1e-5, gt=0, description="AdamW learning rate (peak, with a schedule).")
    lr_schedule: Literal["constant", "linear", "cosine"] = Field(
        "constant", description="Learning-rate schedule over `steps` (diffusers.optimization.get_scheduler); "
                                "cosine/linear decay it to 0 by the last step.")
    lr_warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps of the schedule.")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    eps: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient-norm clip.")
    ema_decay: float = Field(0.999, ge=0, lt=1, description="EMA teacher decay per step.")
    ddim_steps: int = Field(50, ge=1, description="DDIM steps N of the teacher sampler (eta 0).")
    guidance_scale: float = Field(3.0, ge=1, description="CFG scale of the teacher sampler (not Flux: it samples "
                                                         "without classifier-free guidance).")
    flux_guidance: float = Field(3.5, ge=0, description="FLUX.1-dev's embedded guidance value, the same for the "
                                                        "student's, the target's and the teacher's passes "
                                                        "(ignored by other models).")
    anchor_prompt: str = Field("", description="The prompt whose prediction is the target; '' = the empty prompt "
                                               "(the paper). FLUX.1-dev has no true unconditional branch, so its "
                                               "'' is an approximation too; an anchor such as 'a photo' is one.")
    train_method: Literal["xattn", "xattn_out", "full", "selfattn", "noxattn", "context", "attn", "attn+ff",
                          "lora", "text_encoder", "text_encoder+xattn"] = Field(
        "xattn", description="Trained parameters. UNet models: xattn=attn2, xattn_out=attn2.to_out, selfattn=attn1, "
                             "noxattn=all but attn2, full=the whole UNet. SD3/Flux transformers: context=the text "
                             "stream's projections in the joint attention, attn=every attention weight, "
                             "attn+ff=attention and feed-forward, full=the whole transformer. Any family: "
                             "lora=a LoRA adapter on the denoiser (see lora:), text_encoder=every weight of the "
                             "text encoder(s), the denoiser untouched; "
                             "text_encoder+xattn=the text encoder(s) and attn2 (transformers: context).")
    xattn_lr_scale: float = Field(1.0, gt=0, description="Learning-rate multiplier for the cross-attention (attn2) "
                                                         "parameters when more than them train (full, "
                                                         "text_encoder+xattn): the concept words enter there.")
    concept_schedule: Literal["iterative", "composite", "random"] = Field(
        "iterative", description="Which concept prompt c_s each step erases.")
    batch_size: int = Field(1, ge=1, description="Training samples per optimizer step.")
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = Field(
        "auto", description="auto = bf16 autocast on CUDA, fp32 on CPU.")
    seed: int = Field(0, description="Seed for noise, step indices and timesteps.")
    checkpoint_every: int = Field(100, ge=1, description="Write a resumable checkpoint every N steps.")
    resolution: int | None = Field(None, ge=8, description="Image size in pixels; None = the model's native size.")
    sampler: Literal["pool", "reference"] = Field(
        "pool", description="Where z_k comes from: reference = a fresh k-step teacher trajectory per sample; "
                            "pool = batch_size trajectories at staggered steps, each one DDIM step further "
                            "per optimizer step.")
    gradient_checkpointing: bool = Field(False, description="Recompute the student UNet's activations in backward "
                                                            "(not the text encoder's: 77 tokens are cheap to keep).")
    frozen_dtype: Literal["fp32", "bf16"] = Field(
        "fp32", description="Storage dtype of the UNet weights that are not trained (bf16 implies bf16 autocast); "
                            "text encoders stay fp32.")
    attention: Literal["sdpa", "sliced", "eager"] = Field(
        "sdpa", description="UNet attention: sdpa = torch's fused kernel (diffusers' default), sliced = one "
                            "head slice at a time, eager = the full attention matrix.")
    lora: LoraSettings | None = Field(None, description="The adapter of train_method lora; None = LoraSettings' "
                                                        "defaults (rank 8, alpha 8, the family's targets).")
    retention: RetentionConfig | None = Field(
        None, description="Keep benign prompts' predictions near the frozen base model's "
                          "(sdd/erasure/retention.py); None = the SDD loss alone.")
    adversarial: AdversarialConfig | None = Field(
        None, description="Robust erasure: adversarial conditionings in the loop (sdd/erasure/adversary.py); "
                          "None = plain SDD.")

    @model_validator(mode="after")
    def _bf16_weights_need_bf16_compute(self) -> DistillConfig:
        if self.frozen_dtype == "bf16" and self.mixed_precision in ("no", "fp16"):
            raise ValueError("frozen_dtype bf16 needs mixed_precision auto or bf16")
        return self

