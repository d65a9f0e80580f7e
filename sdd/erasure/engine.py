"""SDD: Safe self-Distillation of Diffusion models (Kim et al. 2023) -- the erasure engine.

:class:`Distiller` holds one run's whole state -- student, EMA teacher, optimizer, RNGs, trajectory
pool, the retention term, robust erasure's adversary -- and takes one optimizer step at a time; :func:`erase` runs it
and writes the outputs. What it optimises is :mod:`sdd.erasure.objective`'s, where its training
latents come from :mod:`sdd.erasure.sampler`'s, its retention term :mod:`sdd.erasure.retention`'s, its
adversary :mod:`sdd.erasure.adversary`'s, and
the checkpoint that saves its state :mod:`sdd.erasure.checkpoint`'s.

All randomness comes from one seeded ``torch.Generator`` and one ``random.Random``, both saved in
checkpoints, so a resumed run reproduces an uninterrupted one bit for bit (on CPU).

Outputs in ``out_dir`` (written by :mod:`sdd.erasure.outputs`): ``model/``, ``patch.safetensors``,
``manifest.json``, ``loss.csv``; while training runs, the resumable ``checkpoint/``
(state.safetensors + state.json). The concepts themselves are :mod:`sdd.prompts.concepts`'.
"""

from __future__ import annotations

import logging
import math
import random
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers import DiffusionPipeline
from diffusers.optimization import get_scheduler
from tqdm.auto import tqdm

from sdd.config import ConfigError, DistillConfig, check_concept_names
from sdd.erasure.adversary import Adversary
from sdd.erasure.checkpoint import load_checkpoint, save_checkpoint
from sdd.erasure.components import UNET, frozen_copies, qualified, qualified_parameters, select_trained
from sdd.erasure.lora import add_lora
from sdd.erasure.objective import TRAIN_METHODS, ema_update, sdd_loss
from sdd.erasure.outputs import ErasureResult, write_outputs
from sdd.erasure.retention import Retention
from sdd.erasure.sampler import Batch, Pool, ddim_step, pool_phases, sample_latents
from sdd.layout import CHECKPOINT_DIR
from sdd.models import (
    Conditioner,
    Conditioning,
    SamplingGrid,
    autocast,
    denoiser,
    latent_shape,
    load_pipeline,
    unet_weights_hash,
    uses_classifier_free_guidance,
    weights_hash,
)
from sdd.prompts import Concept
from sdd.storage import check_writable_dir, recover_interrupted_writes

# The logger keeps the name users and docs/reliability.md know it by (the engine was sdd/distill.py).
logger = logging.getLogger("sdd.distill")

