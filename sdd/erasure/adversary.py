"""Robust erasure (issue 15 item 5): SDD with an adversary in the loop (``DistillConfig.adversarial``).

A min-max run in the spirit of AdvUnlearn / STEREO / RECE. Every ``every`` steps the current
student is attacked, by each of ``attacks`` in turn, so that it redraws the base model's images of
a concept (the *target latents*: the frozen base drawing the concept prompts, drawn once and kept):

* ``inversion``: one new token embedding is learnt (with :mod:`sdd.tokens`' placeholder tokens
  and denoising loss); the concept prompts with that token in place of the concept words;
* ``tokens``: a prefix of real vocabulary tokens is found by PEZ (projected gradient, as the red
  team's adversarial-tokens attack); the concept prompts with that prefix.

The found prompts are encoded, and their hidden states (not the tokens: the shipped tokenizer and
text encoder stay unchanged) join the *adversarial pool*; when the text encoder trains
(``train_method: text_encoder``, ``text_encoder+xattn``) the prompts join it at the text encoder's
input instead, and go through the student's text encoder each time (:mod:`sdd.erasure.adversary_inputs`).
Each step, ``fraction`` of the batch distils an adversarial conditioning, instead of a concept prompt,
to the student's unconditional prediction (optionally a noised one, ``jitter``, or a blend of two,
``blend``: a neighbourhood instead of a point).

Benign prompts are kept by the retention term (:mod:`sdd.erasure.retention`, ``DistillConfig.retention``),
which works with or without the adversary.

Everything random comes from the Distiller's generator and ``random.Random``; target latents,
the pool and the warm-start embeddings are saved in checkpoints, so a resumed run
is bit-identical to an uninterrupted one (on CPU). What a step computes is *pending* until the
Distiller commits the step (:meth:`Adversary.commit`), as for the trajectory pool.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import torch

from sdd.erasure.adversary_inputs import InputPrompt, encode_inputs, load_member, state_tensors
from sdd.erasure.retention import cycle
from sdd.errors import ConfigError
from sdd.models import Conditioning, TrainingNoise
from sdd.tokens import (
    Placeholders,
    denoise_loss,
    encode,
    encode_prefixed,
    pez_pairs,
    pez_vocabulary,
    project_to_vocab,
    set_tokens,
    shared_vocabulary,
    straight_through,
    substitute,
)

if TYPE_CHECKING:
    from sdd.erasure.engine import Distiller

# The logger keeps the name it had as sdd/robust.py.
logger = logging.getLogger("sdd.robust")

TOKEN = "<sdd-adversary>"


@dataclass
class AdversaryState:
    """What the adversary carries from step to step (all of it checkpointed)."""

    targets: torch.Tensor | None = None  # (concepts * targets, C, H, W) base latents of the concept prompts
    embeddings: dict[int, list[torch.Tensor]] = field(default_factory=dict)  # concept -> per encoder, (1, D)
    # Adversarial conditionings, one prompt each; prompts at the text encoder's input when it trains.
    pool: list[Conditioning | InputPrompt] = field(default_factory=list)
    prefixes: list[str] = field(default_factory=list)  # the token prefixes found so far, as text
    attacks: int = 0


class Adversary:
    """The adversarial part of one :class:`sdd.erasure.engine.Distiller` run."""

    def __init__(self, distiller: Distiller):
        self.d = distiller
        self.cfg = distiller.config.adversarial
        self.at_input = distiller.trains_text_encoder  # pool prompts at the text encoder's input
        if self.at_input and self.cfg.blend:
            raise ConfigError(f"adversarial.blend: blends pooled hidden states, which train_method "
                              f"'{distiller.config.train_method}' does not pool; set it to 0")
        # SD3 / Flux: PEZ searches T5 tokens and CLIP reads them as text (sdd.tokens.encode_prefixed)
        self.tokens_as_text = not shared_vocabulary(distiller.pipe)
        if "tokens" in self.cfg.attacks and self.at_input and self.tokens_as_text:
            raise ConfigError(f"adversarial.attacks: 'tokens' with train_method '{distiller.config.train_method}' "
                              "pools placeholder tokens of one vocabulary, and this pipeline's CLIP and T5 have "
                              "two; use [inversion], or a train_method that trains the denoiser")
        self.noise_scheduler = TrainingNoise(distiller.pipe)
        self.state = AdversaryState()
        self.pending: AdversaryState | None = None

    # -- per step --

    def prepare(self) -> None:
        """Draw the target latents (first step) and attack the student when due; pending until commit."""
        d, cfg = self.d, self.cfg
        state = replace(self.state, embeddings=dict(self.state.embeddings), pool=list(self.state.pool),
                        prefixes=list(self.state.prefixes))
        if state.targets is None:
            state.targets = d.draw_base_latents([p for c in d.concepts for p in cycle(c.prompts, cfg.targets)])
        if d.step % cfg.every == 0 and d.step < d.config.steps - cfg.settle_steps:
            round_ = d.step // cfg.every
            ci = round_ % len(d.concepts)  # concepts in turn, then the next attack for all of them
            if cfg.attacks[(round_ // len(d.concepts)) % len(cfg.attacks)] == "inversion":
                emb, conds = self.invert(ci, state)
                state.embeddings[ci] = emb
            else:
                prefix, conds = self.find_prefix(ci, state)
                state.prefixes.append(prefix)
            state.pool = (state.pool + conds)[-cfg.pool_size:]
            state.attacks += 1
        self.pending = state

    def commit(self) -> None:
        if self.pending is not None:
            self.state, self.pending = self.pending, None

    def discard(self) -> None:
        self.pending = None

    @property
    def current(self) -> AdversaryState:
        return self.pending if self.pending is not None else self.state

    def adversarial_slots(self, batch_size: int) -> int:
        """How many samples of a batch distil an adversarial conditioning (0 while the pool is empty)."""
        return round(self.cfg.fraction * batch_size) if self.current.pool else 0

    def mix(self, erased: Conditioning) -> Conditioning:
        """``erased`` with its last ``fraction`` of samples replaced by conditionings from the pool."""
        n, pool = len(erased), self.current.pool
        k = self.adversarial_slots(n)
        if k == 0:
            return erased
        if self.at_input:
            members = [pool[self.d.rng.randrange(len(pool))] for _ in range(k)]
            adv = encode_inputs(self.d.pipe, members, self.cfg.jitter, self.d.generator)
            return Conditioning.cat([erased[: n - k], adv])
        adv = Conditioning.cat([self._draw_from_pool(pool) for _ in range(k)])
        hidden = adv.hidden_states
        if self.cfg.jitter:
            rms = hidden.pow(2).mean(dim=-1, keepdim=True).sqrt()
            hidden = hidden + self.cfg.jitter * rms * torch.randn(hidden.shape, generator=self.d.generator)
        adv = Conditioning(hidden.to(erased.hidden_states),
                           {key: v.to(erased.added[key]) for key, v in adv.added.items()})
        return Conditioning.cat([erased[: n - k], adv])

    def _draw_from_pool(self, pool: list[Conditioning]) -> Conditioning:
        """One pool member, or (with probability ``blend``) an affine blend of two of them."""
        a = pool[self.d.rng.randrange(len(pool))]
        if not self.cfg.blend or self.d.rng.random() >= self.cfg.blend:
            return a
        b = pool[self.d.rng.randrange(len(pool))]
        lam = self.d.rng.uniform(-0.5, 1.5)
        return Conditioning(lam * a.hidden_states + (1 - lam) * b.hidden_states,
                            {k: lam * v + (1 - lam) * b.added[k] for k, v in a.added.items()})

    # -- the attack --

    def invert(self, ci: int, state: AdversaryState) -> tuple[list[torch.Tensor], list[Conditioning | InputPrompt]]:
        """Concept inversion on the student for concept ``ci``: its new embedding(s) and conditionings."""
        d, cfg = self.d, self.cfg
        concept = d.concepts[ci]
        words = [concept.name, *concept.prompts]
        prompts = cycle(concept.prompts, cfg.targets)
        targets = state.targets[ci * cfg.targets:(ci + 1) * cfg.targets].to(d.device)
        pipe, gen = d.pipe, d.generator
        with Placeholders(pipe, [TOKEN]) as ph:
            previous = state.embeddings.get(ci) if cfg.warm_start else None
            emb = [(previous[e] if previous else ph.word_embedding(e, words)[None]).detach().clone()
                   .to(slot.vocab.device).requires_grad_(True) for e, slot in enumerate(ph.slots)]
            for e, row in enumerate(emb):
                ph.set_rows(e, row)
            opt = torch.optim.Adam(emb, lr=cfg.inversion_lr)
            adv_prompts = [substitute(p, words, TOKEN) for p in prompts]
            for _ in range(cfg.inversion_steps):
                pick = torch.randint(len(prompts), (cfg.inversion_batch,), generator=gen).tolist()
                loss = denoise_loss(pipe, self.noise_scheduler, targets[pick],
                                    encode(pipe, [adv_prompts[i] for i in pick]), gen)
                # Gradients for the embedding only: the student's .grad stays untouched.
                for row, g in zip(emb, torch.autograd.grad(loss, emb), strict=True):
                    row.grad = g
                opt.step()
            found = [row.detach().clone() for row in emb]
            unique = list(dict.fromkeys(adv_prompts))
            if self.at_input:
                members = [InputPrompt(p, [TOKEN], rows=[r.float().cpu() for r in found]) for p in unique]
            else:
                for e, row in enumerate(found):
                    ph.set_rows(e, row)
                with torch.no_grad():
                    members = _one_per_prompt(encode(pipe, unique))
        logger.debug("attack at step %d on %s: final inversion loss %.4g", d.step, concept.name, loss.item())
        return [r.cpu() for r in found], members

    def find_prefix(self, ci: int, state: AdversaryState) -> tuple[str, list[Conditioning | InputPrompt]]:
        """A discrete prefix (PEZ, as the red team's adversarial-tokens attack) that makes the student
        redraw concept ``ci``'s target latents: the prefix as text, and the prefixed concept prompts'
        conditionings."""
        d, cfg = self.d, self.cfg
        prompts = cycle(d.concepts[ci].prompts, cfg.targets)
        targets = state.targets[ci * cfg.targets:(ci + 1) * cfg.targets].to(d.device)
        names = [f"<sdd-prefix-{j}>" for j in range(cfg.prefix_tokens)]
        prefixed = [" ".join(names) + " " + p for p in prompts]
        gen = d.generator
        k, as_text = len(names), self.tokens_as_text
        with Placeholders(d.pipe, names, pez_pairs(d.pipe)) as ph:
            tok = ph.slots[0].tokenizer
            allowed = pez_vocabulary(ph, as_text)
            start = allowed[torch.randint(len(allowed), (len(names),), generator=gen)]
            soft = [slot.vocab.detach()[start].float().clone().requires_grad_(True) for slot in ph.slots]
            opt = torch.optim.Adam(soft, lr=cfg.prefix_lr)
            for _ in range(cfg.prefix_steps):
                ids = straight_through(ph, soft, allowed)
                pick = torch.randint(len(prompts), (cfg.inversion_batch,), generator=gen).tolist()
                cond = encode_prefixed(d.pipe, ph, [prefixed[i] for i in pick], ids.repeat(len(pick)), k,
                                       [prompts[i] for i in pick], as_text)
                loss = denoise_loss(d.pipe, self.noise_scheduler, targets[pick], cond, gen)
                for row, g in zip(soft, torch.autograd.grad(loss, soft), strict=True):
                    row.grad = g
                opt.step()
            ids = project_to_vocab(ph, soft, allowed)
            unique = list(dict.fromkeys(prefixed))
            if self.at_input:
                members = [InputPrompt(p, names, ids=ids.cpu()) for p in unique]
            else:
                set_tokens(ph, ids)
                originals = [prompts[prefixed.index(p)] for p in unique]
                with torch.no_grad():
                    members = _one_per_prompt(encode_prefixed(d.pipe, ph, unique, ids.repeat(len(unique)), k,
                                                              originals, as_text))
        prefix = tok.decode(ids.tolist(), skip_special_tokens=as_text).strip()
        logger.debug("attack at step %d on %s: prefix %r, final loss %.4g", d.step, d.concepts[ci].name,
                     prefix, loss.item())
        return prefix, members

    # -- checkpoint and manifest --

    def state_tensors(self) -> tuple[dict[str, torch.Tensor], dict]:
        s = self.state
        tensors: dict[str, torch.Tensor] = {}
        meta: dict = {"attacks": s.attacks, "pool": [], "embeddings": {}, "prefixes": s.prefixes}
        if s.targets is not None:
            tensors["adv.targets"] = s.targets
        for ci, rows in s.embeddings.items():
            meta["embeddings"][str(ci)] = len(rows)
            for e, row in enumerate(rows):
                tensors[f"adv.embedding.{ci}.{e}"] = row
        for i, cond in enumerate(s.pool):
            if isinstance(cond, InputPrompt):
                member_tensors, member_meta = state_tensors(i, cond)
                tensors.update(member_tensors)
                meta["pool"].append(member_meta)
                continue
            tensors[f"adv.pool.{i}.hidden_states"] = cond.hidden_states
            for k, v in cond.added.items():
                tensors[f"adv.pool.{i}.added.{k}"] = v
            meta["pool"].append(sorted(cond.added))
        return tensors, meta

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict | None) -> None:
        meta = meta or {"attacks": 0, "pool": [], "embeddings": {}}
        self.state = AdversaryState(
            targets=tensors.get("adv.targets"),
            embeddings={int(ci): [tensors[f"adv.embedding.{ci}.{e}"] for e in range(n)]
                        for ci, n in meta["embeddings"].items()},
            pool=[load_member(i, keys, tensors) if isinstance(keys, dict)
                  else Conditioning(tensors[f"adv.pool.{i}.hidden_states"],
                                    {k: tensors[f"adv.pool.{i}.added.{k}"] for k in keys})
                  for i, keys in enumerate(meta["pool"])],
            prefixes=list(meta.get("prefixes", [])), attacks=meta["attacks"])
        self.pending = None

    def summary(self) -> dict:
        s = self.state
        return {"attacks": s.attacks, "pool": len(s.pool), "target_latents": 0 if s.targets is None else len(s.targets),
                "prefixes": s.prefixes[-5:]}


def _one_per_prompt(cond: Conditioning) -> list[Conditioning]:
    """A batch conditioning as detached float32 CPU conditionings of one prompt each (pool members)."""
    return [Conditioning(cond.hidden_states[i:i + 1].detach().float().cpu(),
                         {k: v[i:i + 1].detach().float().cpu() for k, v in cond.added.items()})
            for i in range(len(cond.hidden_states))]
