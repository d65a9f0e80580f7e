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


def save_standin_erased(folder: Path) -> Path:
    """The toy pipeline with seeded noise on its cross-attention keys and values, saved to ``folder``:
    a stand-in "erased" model for tests and benches that need a second model without training one."""
    import torch

    from sdd.models import load_pipeline

    pipe = load_pipeline("toy", device="cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in pipe.unet.named_parameters():
            if ".attn2.to_k." in name or ".attn2.to_v." in name:
                p.add_(0.5 * p.std() * torch.randn(p.shape, generator=g))
    pipe.save_pretrained(folder)
    return folder