# With several concepts, the teacher samples towards one prompt of each, joined with this.
SAMPLING_SEPARATOR = ", "


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last checkpoint on disk is left untouched."""



@contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C until the block ends, so state is never saved half-updated."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append((signum, frame)))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received and previous is not signal.SIG_IGN:
            if callable(previous):
                previous(*received[0])
            else:
                raise KeyboardInterrupt


# --- the engine ------------------------------------------------------------------------------


class Distiller:
    """Student, EMA teacher, optimizer and RNG state of one erasure run.

    ``pipe.unet`` becomes the student and is modified in place; ``self.teacher`` is the result. With a
    text-encoder ``train_method`` the pipeline's text encoder(s) train in place too
    (``self.student_text_encoders``), with EMA copies in ``self.teacher_text_encoders``. Three
    conditioners (:class:`Conditioner`) encode prompts: the student's (``self.conditioner``, the pipeline's own
    encoders), the teacher's and the frozen base model's; while no text encoder trains they are one.
    """

    def __init__(self, pipe: DiffusionPipeline, concepts: list[Concept], config: DistillConfig):
        if not concepts:
            raise ConfigError("give at least one concept to erase")
        check_concept_names([c.name for c in concepts])  # a concept given twice is a mistake
        self.pipe, self.concepts, self.config = pipe, list(concepts), config
        self.device = denoiser(pipe).device
        # Eval mode: the prediction and its target must be the same function (no dropout).
        self.student = denoiser(pipe).eval()  # the UNet, or SD3's / Flux's transformer
        if config.train_method == "lora":
            add_lora(pipe, self.student, config.lora, config.seed)
        selected = select_trained(pipe, config.train_method)
        self.student_text_encoders = {c: getattr(pipe, c).eval() for c in selected if c != UNET}
        self.trains_text_encoder = bool(self.student_text_encoders)
        students = {UNET: self.student, **self.student_text_encoders}
        self.trained = [qualified(c, n) for c, names in selected.items() for n in names]
        for module in students.values():
            module.requires_grad_(False)
        student_params = qualified_parameters(students)
        self.student_params = [student_params[n].requires_grad_(True) for n in self.trained]
        self.precision = "bf16" if config.frozen_dtype == "bf16" else config.mixed_precision
        self.frozen_fp32 = self._apply_memory_options()
        teachers = frozen_copies(students, selected)
        self.teacher = teachers.pop(UNET)
        self.teacher_text_encoders = teachers
        teacher_params = qualified_parameters({UNET: self.teacher, **teachers})
        self.teacher_params = [teacher_params[n] for n in self.trained]
        # The frozen base model, for the retention term and the adversary's targets: a copy of the trained
        # parameters as they are now (untrained), the rest shared; made before any hook or training.
        needs_base = config.retention is not None or config.adversarial is not None
        bases = frozen_copies(students, selected) if needs_base else {UNET: None}
        self.base = bases.pop(UNET)
        self.base_text_encoders = bases
        self.conditioner = Conditioner(pipe, config.resolution, guidance=config.flux_guidance)
        self.teacher_conditioner = self._conditioner(self.teacher_text_encoders)
        self.base_conditioner = self._conditioner(self.base_text_encoders)
        self.retention = Retention(self) if config.retention is not None else None
        self.adversary = Adversary(self) if config.adversarial is not None else None

        self.optimizer = torch.optim.AdamW(self._param_groups(), lr=config.lr, betas=config.betas,
                                           eps=config.eps, weight_decay=config.weight_decay)
        self.lr_scheduler = get_scheduler(config.lr_schedule, self.optimizer, num_warmup_steps=config.lr_warmup_steps,
                                          num_training_steps=config.steps)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.mixed_precision == "fp16")
        self.latent_shape = latent_shape(pipe, config.resolution)
        self.grid = SamplingGrid(pipe, config.ddim_steps, self.latent_shape, self.device)
        # Flux samples with one conditional pass (guidance-distilled); the others with classifier-free guidance.
        self.guidance = config.guidance_scale if uses_classifier_free_guidance(pipe) else None
        # Prompts longer than the text encoder's limit are cut to their first tokens: say so, and record it.
        self.truncated_prompts = self.conditioner.truncated([p for c in self.concepts for p in c.prompts])
        if self.truncated_prompts:
            logger.warning("%d concept prompt(s) exceed the text encoder's %d tokens and are truncated, e.g. %.80r",
                           len(self.truncated_prompts), self.conditioner.max_tokens, self.truncated_prompts[0])
        self.sampling_truncation = self.conditioner.truncated_joins([c.prompts for c in self.concepts],
                                                                    SAMPLING_SEPARATOR)
        if self.sampling_truncation.cut and len(self.concepts) > 1:  # one concept: warned about just above
            logger.warning("%d of %d sampling prompt(s) (one prompt per concept, joined with %r) exceed the text "
                           "encoder's %d tokens and are truncated, e.g. %.80r", self.sampling_truncation.cut,
                           self.sampling_truncation.possible, SAMPLING_SEPARATOR, self.conditioner.max_tokens,
                           self.sampling_truncation.longest)

        self.generator = torch.Generator("cpu").manual_seed(config.seed)
        self.rng = random.Random(config.seed)
        self.pool: Pool | None = None
        self.unet_passes = 0  # latent images through either UNet (a CFG step of n latents = 2n)
        for unet in (self.student, self.teacher):
            unet.register_forward_pre_hook(self._count_passes, with_kwargs=True)
        self.step = 0
        self.losses: list[float] = []
        self.last_checkpoint_step: int | None = None
        self.base_hash: str | None = None  # identifies the base model in checkpoints and the manifest
        # ... and, when they train, its text encoders (attribute -> sha256)
        self.base_text_encoder_hashes = {c: weights_hash(m) for c, m in self.student_text_encoders.items()}

    def _conditioner(self, text_encoders: dict[str, torch.nn.Module]) -> Conditioner:
        """A conditioner with ``text_encoders`` (a teacher's, the base's); the student's while none trains."""
        if not text_encoders:
            return self.conditioner
        return Conditioner(self.pipe, self.config.resolution, text_encoders, guidance=self.config.flux_guidance)

    def encode_student(self, prompts: list[str]) -> Conditioning:
        """Conditioning through the student's text encoder(s): with gradients while they train."""
        if self.trains_text_encoder:
            return self.conditioner.encode_with_grad(prompts)
        return self.conditioner.encode(prompts)

    def _param_groups(self) -> list[dict]:
        """One AdamW group, or two when ``xattn_lr_scale`` gives the cross-attention its own lr."""
        scale = self.config.xattn_lr_scale
        xattn = [TRAIN_METHODS["xattn"](n) for n in self.trained]
        if scale == 1 or all(xattn) or not any(xattn):
            return [{"params": self.student_params}]
        params = list(zip(self.student_params, xattn, strict=True))
        return [{"params": [p for p, x in params if not x]},
                {"params": [p for p, x in params if x], "lr": self.config.lr * scale}]

    def _apply_memory_options(self) -> dict[str, torch.Tensor]:
        """Attention kernel, gradient checkpointing, bf16 frozen weights (before the teacher shares them).

        Returns fp32 copies (on the CPU) of the weights cast to bf16, which :meth:`restore_frozen_weights`
        puts back so that the saved model is exactly base + patch.
        """
        cfg, unet = self.config, self.student
        if cfg.attention == "sliced" and hasattr(unet, "set_attention_slice"):
            unet.set_attention_slice("auto")
        elif cfg.attention == "eager":
            from diffusers.models.attention_processor import AttnProcessor

            unet.set_attn_processor(AttnProcessor())
        if cfg.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        if cfg.frozen_dtype == "fp32":
            return {}
        trained, originals = set(self.trained), {}
        for name, p in unet.named_parameters():
            if name not in trained and p.dtype == torch.float32:
                originals[name] = p.detach().to("cpu", copy=True)
                p.data = p.data.to(torch.bfloat16)
        return originals

    def restore_frozen_weights(self) -> None:
        """Undo ``frozen_dtype: bf16`` (student and teacher share these tensors)."""
        params = dict(self.student.named_parameters())
        for name, value in self.frozen_fp32.items():
            params[name].data = value.to(self.device)
        self.frozen_fp32 = {}

    def _count_passes(self, module, args, kwargs) -> None:
        sample = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
        self.unet_passes += sample.shape[0]

    # -- one step --

    def _erased_prompt(self, index: int, sampling_prompt: str) -> str:
        """c_s of the ``index``-th sample of this step, by ``concept_schedule``."""
        cfg, n = self.config, len(self.concepts)
        if cfg.concept_schedule == "composite":
            return sampling_prompt
        i = (self.step * cfg.batch_size + index) % n if cfg.concept_schedule == "iterative" \
            else self.rng.randrange(n)
        return self.rng.choice(self.concepts[i].prompts)

    def _sampling_prompt(self) -> str:
        return SAMPLING_SEPARATOR.join(self.rng.choice(c.prompts) for c in self.concepts)

    def _noise(self, n: int) -> torch.Tensor:
        noise = torch.randn((n, *self.latent_shape), generator=self.generator)
        return noise * self.grid.init_noise_sigma

    def _train_timestep(self, k: int) -> int | float:
        """t for a z_k: drawn from DDIM step k's bin (the paper), or flow matching's grid timestep k."""
        bin_ = self.grid.timestep_range(k)
        return self.rng.randrange(*bin_) if bin_ else float(self.grid.timesteps[k])

    def target_conditioning(self, n: int) -> Conditioning:
        """The target's conditioning (stop-gradient): the empty prompt, or ``anchor_prompt``."""
        if not self.config.anchor_prompt:
            return self.conditioner.empty(n)
        with torch.no_grad():
            return self.conditioner.encode([self.config.anchor_prompt] * n)

    @torch.no_grad()
    def draw_base_latents(self, prompts: list[str]) -> torch.Tensor:
        """The frozen base model's final DDIM latents for ``prompts`` (guided, this run's settings): the
        retention term's benign latents and the adversary's targets."""
        noise = self._noise(len(prompts)).to(self.device)
        with autocast(self.device, self.precision):
            return sample_latents(self.base, self.grid, noise, [self.config.ddim_steps] * len(prompts),
                                  self.base_conditioner.encode(prompts), self.base_conditioner.empty(len(prompts)),
                                  self.guidance).float()

    def draw_batch(self) -> Batch:
        if self.config.sampler == "pool":
            return self._draw_pool_batch()
        cfg = self.config
        ks, timesteps, sampling, erased = [], [], [], []
        for b in range(cfg.batch_size):
            k = self.rng.randrange(cfg.ddim_steps)
            ks.append(k)
            timesteps.append(self._train_timestep(k))
            sampling.append(self._sampling_prompt())
            erased.append(self._erased_prompt(b, sampling[-1]))
        return Batch(ks, timesteps, sampling, erased, self._noise(cfg.batch_size))

    def _draw_pool_batch(self) -> Batch:
        """The pool's z_k as the batch; fresh noise and prompts for the slots that finish this step."""
        if self.pool is None:
            self.pool = self.start_pool()
        n, pool = self.config.ddim_steps, self.pool
        timesteps = [self._train_timestep(k) for k in pool.ks]
        erased = [self._erased_prompt(b, p) for b, p in enumerate(pool.prompts)]
        restarts = [self._sampling_prompt() for k in pool.ks if k == n - 1]
        return Batch(list(pool.ks), timesteps, list(pool.prompts), erased, self._noise(len(restarts)),
                     latents=pool.latents, restart_prompts=restarts)

    def start_pool(self) -> Pool:
        """``batch_size`` teacher trajectories run to evenly staggered steps from a random offset.

        A one-off cost of about one reference step; each slot's k is then uniform at every step.
        """
        cfg = self.config
        ks = pool_phases(self.rng.randrange(cfg.ddim_steps), cfg.batch_size, cfg.ddim_steps)
        prompts = [self._sampling_prompt() for _ in ks]
        noise = self._noise(len(ks)).to(self.device)
        with autocast(self.device, self.precision):
            latents = sample_latents(self.teacher, self.grid, noise, ks, self.teacher_conditioner.encode(prompts),
                                     self.teacher_conditioner.empty(len(ks)), self.guidance)
        return Pool(latents, ks, prompts)

    def advance_pool(self, batch: Batch) -> Pool:
        """Every slot one teacher DDIM step further; slots that just gave z_{N-1} restart at k = 0."""
        n = self.config.ddim_steps
        going = [b for b, k in enumerate(batch.ks) if k + 1 < n]
        latents = batch.latents.clone()
        if going:
            prompts = [batch.sampling_prompts[b] for b in going]
            with autocast(self.device, self.precision):
                latents[going] = ddim_step(self.teacher, self.grid, latents[going],
                                           [batch.ks[b] for b in going], self.teacher_conditioner.encode(prompts),
                                           self.teacher_conditioner.empty(len(going)), self.guidance)
        done = [b for b, k in enumerate(batch.ks) if k + 1 == n]
        latents[done] = batch.noise.to(self.device, latents.dtype)
        restarts = iter(batch.restart_prompts)
        prompts = [p if k + 1 < n else next(restarts) for k, p in zip(batch.ks, batch.sampling_prompts, strict=True)]
        return Pool(latents, [(k + 1) % n for k in batch.ks], prompts)

    def forward_backward(self, batch: Batch) -> float:
        """Sample z_t with the teacher (or take the pool's), compute the SDD loss, backpropagate."""
        uncond = self.target_conditioning(len(batch.ks))  # the student's, stop-gradient: the target's
        erased = self.encode_student(batch.erased_prompts)
        if self.adversary is not None:
            erased = self.adversary.mix(erased)
        timesteps = torch.tensor(batch.timesteps, device=self.device)
        with autocast(self.device, self.precision):
            if batch.latents is None:
                teacher = self.teacher_conditioner
                latents = sample_latents(self.teacher, self.grid, batch.noise.to(self.device), batch.ks,
                                         teacher.encode(batch.sampling_prompts), teacher.empty(len(batch.ks)),
                                         self.guidance)
            else:
                latents = batch.latents
            loss = sdd_loss(self.student, latents, timesteps, erased, uncond)
            if self.retention is not None:
                loss = loss + self.retention.loss()
        value = loss.item()
        if not math.isfinite(value):
            where = (f"step {self.last_checkpoint_step}" if self.last_checkpoint_step is not None
                     else "none written")
            raise NonFiniteLossError(
                f"loss became {value} at step {self.step + 1}; last good checkpoint: {where}. "
                f"Lower lr or set mixed_precision: 'no'")
        self.scaler.scale(loss).backward()
        return value

    def apply_update(self, loss: float, pool: Pool | None = None) -> None:
        """Clip, step the optimizer, update the EMA teacher, move to the advanced pool, count the step."""
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.student_params, self.config.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        ema_update(self.teacher_params, self.student_params, self.config.ema_decay)
        if self.trains_text_encoder:  # the student's and the teacher's encodings are stale
            self.conditioner.clear_cache()
            self.teacher_conditioner.clear_cache()
        if pool is not None:
            self.pool = pool
        if self.adversary is not None:
            self.adversary.commit()
        self.step += 1
        self.losses.append(loss)

    def compute_step(self) -> tuple[float, Pool | None]:
        """Everything of one step that may be interrupted: draws, sampling, loss, backward, next pool.

        The pool moves on with the teacher of this step (before its EMA update), like the
        reference loop samples with it; nothing is committed until :meth:`apply_update`.
        """
        if self.adversary is not None:
            self.adversary.prepare()  # attacks the student when due; committed with the step
        batch = self.draw_batch()
        loss = self.forward_backward(batch)
        return loss, (self.advance_pool(batch) if batch.latents is not None else None)

    def train_step(self) -> float:
        loss, pool = self.compute_step()
        self.apply_update(loss, pool)
        return loss

    # -- the loop --

    def train(self, steps: int, checkpoint_dir: Path | None = None,
              on_step: Callable[[int, float], None] | None = None) -> None:
        """Train until ``self.step == steps``, checkpointing every ``checkpoint_every`` steps.

        On Ctrl-C the state as of the last completed step is checkpointed, then the
        KeyboardInterrupt propagates. A non-finite loss raises :class:`NonFiniteLossError` and
        writes nothing.
        """
        rng_at_step = self.rng_state()
        try:
            if self.retention is not None and self.retention.latents is None and self.step < steps:
                latents = self.retention.draw_latents()
                with _interrupts_deferred():
                    self.retention.latents, rng_at_step = latents, self.rng_state()
            if self.config.sampler == "pool" and self.pool is None and self.step < steps:
                pool = self.start_pool()
                with _interrupts_deferred():
                    self.pool, rng_at_step = pool, self.rng_state()
            while self.step < steps:
                loss, pool = self.compute_step()
                with _interrupts_deferred():
                    self.apply_update(loss, pool)
                    rng_at_step = self.rng_state()
                    due = self.step % self.config.checkpoint_every == 0 or self.step == steps
                    if checkpoint_dir and due:
                        save_checkpoint(self, checkpoint_dir)
                if on_step:
                    on_step(self.step, loss)
        except KeyboardInterrupt:
            if checkpoint_dir:
                with _interrupts_deferred():
                    # Rewind the draws of the unfinished step, so resuming redoes it exactly.
                    self.set_rng_state(rng_at_step)
                    self.optimizer.zero_grad(set_to_none=True)
                    if self.adversary is not None:
                        self.adversary.discard()
                    save_checkpoint(self, checkpoint_dir)
            raise

    # -- state --

    def rng_state(self) -> tuple:
        return self.generator.get_state(), self.rng.getstate()

    def set_rng_state(self, state: tuple) -> None:
        self.generator.set_state(state[0])
        self.rng.setstate(state[1])


