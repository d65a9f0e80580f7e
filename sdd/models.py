"""Loading Stable Diffusion pipelines and hiding the SD / SDXL difference from the rest of sdd.

``load_pipeline`` accepts ``"toy"`` (the embedded toy world), a local diffusers folder or a
Hugging Face Hub id, and returns an ordinary diffusers pipeline (``StableDiffusionPipeline`` for
SD 1.x/2.x, ``StableDiffusionXLPipeline`` for SDXL) with every module in eval mode and frozen.

``Conditioner`` turns prompts into the keyword arguments the UNet takes, whatever the
architecture: SD needs ``encoder_hidden_states`` only; SDXL also needs pooled text embeddings and
size/crop "time ids" as ``added_cond_kwargs``. Prediction type (epsilon or v) lives in the
scheduler config, which every sampler here builds its scheduler from.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
from diffusers import DiffusionPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

from sdd.errors import ConfigError

PIPELINE_CLASSES: dict[str, type[DiffusionPipeline]] = {
    "StableDiffusionPipeline": StableDiffusionPipeline,
    "StableDiffusionXLPipeline": StableDiffusionXLPipeline,
}
_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


@dataclass(frozen=True)
class ModelSource:
    """Where a pipeline came from, for manifests: what the user typed, the folder, the hub revision."""

    model: str
    path: str
    revision: str | None = None
    pipeline_class: str = ""


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast(device: torch.device | str, mixed_precision: str = "auto") -> contextlib.AbstractContextManager:
    """The autocast context for ``mixed_precision``: auto = bf16 on CUDA, full fp32 on CPU."""
    device = torch.device(device)
    if mixed_precision == "auto":
        mixed_precision = "bf16" if device.type == "cuda" else "no"
    if mixed_precision == "no":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[mixed_precision]
    return torch.autocast(device_type=device.type, dtype=dtype)


def _resolve(model: str, revision: str | None) -> tuple[Path, str | None]:
    """Map ``model`` to a local diffusers folder (downloading hub ids) and its hub revision."""
    if model == "toy":
        from sdd.toy import TOY_PIPELINE_DIR

        if not (TOY_PIPELINE_DIR / "model_index.json").is_file():
            raise ConfigError(f"the toy pipeline is not built yet ({TOY_PIPELINE_DIR}); run `sdd toy build`")
        return TOY_PIPELINE_DIR, None
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise ConfigError(f"{model}: not a diffusers pipeline folder (no model_index.json)")
        return path, revision
    if not _HUB_ID.match(model):
        raise ConfigError(f"{model}: no such folder, and not a Hugging Face Hub id")
    try:
        folder = Path(DiffusionPipeline.download(model, revision=revision))
    except Exception as e:  # any hub/network failure is a user-facing one-liner
        raise ConfigError(f"{model}: neither a local folder nor downloadable from the Hugging Face Hub "
                          f"({type(e).__name__}); pass a local diffusers folder") from None
    # The hub cache stores each download under .../snapshots/<commit sha>.
    return folder, folder.name if folder.parent.name == "snapshots" else revision


def pipeline_class_name(folder: Path) -> str:
    try:
        return json.loads((Path(folder) / "model_index.json").read_text())["_class_name"]
    except (OSError, ValueError, KeyError):
        raise ConfigError(f"{folder}: unreadable model_index.json (no _class_name)") from None


def load_pipeline(model: str, device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                  revision: str | None = None) -> DiffusionPipeline:
    """Load an SD 1.x/2.x or SDXL pipeline: ``"toy"``, a local diffusers folder or a hub id.

    Weights load in ``dtype`` (default fp32, so trained parameters keep full precision; use
    :func:`autocast` for bf16 compute) on ``device`` (default: CUDA if available, else CPU).
    Every module is put in eval mode with gradients off; the engine re-enables what it trains.
    The SD safety checker is not loaded: erasure must be measured on what the model itself draws.
    The returned pipeline carries ``pipe.sdd_source`` (a :class:`ModelSource`).
    """
    folder, revision = _resolve(model, revision)
    class_name = pipeline_class_name(folder)
    if class_name not in PIPELINE_CLASSES:
        raise ConfigError(f"{model}: unsupported pipeline class {class_name}; sdd supports "
                          f"{' and '.join(PIPELINE_CLASSES)} (SD 1.x/2.x, SDXL)")
    cls = PIPELINE_CLASSES[class_name]
    no_checker = {"safety_checker": None, "requires_safety_checker": False}
    extra = no_checker if cls is StableDiffusionPipeline else {}
    pipe = cls.from_pretrained(folder, dtype=dtype or torch.float32, **extra)
    pipe.to(device or default_device())
    pipe.set_progress_bar_config(disable=True)
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval().requires_grad_(False)
    pipe.sdd_source = ModelSource(model=model, path=str(folder), revision=revision, pipeline_class=class_name)
    return pipe


def is_sdxl(pipe: DiffusionPipeline) -> bool:
    return isinstance(pipe, StableDiffusionXLPipeline)


def latent_shape(pipe: DiffusionPipeline, resolution: int | None = None) -> tuple[int, int, int]:
    """(channels, height, width) of one latent; ``resolution`` in pixels, None = the native size."""
    side = pipe.unet.config.sample_size if resolution is None else resolution // pipe.vae_scale_factor
    return pipe.unet.config.in_channels, side, side


def unet_weights_hash(unet: torch.nn.Module) -> str:
    """sha256 over the UNet's parameter names, dtypes, shapes and bytes: identifies a base model."""
    return weights_hash(unet)


