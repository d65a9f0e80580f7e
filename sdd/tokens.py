"""Placeholder tokens on a pipeline's text encoders, and what white-box attacks learn through them.

:class:`Placeholders` adds new tokens to every tokenizer / text encoder pair of a pipeline (SD 1.x/2.x:
one, SDXL: two, the toy: one) and puts everything back on exit, so an attack never leaves the model
modified. Through them: textual inversion (a learnt embedding row, :func:`encode` keeps its gradient,
:func:`denoise_loss` is the objective) and PEZ (a discrete prefix: :func:`straight_through`,
:func:`project_to_vocab`, :func:`set_tokens`); :func:`substitute` puts a token in place of a concept's words.

Two stages use them: the red team's attacks (:mod:`sdd.redteam.attacks`) and robust erasure's
in-loop adversary (:mod:`sdd.erasure.adversary`).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sdd.errors import ConfigError
from sdd.models import UNET, Conditioner, Conditioning, TrainingNoise, autocast, denoiser, family, is_sdxl, predict

#: The (tokenizer, text encoder) attributes of a pipeline: SD and the toy have the first pair, SDXL and
#: Flux two (Flux's second is T5), SD3 all three (the third is T5).
ENCODER_PAIRS = (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"), ("tokenizer_3", "text_encoder_3"))


def encoder_pairs(pipe) -> list[tuple[str, str]]:
    """The (tokenizer, text encoder) attribute pairs ``pipe`` has."""
    return [(t, e) for t, e in ENCODER_PAIRS
            if getattr(pipe, t, None) is not None and getattr(pipe, e, None) is not None]


def shared_vocabulary(pipe) -> bool:
    """Whether every tokenizer of ``pipe`` has the same vocabulary (SD, SDXL: CLIP's; not SD3 or Flux,
    whose T5 has its own)."""
    vocabs = [getattr(pipe, t).get_vocab() for t, _ in encoder_pairs(pipe)]
    return all(v == vocabs[0] for v in vocabs[1:])


def pez_pairs(pipe) -> list[tuple[str, str]]:
    """The text encoders a discrete prompt search (PEZ) optimises through: every one when they share a
    vocabulary (one token id for all); otherwise the last one's vocabulary (T5's: the token sequence of
    SD3 and Flux), the other encoders (CLIP) reading the found tokens as text."""
    pairs = encoder_pairs(pipe)
    if shared_vocabulary(pipe):
        return pairs
    last = getattr(pipe, pairs[-1][0]).get_vocab()
    return [(t, e) for t, e in pairs if getattr(pipe, t).get_vocab() == last]


# --- placeholder tokens -------------------------------------------------------------------------


class ExtendedEmbedding(nn.Module):
    """A token embedding whose ids from ``first_id`` on read rows of an external tensor (``rows``)."""

    def __init__(self, base: nn.Embedding, first_id: int, rows: torch.Tensor):
        super().__init__()
        self.base, self.first_id = base, first_id
        self.set_rows(rows)

    def set_rows(self, rows: torch.Tensor) -> None:
        self.__dict__["rows"] = rows  # not registered: may be a non-leaf tensor (PEZ straight-through)

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.base(ids.clamp(max=self.first_id - 1))
        extra = ids >= self.first_id
        if not extra.any():
            return out
        picked = self.rows[(ids - self.first_id).clamp(0, len(self.rows) - 1)].to(out.dtype)
        return torch.where(extra[..., None], picked, out)


@dataclass
class _Slot:
    tokenizer_attr: str
    encoder_attr: str
    tokenizer: Any
    embedding: nn.Module
    extended: ExtendedEmbedding | None = None

    @property
    def vocab(self) -> torch.Tensor:
        """The real tokens' embeddings (rows below the first placeholder id)."""
        return self.extended.base.weight[: self.extended.first_id]


