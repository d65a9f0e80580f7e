"""Prompts in, the denoiser's text conditioning out, whatever the family.

``Conditioner`` turns prompts into a :class:`Conditioning` with the pipeline's own ``encode_prompt``:
SD needs hidden states only; SDXL also pooled text embeddings and size/crop "time ids"; SD3 hidden states
(CLIP and T5, joined) and pooled projections; Flux T5 hidden states, CLIP pooled projections, the RoPE
position ids of the text, and for FLUX.1-dev the guidance value its transformer embeds.
:func:`sdd.models.families.predict` hands them to the denoiser.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from diffusers import DiffusionPipeline

from sdd.models.families import (
    FLUX,
    SD3,
    denoiser,
    family,
    has_guidance_embedding,
    image_side,
    is_sdxl,
    swapped_modules,
)

#: FLUX.1-dev's guidance value when none is given (its pipeline's default).
FLUX_GUIDANCE = 3.5


@dataclass
class Conditioning:
    """The denoiser's text conditioning for a batch: hidden states; per-sample extras in ``added``
    (SDXL's ``text_embeds`` and ``time_ids``, SD3's and Flux's ``pooled_projections``, FLUX.1-dev's
    ``guidance``); and ``shared``, the same for every sample (Flux's ``txt_ids``; its ``img_ids`` follow the
    latents)."""

    hidden_states: torch.Tensor
    added: dict[str, torch.Tensor] = field(default_factory=dict)
    shared: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.hidden_states.shape[0]

    def __getitem__(self, index) -> Conditioning:
        return Conditioning(self.hidden_states[index], {k: v[index] for k, v in self.added.items()}, self.shared)

    @staticmethod
    def cat(parts: list[Conditioning]) -> Conditioning:
        return Conditioning(torch.cat([p.hidden_states for p in parts]),
                            {k: torch.cat([p.added[k] for p in parts]) for k in parts[0].added}, parts[0].shared)


class JoinedTruncation(NamedTuple):
    """:meth:`Conditioner.truncated_joins`: joined prompts too long, all possible ones, the longest one."""

    cut: int
    possible: int
    longest: str


class Conditioner:
    """Encodes prompts for the pipeline's denoiser with the pipeline's own ``encode_prompt``.

    The empty prompt is the pipeline's unconditional input for classifier-free guidance: the
    encoded "" for SD and SD3, and all-zero embeddings for SDXL models with ``force_zeros_for_empty_prompt``
    (how SDXL was trained to be unconditional). FLUX.1 has no unconditional branch; its "" is
    simply the empty prompt, encoded (``DistillConfig.anchor_prompt`` offers another).
    ``guidance`` is FLUX.1-dev's embedded guidance value (ignored by the other families).
    ``max_sequence_length`` is T5's prompt length (SD3, Flux); None = the pipeline's default.

    ``text_encoders`` (attribute -> module) encode in place of the pipeline's own: an erasure's EMA
    teacher or frozen base copy of a text encoder being trained. Encodings are cached; whoever
    changes the encoders' weights calls :meth:`clear_cache`, and :meth:`encode_with_grad` encodes
    through an encoder being trained (nothing cached).
    """

    #: Encoded prompts kept at most (SDXL: ~0.6 MB each); a composite schedule's joins can be many.
    CACHE_SIZE = 1024

    def __init__(self, pipe: DiffusionPipeline, resolution: int | None = None,
                 text_encoders: dict[str, torch.nn.Module] | None = None, guidance: float | None = None,
                 max_sequence_length: int | None = None):
        self.pipe = pipe
        self.text_encoders = dict(text_encoders or {})
        self.sdxl = is_sdxl(pipe)
        self.family = family(pipe)
        side = image_side(pipe, resolution)
        # SDXL micro-conditioning: original size, crop top-left, target size (no crop, native size).
        self._time_ids = torch.tensor([[side, side, 0, 0, side, side]], dtype=torch.float32)
        self.guidance = (guidance if guidance is not None else FLUX_GUIDANCE) if has_guidance_embedding(pipe) else None
        self.max_sequence_length = max_sequence_length or {SD3: 256, FLUX: 512}.get(self.family)
        self._empty: Conditioning | None = None
        self._cache: dict[str, Conditioning] = {}

    @property
    def device(self) -> torch.device:
        return denoiser(self.pipe).device

    @property
    def tokenizers(self) -> list:
        """The pipeline's tokenizers (SDXL has two)."""
        return [t for t in (getattr(self.pipe, n, None) for n in ("tokenizer", "tokenizer_2")) if t is not None]

    @property
    def max_tokens(self) -> int:
        """The text encoder's limit in tokens (the smallest of the pipeline's tokenizers)."""
        return min(t.model_max_length for t in self.tokenizers)

    def token_counts(self, prompt: str) -> tuple[int, ...]:
        """The tokens of ``prompt`` for each tokenizer, begin and end tokens included."""
        return tuple(len(t(prompt, truncation=False).input_ids) for t in self.tokenizers)

    def _too_long(self, counts: tuple[int, ...]) -> bool:
        return any(n > t.model_max_length for n, t in zip(counts, self.tokenizers, strict=True))

    def truncated(self, prompts: list[str]) -> list[str]:
        """The distinct ``prompts`` longer than :attr:`max_tokens`: the text encoder sees only their start."""
        return [p for p in dict.fromkeys(prompts) if self._too_long(self.token_counts(p))]

    def truncated_joins(self, groups: Sequence[Sequence[str]], separator: str) -> JoinedTruncation:
        """Of the prompts that join one prompt of each group with ``separator``: how many are too long.

        There are as many as the product of the groups' sizes, exponential in the number of groups,
        so rather than tokenizing each we add up token counts: CLIP's tokenizer splits words at
        ``", "``, so a joined prompt has its parts' tokens (less their begin/end tokens) plus one
        separator's per join. Counting the combinations over the limit is then a convolution of the
        groups' token-count histograms (at most a few hundred distinct totals): cheap, and exact
        unless punctuation ending a part merges with the separator ("!!, "): a token off per such join.
        """
        counts = [{p: self.token_counts(p) for p in dict.fromkeys(g)} for g in groups]
        bare = self.token_counts("")  # begin + end
        sep = [n - b for n, b in zip(self.token_counts(separator), bare, strict=True)]
        totals = Counter({tuple(b - s for b, s in zip(bare, sep, strict=True)): 1})  # no separator before the first
        for group in counts:
            parts = Counter(tuple(n - b + s for n, b, s in zip(c, bare, sep, strict=True)) for c in group.values())
            joined: Counter[tuple[int, ...]] = Counter()
            for total, ways in totals.items():
                for part, more in parts.items():
                    joined[tuple(a + b for a, b in zip(total, part, strict=True))] += ways * more
            totals = joined
        longest = separator.join(max(group, key=group.__getitem__) for group in counts)
        return JoinedTruncation(sum(n for t, n in totals.items() if self._too_long(t)), sum(totals.values()), longest)

    def _pack(self, embeds: torch.Tensor, pooled: torch.Tensor | None, txt_ids: torch.Tensor | None = None
              ) -> Conditioning:
        if self.family == SD3:
            return Conditioning(embeds, {"pooled_projections": pooled})
        if self.family == FLUX:
            added = {"pooled_projections": pooled}
            if self.guidance is not None:
                added["guidance"] = torch.full((len(embeds),), self.guidance, device=self.device, dtype=torch.float32)
            return Conditioning(embeds, added, {"txt_ids": txt_ids})
        if not self.sdxl:
            return Conditioning(embeds)
        time_ids = self._time_ids.to(self.device, embeds.dtype).repeat(len(embeds), 1)
        return Conditioning(embeds, {"text_embeds": pooled, "time_ids": time_ids})

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> Conditioning:
        """The conditioning of ``prompts``, without gradients. Each distinct prompt is encoded once,
        alone, and kept until :meth:`clear_cache`: an erasure's steps draw from a few dozen prompts,
        and the text encoder was a fifth of a toy step. Alone, so a prompt's conditioning is the same
        bits whatever batch it first came in, and a resumed run matches an uninterrupted one."""
        for prompt in dict.fromkeys(prompts):
            if prompt not in self._cache:
                if len(self._cache) >= self.CACHE_SIZE:
                    del self._cache[next(iter(self._cache))]  # the oldest
                self._cache[prompt] = self._encode([prompt])
        return Conditioning.cat([self._cache[p] for p in prompts])

    def encode_with_grad(self, prompts: list[str], t5_prompts: list[str] | None = None) -> Conditioning:
        """The conditioning of ``prompts`` with gradients to the text encoders (nothing cached): each
        distinct prompt once, in one batch. ``t5_prompts`` (SD3, Flux) go to T5 in place of ``prompts``,
        which then reach the CLIP encoders only."""
        pairs = list(zip(prompts, t5_prompts or prompts, strict=True))
        unique = list(dict.fromkeys(pairs))
        return self._encode([p for p, _ in unique], [t for _, t in unique])[[unique.index(p) for p in pairs]]

    def clear_cache(self) -> None:
        """Forget every encoding: the text encoders' weights changed."""
        self._cache.clear()
        self._empty = None

    def _encode(self, prompts: list[str], t5_prompts: list[str] | None = None) -> Conditioning:
        t5_prompts = t5_prompts or prompts
        with swapped_modules(self.pipe, self.text_encoders):
            if self.family == SD3:
                embeds, _, pooled, _ = self.pipe.encode_prompt(
                    prompts, prompts, t5_prompts, device=self.device, num_images_per_prompt=1,
                    do_classifier_free_guidance=False, max_sequence_length=self.max_sequence_length)
                return self._pack(embeds, pooled)
            if self.family == FLUX:
                embeds, pooled, txt_ids = self.pipe.encode_prompt(
                    prompts, t5_prompts, device=self.device, num_images_per_prompt=1,
                    max_sequence_length=self.max_sequence_length)
                return self._pack(embeds, pooled, txt_ids)
            if self.sdxl:
                embeds, _, pooled, _ = self.pipe.encode_prompt(
                    prompts, device=self.device, num_images_per_prompt=1, do_classifier_free_guidance=False)
                return self._pack(embeds, pooled)
            embeds, _ = self.pipe.encode_prompt(prompts, self.device, 1, False)
            return self._pack(embeds, None)

    @torch.no_grad()
    def empty(self, n: int = 1) -> Conditioning:
        """The unconditional (empty-prompt) conditioning, repeated ``n`` times (never with gradients)."""
        if self._empty is None:
            if self.sdxl:
                with swapped_modules(self.pipe, self.text_encoders):
                    _, embeds, _, pooled = self.pipe.encode_prompt(
                        [""], device=self.device, num_images_per_prompt=1, do_classifier_free_guidance=True)
                self._empty = self._pack(embeds, pooled)
            else:
                self._empty = self.encode([""])
        return self._empty[[0] * n]


