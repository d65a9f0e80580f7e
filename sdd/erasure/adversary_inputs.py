"""The adversarial pool at the text encoder's input, for text-encoder train methods (AdvUnlearn's way).

With a UNet train method the adversary pools the *encoded* adversarial prompts (hidden states): the
text encoder is frozen, so they stay what the student sees. When the text encoder trains, a hidden
state would bypass it, so each pool member is an :class:`InputPrompt` instead: the found prompt's
text with placeholder tokens, and what they stand for (the learnt input embedding of an inversion,
or the vocabulary ids of a token prefix). Every time a member is distilled it goes through the
student's current text encoder (:func:`encode_inputs`), with gradients, so the text encoder learns
to map the attack itself to the unconditional output. A token prefix reads its rows from the
student's current token embedding (which trains); an inverted embedding is kept as found.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import DiffusionPipeline

from sdd.models import Conditioning
from sdd.tokens import Placeholders, encode


@dataclass
class InputPrompt:
    """An adversarial prompt at the text encoder's input: ``text`` holds the placeholders ``names``,
    which stand for ``rows`` (one (len(names), D) tensor per text encoder) or vocabulary ``ids``."""

    text: str
    names: list[str]
    rows: list[torch.Tensor] | None = None
    ids: torch.Tensor | None = None

    def renamed(self, names: list[str]) -> str:
        """``text`` with ``names`` in place of this prompt's placeholders."""
        text = self.text
        for old, new in zip(self.names, names, strict=True):
            text = text.replace(old, new)
        return text


def encode_inputs(pipe: DiffusionPipeline, members: list[InputPrompt], jitter: float = 0.0,
                  generator: torch.Generator | None = None) -> Conditioning:
    """The conditioning of ``members`` through the pipeline's (the student's) text encoders, with gradients.

    One placeholder context for the whole batch: member m's placeholders are renamed ``<sdd-pool-m-j>``.
    ``jitter`` adds Gaussian noise to the placeholders' input embeddings, as a fraction of each row's RMS.
    """
    names = [[f"<sdd-pool-{m}-{j}>" for j in range(len(p.names))] for m, p in enumerate(members)]
    with Placeholders(pipe, [n for group in names for n in group]) as ph:
        for e, slot in enumerate(ph.slots):
            device = slot.vocab.device
            rows = torch.cat([p.rows[e].to(device, slot.vocab.dtype) if p.rows is not None
                              else slot.vocab[p.ids.to(device)] for p in members])
            if jitter:
                rms = rows.detach().pow(2).mean(dim=-1, keepdim=True).sqrt()
                rows = rows + jitter * rms * torch.randn(rows.shape, generator=generator).to(rows)
            ph.set_rows(e, rows)
        return encode(pipe, [p.renamed(n) for p, n in zip(members, names, strict=True)])


def state_tensors(i: int, member: InputPrompt) -> tuple[dict[str, torch.Tensor], dict]:
    """Checkpoint tensors and metadata of pool member ``i`` (copies: members of one attack share tensors,
    which safetensors refuses)."""
    tensors, meta = {}, {"text": member.text, "names": member.names}
    if member.rows is not None:
        meta["rows"] = len(member.rows)
        tensors.update({f"adv.pool.{i}.rows.{e}": r.clone() for e, r in enumerate(member.rows)})
    else:
        tensors[f"adv.pool.{i}.ids"] = member.ids.clone()
    return tensors, meta


def load_member(i: int, meta: dict, tensors: dict[str, torch.Tensor]) -> InputPrompt:
    rows = [tensors[f"adv.pool.{i}.rows.{e}"] for e in range(meta["rows"])] if "rows" in meta else None
    return InputPrompt(meta["text"], list(meta["names"]), rows, tensors.get(f"adv.pool.{i}.ids"))
