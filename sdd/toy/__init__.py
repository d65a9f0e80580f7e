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