class Placeholders:
    """``with Placeholders(pipe, names) as ph:`` -- new tokens in every tokenizer and text encoder.

    Inside, ``pipe(prompt=...)`` and :func:`encode` understand ``names``; ``ph.set_rows(i, rows)``
    sets their embeddings in encoder ``i`` (rows may require grad). On exit the original tokenizers
    and embedding modules are put back (the objects themselves are never modified).
    """

    def __init__(self, pipe, names: Sequence[str], pairs: Sequence[tuple[str, str]] | None = None):
        self.pipe, self.names = pipe, list(names)
        self.slots = [_Slot(t, e, getattr(pipe, t), getattr(pipe, e).get_input_embeddings())
                      for t, e in (encoder_pairs(pipe) if pairs is None else pairs)]

    def __enter__(self) -> Placeholders:
        try:
            for slot in self.slots:
                tok = copy.deepcopy(slot.tokenizer)
                if tok.add_tokens(self.names) != len(self.names):
                    raise ConfigError(f"placeholder tokens {self.names[:2]}... already exist in {slot.tokenizer_attr}")
                first = tok.convert_tokens_to_ids(self.names[0])
                weight = slot.embedding.weight
                rows = torch.zeros(len(self.names), weight.shape[1], device=weight.device, dtype=weight.dtype)
                slot.extended = ExtendedEmbedding(slot.embedding, first, rows)
                setattr(self.pipe, slot.tokenizer_attr, tok)
                getattr(self.pipe, slot.encoder_attr).set_input_embeddings(slot.extended)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for slot in self.slots:
            setattr(self.pipe, slot.tokenizer_attr, slot.tokenizer)
            getattr(self.pipe, slot.encoder_attr).set_input_embeddings(slot.embedding)

    def set_rows(self, i: int, rows: torch.Tensor) -> None:
        self.slots[i].extended.set_rows(rows)

    def word_embedding(self, i: int, words: Sequence[str]) -> torch.Tensor:
        """Mean embedding (encoder ``i``) of the tokens of ``words``; the mean token if they have none."""
        tok, slot = self.slots[i].tokenizer, self.slots[i]
        special = {tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}
        ids = [t for w in words for t in tok(w).input_ids if t not in special]
        vocab = slot.vocab.detach()
        return (vocab[ids] if ids else vocab).float().mean(0)


# --- conditioning and the denoising objective ----------------------------------------------------


def encode(pipe, prompts: list[str], t5_prompts: list[str] | None = None) -> Conditioning:
    """Text conditioning for the pipeline's denoiser that keeps gradients (``Conditioner.encode`` does not).
    ``t5_prompts`` (SD3, Flux) go to T5 in place of ``prompts``."""
    if family(pipe) != UNET:
        return Conditioner(pipe).encode_with_grad(list(prompts), t5_prompts)
    device = pipe.unet.device
    if not is_sdxl(pipe):
        embeds, _ = pipe.encode_prompt(list(prompts), device, 1, False)
        return Conditioning(embeds)
    embeds, _, pooled, _ = pipe.encode_prompt(list(prompts), device=device, num_images_per_prompt=1,
                                              do_classifier_free_guidance=False)
    side = pipe.unet.config.sample_size * pipe.vae_scale_factor
    time_ids = torch.tensor([[side, side, 0, 0, side, side]], device=device, dtype=embeds.dtype)
    return Conditioning(embeds, {"text_embeds": pooled, "time_ids": time_ids.repeat(len(prompts), 1)})


def denoise_loss(pipe, noise: TrainingNoise, latents: torch.Tensor, cond: Conditioning,
                 generator: torch.Generator, reduce: bool = True) -> torch.Tensor:
    """MSE between the denoiser's prediction and its training target (ε, v or velocity) on noised ``latents``."""
    return unet_error(pipe, *noised(noise, latents, generator), cond, reduce)


