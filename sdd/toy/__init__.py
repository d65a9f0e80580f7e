"""The toy world: a tiny, procedurally drawn text-to-image world in which erasure is measured.

It has four parts: the world itself (vocabulary, captions, drawing: ``world.py``), a mini-CLIP
pretrained contrastively on it (``clip.py``), a tiny latent-diffusion model in the standard
diffusers layout trained on the frozen CLIP text tower (``train.py``), and a judge classifier that
tells an image's colour and shape (``judge.py``). ``quality.py`` measures what kind of world it is.
"""

from pathlib import Path

#: The committed, pre-trained toy world (pipeline, mini-CLIP, judge) shipped with the package.
DEFAULT_TOY_DIR = Path(__file__).resolve().parent / "assets"
TOY_PIPELINE_DIR = DEFAULT_TOY_DIR / "pipeline"
TOY_CLIP_DIR = DEFAULT_TOY_DIR / "clip"
TOY_JUDGE_DIR = DEFAULT_TOY_DIR / "judge"

