"""The toy world: a tiny, procedurally drawn text-to-image world in which erasure is measured.

It has three parts: the world itself (vocabulary, captions, drawing: ``world.py``), a tiny
latent-diffusion model in the standard diffusers layout trained on it (``train.py``), and a
judge classifier that tells an image's colour and shape (``judge.py``).
"""

from pathlib import Path

#: The committed, pre-trained toy world (pipeline + judge) shipped with the package.
DEFAULT_TOY_DIR = Path(__file__).resolve().parent / "assets"
TOY_PIPELINE_DIR = DEFAULT_TOY_DIR / "pipeline"
TOY_JUDGE_DIR = DEFAULT_TOY_DIR / "judge"