def weights_hash(module: torch.nn.Module) -> str:
    """sha256 over a module's state names, dtypes, shapes and bytes (a UNet, a text encoder)."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# --- which UNet weights a method trains (the erasure; the red team's relearning attacker) -----

#: Which UNet parameters each ``train_method`` trains, by parameter name.
TRAIN_METHODS: dict[str, Callable[[str], bool]] = {
    "xattn": lambda name: "attn2" in name,
    # Only the cross-attention output projections: their input is the few-dimensional value space,
    # so erasing a direction there removes it for every text embedding, an attacker's included.
    "xattn_out": lambda name: "attn2.to_out" in name,
    "selfattn": lambda name: "attn1" in name,
    "noxattn": lambda name: "attn2" not in name,
    "full": lambda name: True,
}


#: Train methods that train every parameter of the pipeline's text encoder(s) (as AdvUnlearn and DES do),
#: and the UNet method that trains beside them (None: the UNet stays untouched). See sdd/erasure/components.py.
TEXT_ENCODER_METHODS: dict[str, str | None] = {"text_encoder": None, "text_encoder+xattn": "xattn"}


def select_parameters(unet: torch.nn.Module, train_method: str) -> list[str]:
    """Names of the parameters ``train_method`` trains (xattn, xattn_out, selfattn, noxattn, full)."""
    if train_method not in TRAIN_METHODS:
        raise ConfigError(f"train_method '{train_method}' selects no UNet parameters; choose one of "
                          f"{', '.join(TRAIN_METHODS)}")
    keep = TRAIN_METHODS[train_method]
    names = [name for name, _ in unet.named_parameters() if keep(name)]
    if not names:
        raise ConfigError(f"train_method '{train_method}' selects no parameters of this UNet")
    return names


#: The pipeline attributes that may hold a text encoder (SD 1.x/2.x and the toy: the first; SDXL: both).
TEXT_ENCODERS = ("text_encoder", "text_encoder_2")


def text_encoders(pipe: DiffusionPipeline) -> dict[str, torch.nn.Module]:
    """The pipeline's text encoders by attribute name."""
    return {n: m for n in TEXT_ENCODERS if (m := getattr(pipe, n, None)) is not None}


def patch_targets(pipe: DiffusionPipeline) -> dict[str, torch.nn.Parameter]:
    """Every parameter an erasure's patch may hold, by its name there: a UNet parameter as named in the
    UNet, a text encoder's prefixed with its pipeline attribute (``text_encoder.``, ``text_encoder_2.``)."""
    params = dict(pipe.unet.named_parameters())
    for attr, encoder in text_encoders(pipe).items():
        params.update({f"{attr}.{name}": p for name, p in encoder.named_parameters()})
    return params


