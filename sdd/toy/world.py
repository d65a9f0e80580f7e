"""The toy world's vocabulary, captions and drawing: one coloured shape on a grey background.

Everything here is procedural and seeded, so the same seed always draws the same world.

Two distributions matter, and they are deliberately different:

* the **natural** distribution (``NATURAL_COLOR_FREQ``, ``NATURAL_SHAPE_FREQ``) is what the world
  "looks like" when nobody asks for anything. It is long-tailed: red shapes and triangles are
  rare, the way unsafe content is rare among web images. The model's unconditional mode (trained
  on caption-dropped examples) learns this distribution.
* captioned training examples are **class-balanced** in what the caption names (every colour and
  shape equally often), a standard remedy for long-tailed data that leaves each conditional
  p(image | caption) unchanged. What a caption leaves unsaid stays natural: "a circle" is rarely
  red. (``sdd.toy.train`` does this; a world whose colour-less captions drew balanced colours put a
  floor of ~20-30 % under any erasure of red, because an erased "a red circle" is drawn like
  "a circle".)

SDD maps a concept onto what the model draws unprompted, so a concept can only be erased down to
its natural rate: red and triangles (2 % each) can be erased, blue (34 %) cannot. That mirrors the
real use: nudity is rare in what Stable Diffusion draws unprompted.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import numpy as np

IMAGE_SIZE = 32

#: canonical colour -> (names used in captions, base RGB in [0, 1])
COLORS: dict[str, tuple[tuple[str, ...], tuple[float, float, float]]] = {
    "red": (("red", "crimson", "scarlet"), (0.86, 0.10, 0.10)),
    "green": (("green", "emerald", "jade"), (0.10, 0.70, 0.20)),
    "blue": (("blue", "azure", "cobalt"), (0.12, 0.25, 0.90)),
    "yellow": (("yellow", "golden", "lemon"), (0.95, 0.85, 0.10)),
    "purple": (("purple", "violet", "plum"), (0.58, 0.15, 0.75)),
}
#: canonical shape -> names used in captions
SHAPES: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disc"),
    "square": ("square", "box"),
    "triangle": ("triangle", "wedge"),
    "cross": ("cross", "plus"),
}
COLOR_NAMES = tuple(COLORS)
SHAPE_NAMES = tuple(SHAPES)

NATURAL_COLOR_FREQ = {"blue": 0.34, "green": 0.30, "yellow": 0.20, "purple": 0.14, "red": 0.02}
NATURAL_SHAPE_FREQ = {"circle": 0.38, "square": 0.34, "cross": 0.26, "triangle": 0.02}

#: Templates the toy model is trained on.  ``{c}`` is a colour name, ``{s}`` a shape name.
TRAIN_TEMPLATES = (
    "a {c} {s}",
    "an image of a {c} {s}",
    "a {c} {s} on a plain background",
    "a picture showing one {c} {s}",
    "a {s} in {c}",
    "one {c} {s}",
)
#: Held-out templates: never seen in training, built from words the model knows.
HELDOUT_TEMPLATES = (
    "an image showing a {c} {s}",
    "one {c} {s} on a background",
    "a picture of a {s} in {c}",
)
#: Partial captions (only the colour or only the shape is named): the training templates with one
#: attribute left out, so that no template implies the unnamed attribute is balanced.
COLOR_ONLY_TEMPLATES = ("a {c} shape", "something {c}", "an image of a {c} shape",
                        "a {c} shape on a plain background", "a picture showing one {c} shape",
                        "a shape in {c}", "one {c} shape")
SHAPE_ONLY_TEMPLATES = ("a {s}", "a {s} of some colour", "an image of a {s}", "a {s} on a plain background",
                        "a picture showing one {s}", "one {s}")


def unet_color_names(color: str) -> tuple[str, ...]:
    """A colour's names in the diffusion model's training captions: all but the last synonym.

    The last one ("scarlet", "jade", ...) captions images only in the mini-CLIP's pretraining, as
    Stable Diffusion's CLIP knows far more words than its UNet's captions use: the UNet draws it
    right only if the frozen text encoder put it near the names it was trained on.
    """
    return COLORS[color][0][:-1]


def color_of(name: str) -> str | None:
    """The canonical colour that ``name`` (a canonical colour or synonym) refers to, if any."""
    name = name.strip().lower()
    return next((c for c, (names, _) in COLORS.items() if name in names), None)


def shape_of(name: str) -> str | None:
    """The canonical shape that ``name`` (a canonical shape or synonym) refers to, if any."""
    name = name.strip().lower()
    return next((s for s, names in SHAPES.items() if name in names), None)


def concept_names(concept: str) -> tuple[str, ...]:
    """All caption words for a toy concept (``"red"`` -> red, crimson, scarlet)."""
    if (c := color_of(concept)) is not None:
        return COLORS[c][0]
    if (s := shape_of(concept)) is not None:
        return SHAPES[s]
    raise ValueError(f"'{concept}' is not a toy-world colour or shape; use one of "
                     f"{', '.join(COLOR_NAMES + SHAPE_NAMES)}")


_A_BEFORE_VOWEL = re.compile(r"\b([Aa]) (?=[AEIOUaeiou])")


def fill(template: str, c: str | None = None, s: str | None = None) -> str:
    """``template`` with colour name ``c`` and shape name ``s``, and "an" before a vowel ("an emerald disc")."""
    return _A_BEFORE_VOWEL.sub(r"\1n ", template.format(c=c, s=s))


def caption(color: str, shape: str, template: str, rng: random.Random, unet: bool = False) -> str:
    """Fill a template with a random synonym of ``color`` (of :func:`unet_color_names` if ``unet``)
    and of ``shape``."""
    names = unet_color_names(color) if unet else COLORS[color][0]
    return fill(template, c=rng.choice(names), s=rng.choice(SHAPES[shape]))


@dataclass(frozen=True)
class Scene:
    color: str
    shape: str
    cx: float
    cy: float
    size: float
    background: float
    rgb: tuple[float, float, float]


def natural_choice(freq: dict[str, float], rng: random.Random) -> str:
    """A colour or shape drawn from its natural frequencies (``NATURAL_COLOR_FREQ``, ...)."""
    return rng.choices(list(freq), weights=list(freq.values()))[0]


def random_scene(rng: random.Random, color: str | None = None, shape: str | None = None,
                 natural: bool = False) -> Scene:
    """Draw a scene; unspecified colour/shape come from the natural or the balanced distribution."""
    if color is None:
        color = natural_choice(NATURAL_COLOR_FREQ, rng) if natural else rng.choice(COLOR_NAMES)
    if shape is None:
        shape = natural_choice(NATURAL_SHAPE_FREQ, rng) if natural else rng.choice(SHAPE_NAMES)
    size = rng.uniform(6.0, 12.0)  # half-extent in pixels
    margin = size + 1
    cx, cy = rng.uniform(margin, IMAGE_SIZE - margin), rng.uniform(margin, IMAGE_SIZE - margin)
    base = COLORS[color][1]
    rgb = tuple(float(np.clip(v + rng.uniform(-0.07, 0.07), 0, 1)) for v in base)
    return Scene(color, shape, cx, cy, size, rng.uniform(0.3, 0.7), rgb)


def _shape_mask(scene: Scene, supersample: int = 4) -> np.ndarray:
    """Anti-aliased coverage mask (IMAGE_SIZE x IMAGE_SIZE, values in [0, 1])."""
    n = IMAGE_SIZE * supersample
    coords = (np.arange(n) + 0.5) / supersample
    x, y = np.meshgrid(coords, coords)
    dx, dy, r = x - scene.cx, y - scene.cy, scene.size
    if scene.shape == "circle":
        inside = dx**2 + dy**2 <= r**2
    elif scene.shape == "square":
        inside = (np.abs(dx) <= 0.85 * r) & (np.abs(dy) <= 0.85 * r)
    elif scene.shape == "triangle":  # apex up, base at the bottom
        top, bottom = scene.cy - r, scene.cy + 0.8 * r
        frac = (y - top) / (bottom - top)
        inside = (y >= top) & (y <= bottom) & (np.abs(dx) <= frac * r)
    elif scene.shape == "cross":
        arm = 0.32 * r
        inside = ((np.abs(dx) <= arm) & (np.abs(dy) <= r)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= r))
    else:
        raise ValueError(f"unknown shape {scene.shape!r}")
    return inside.reshape(IMAGE_SIZE, supersample, IMAGE_SIZE, supersample).mean(axis=(1, 3))


def render(scene: Scene, rng: np.random.Generator | None = None) -> np.ndarray:
    """Draw a scene as float32 HxWx3 in [0, 1], with a little sensor noise if ``rng`` is given."""
    mask = _shape_mask(scene)[..., None]
    image = (1 - mask) * scene.background + mask * np.asarray(scene.rgb)[None, None, :]
    if rng is not None:
        image = image + rng.normal(0, 0.015, image.shape)
    return np.clip(image, 0, 1).astype(np.float32)


def sample_batch(n: int, seed: int, natural_fraction: float = 0.0, partial_fraction: float = 0.0):
    """Draw ``n`` (image, caption, colour, shape) training examples.

    ``natural_fraction`` of them get an empty caption and a scene from the natural distribution
    (the unconditional mode); ``partial_fraction`` name only the colour or only the shape.
    Returns images as float32 array (n, 32, 32, 3) and lists of captions, colours and shapes.
    """
    rng, nrng = random.Random(seed), np.random.default_rng(seed)
    images, captions, colors, shapes = [], [], [], []
    for _ in range(n):
        u = rng.random()
        if u < natural_fraction:
            scene, text = random_scene(rng, natural=True), ""
        else:
            scene = random_scene(rng)
            if u < natural_fraction + partial_fraction:
                if rng.random() < 0.5:
                    text = fill(rng.choice(COLOR_ONLY_TEMPLATES), c=rng.choice(COLORS[scene.color][0]))
                else:
                    text = fill(rng.choice(SHAPE_ONLY_TEMPLATES), s=rng.choice(SHAPES[scene.shape]))
            else:
                text = caption(scene.color, scene.shape, rng.choice(TRAIN_TEMPLATES), rng)
        images.append(render(scene, nrng))
        captions.append(text)
        colors.append(scene.color)
        shapes.append(scene.shape)
    return np.stack(images), captions, colors, shapes


def toy_erasure_prompts(concept: str) -> list[str]:
    """Prompts that express a toy concept, for erasing it (``sdd erase --model toy``).

    The concept named alone in the world's own phrasing -- the first two partial-caption templates
    ("a crimson shape", "something crimson"; "a wedge", "a wedge of some colour") -- as the paper
    erases "nudity" with that one word. Not the bare word: the text encoder is contextual and never
    read "crimson" without context, so the bare word's states are unlike any caption's. Not a full
    caption either: that would also teach the model to ignore the other attribute's words. The
    concept's last synonym is left out, so evaluation can test whether erasure generalises to a
    name it never saw.
    """
    templates = COLOR_ONLY_TEMPLATES[:2] if color_of(concept) else SHAPE_ONLY_TEMPLATES[:2]
    names = concept_names(concept)[:-1]
    return [fill(t, c=n, s=n) for n in names for t in templates]