def erase(model: str | DiffusionPipeline, concepts: list[Concept], out_dir: Path | str,
          config: DistillConfig | None = None, resume: bool = False, progress: bool = False,
          on_step: Callable[[int, float], None] | None = None) -> ErasureResult:
    """Erase ``concepts`` from ``model`` with SDD and write the outputs to ``out_dir``.

    ``model`` is anything :func:`sdd.models.load_pipeline` accepts, or a loaded pipeline (whose
    UNet is then trained in place). With ``resume``, training continues from
    ``out_dir/checkpoint`` if there is one; without it, an existing checkpoint is an error.
    """
    config = config or DistillConfig()
    out_dir = Path(out_dir)
    checkpoint = out_dir / CHECKPOINT_DIR
    if checkpoint.exists() and not resume:
        raise ConfigError(f"{out_dir} already holds a checkpoint; pass --resume to continue it or "
                          f"choose another --out")
    check_writable_dir(out_dir)  # fail before loading the model and training, not at the first checkpoint
    if resume:
        for action in recover_interrupted_writes(out_dir):
            logger.info("resume: %s (left by an interrupted write)", action)
    pipe = load_pipeline(model) if isinstance(model, str) else model
    base_hash = unet_weights_hash(denoiser(pipe))  # before training and before any bf16 cast
    distiller = Distiller(pipe, concepts, config)
    distiller.base_hash = base_hash
    if resume and checkpoint.exists():
        load_checkpoint(distiller, checkpoint)

    bar = tqdm(total=config.steps, initial=distiller.step, desc="sdd erase", unit="step",
               disable=not progress)

    def report(step: int, loss: float) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4g}")
        if on_step:
            on_step(step, loss)

    try:
        distiller.train(config.steps, checkpoint, report)
    finally:
        bar.close()
    distiller.restore_frozen_weights()
    return write_outputs(distiller, out_dir)