@contextlib.contextmanager
def swapped_modules(pipe: DiffusionPipeline, modules: dict[str, torch.nn.Module]):
    """``pipe``'s components ``modules`` (attribute -> module) in place of its own for the block."""
    originals = {name: getattr(pipe, name) for name in modules}
    try:
        for name, module in modules.items():
            setattr(pipe, name, module)
        yield pipe
    finally:
        for name, module in originals.items():
            setattr(pipe, name, module)


@dataclass
class Conditioning:
    """The UNet's text conditioning for a batch: hidden states, plus ``added_cond_kwargs`` for SDXL."""

    hidden_states: torch.Tensor
    added: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.hidden_states.shape[0]

    def unet_kwargs(self) -> dict:
        return {"encoder_hidden_states": self.hidden_states, "added_cond_kwargs": self.added or None}

    def __getitem__(self, index) -> Conditioning:
        return Conditioning(self.hidden_states[index], {k: v[index] for k, v in self.added.items()})

    @staticmethod
    def cat(parts: list[Conditioning]) -> Conditioning:
        return Conditioning(torch.cat([p.hidden_states for p in parts]),
                            {k: torch.cat([p.added[k] for p in parts]) for k in parts[0].added})


class JoinedTruncation(NamedTuple):
    """:meth:`Conditioner.truncated_joins`: joined prompts too long, all possible ones, the longest one."""

    cut: int
    possible: int
    longest: str


class Conditioner:
    """Encodes prompts for ``pipe.unet`` with the pipeline's own ``encode_prompt``.

    The empty prompt is the pipeline's unconditional input for classifier-free guidance: the
    encoded "" for SD, and all-zero embeddings for SDXL models with ``force_zeros_for_empty_prompt``
    (how SDXL was trained to be unconditional).

    ``text_encoders`` (attribute -> module) encode in place of the pipeline's own: an erasure's EMA
    teacher or frozen base copy of a text encoder being trained. Encodings are cached; whoever
    changes the encoders' weights calls :meth:`clear_cache`, and :meth:`encode_with_grad` encodes
    through an encoder being trained (nothing cached).
    """

    #: Encoded prompts kept at most (SDXL: ~0.6 MB each); a composite schedule's joins can be many.
    CACHE_SIZE = 1024

    def __init__(self, pipe: DiffusionPipeline, resolution: int | None = None,
                 text_encoders: dict[str, torch.nn.Module] | None = None):
        self.pipe = pipe
        self.text_encoders = dict(text_encoders or {})
        self.sdxl = is_sdxl(pipe)
        _, h, w = latent_shape(pipe, resolution)
        size = (h * pipe.vae_scale_factor, w * pipe.vae_scale_factor)
        # SDXL micro-conditioning: original size, crop top-left, target size (no crop, native size).
        self._time_ids = torch.tensor([[*size, 0, 0, *size]], dtype=torch.float32)
        self._empty: Conditioning | None = None
        self._cache: dict[str, Conditioning] = {}

    @property
    def device(self) -> torch.device:
        return self.pipe.unet.device

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

    def _pack(self, embeds: torch.Tensor, pooled: torch.Tensor | None) -> Conditioning:
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

    def encode_with_grad(self, prompts: list[str]) -> Conditioning:
        """The conditioning of ``prompts`` with gradients to the text encoders (nothing cached): each
        distinct prompt once, in one batch."""
        unique = list(dict.fromkeys(prompts))
        return self._encode(unique)[[unique.index(p) for p in prompts]]

    def clear_cache(self) -> None:
        """Forget every encoding: the text encoders' weights changed."""
        self._cache.clear()
        self._empty = None

    def _encode(self, prompts: list[str]) -> Conditioning:
        with swapped_modules(self.pipe, self.text_encoders):
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


def save_standin_erased(folder: Path) -> Path:
    """The toy pipeline with seeded noise on its cross-attention keys and values, saved to ``folder``:
    a stand-in "erased" model for tests and benches that need a second model without training one."""
    pipe = load_pipeline("toy", device="cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in pipe.unet.named_parameters():
            if ".attn2.to_k." in name or ".attn2.to_v." in name:
                p.add_(0.5 * p.std() * torch.randn(p.shape, generator=g))
    pipe.save_pretrained(folder)
    return folder