def noised(noise: TrainingNoise, latents: torch.Tensor,
           generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``latents`` noised at random timesteps (noise first, then timesteps, from ``generator``):
    the noisy latents, the timesteps and the denoiser's target (the noise, v, or the velocity)."""
    eps = torch.randn(latents.shape, generator=generator).to(latents.device)
    t = noise.timesteps(len(latents), generator).to(latents.device)
    return noise.add_noise(latents, eps, t), t, noise.target(latents, eps, t)


def unet_error(pipe, noisy: torch.Tensor, t: torch.Tensor, target: torch.Tensor, cond: Conditioning,
               reduce: bool = True) -> torch.Tensor:
    """The denoiser's squared error on ``noisy`` against ``target``: its mean, or one mean per sample."""
    with autocast(noisy.device):
        pred = predict(denoiser(pipe), noisy, t, cond)
    err = (pred.float() - target.float()) ** 2
    return err.mean() if reduce else err.flatten(1).mean(1)


# --- adversarial tokens (PEZ) --------------------------------------------------------------------


def project_to_vocab(ph: Placeholders, soft: list[torch.Tensor], allowed: torch.Tensor) -> torch.Tensor:
    """Vocabulary ids nearest (squared L2, summed over text encoders: one token id for all) to each soft row."""
    dist = 0
    for slot, s in zip(ph.slots, soft, strict=True):
        dist = dist + torch.cdist(s.detach().float(), slot.vocab.detach().float()[allowed]) ** 2
    return allowed[dist.argmin(-1)]


def straight_through(ph: Placeholders, soft: list[torch.Tensor], allowed: torch.Tensor) -> torch.Tensor:
    """One PEZ forward: the placeholders carry the nearest real tokens' rows, while gradients flow
    to the soft rows (straight-through). The chosen vocabulary ids."""
    ids = project_to_vocab(ph, soft, allowed)
    for e, (slot, s) in enumerate(zip(ph.slots, soft, strict=True)):
        hard = slot.vocab.detach()[ids].float()
        ph.set_rows(e, s + (hard - s).detach())
    return ids


def pez_vocabulary(ph: Placeholders, as_text: bool) -> torch.Tensor:
    """The token ids a prefix may use: the real tokens, less the begin token; read as text (``as_text``,
    CLIP reading T5's tokens), less every special token, which decoding would drop."""
    tok = ph.slots[0].tokenizer
    excluded = set(tok.all_special_ids) if as_text else {tok.bos_token_id}
    return torch.tensor([t for t in range(ph.slots[0].extended.first_id) if t not in excluded])


def prefixed_text(ph: Placeholders, ids: torch.Tensor, prompt: str) -> str:
    """``prompt`` after the prefix ``ids`` written out as text (what a user would type)."""
    words = ph.slots[0].tokenizer.decode(ids.tolist(), skip_special_tokens=True).strip()
    return f"{words} {prompt}".strip()


def encode_prefixed(pipe, ph: Placeholders, placeholder_prompts: list[str], ids: torch.Tensor, k: int,
                    prompts: list[str], as_text: bool) -> Conditioning:
    """The conditioning of prompts with a k-token prefix: through the placeholders alone (one vocabulary),
    or (``as_text``) T5 through the placeholders and CLIP through the prefix as text; ``ids`` holds the
    prefixes of ``prompts[i]`` at ``i*k:(i+1)*k``."""
    if not as_text:
        return encode(pipe, placeholder_prompts)
    texts = [prefixed_text(ph, ids[i * k:(i + 1) * k], p) for i, p in enumerate(prompts)]
    return encode(pipe, texts, t5_prompts=placeholder_prompts)


def set_tokens(ph: Placeholders, ids: torch.Tensor) -> None:
    """The placeholders carry real vocabulary rows ``ids``: the prompt is real text again."""
    for e, slot in enumerate(ph.slots):
        ph.set_rows(e, slot.vocab.detach()[ids])


# --- a concept's words in a prompt ---------------------------------------------------------------


def words_pattern(words: Sequence[str]) -> re.Pattern:
    """Any of ``words`` as a whole word, case-insensitive; longest first, so phrases win over their parts."""
    return re.compile(r"\b(" + "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True)) + r")\b",
                      re.IGNORECASE)


def substitute(prompt: str, words: Sequence[str], token: str) -> str:
    """``prompt`` with every concept word replaced by ``token``; ``token`` prepended if none occurs."""
    out, n = words_pattern(words).subn(token, prompt)
    return out if n else f"{token} {prompt}"


