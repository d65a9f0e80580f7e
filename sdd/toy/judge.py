"""The toy judge: a small CNN that tells the colour and the shape of a toy-world image.

It is trained on freshly drawn procedural images (never on model outputs), saved as safetensors
plus a JSON config, and also provides the feature extractor used for FID in the toy world.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from sdd.toy import world

FEATURE_DIM = 128


class ToyJudge(nn.Module):
    """Two-headed classifier: colour (5 classes) and shape (4 classes) of a 32x32 RGB image."""

    colors = world.COLOR_NAMES
    shapes = world.SHAPE_NAMES

    def __init__(self, width: int = 16):
        super().__init__()
        self.width = width
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.GELU(), nn.MaxPool2d(2),  # 16x16
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.GELU(), nn.MaxPool2d(2),  # 8x8
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.GELU(), nn.MaxPool2d(2),  # 4x4
            nn.Flatten(), nn.Linear(2 * width * 16, FEATURE_DIM), nn.GELU(),
        )
        self.color_head = nn.Linear(FEATURE_DIM, len(self.colors))
        self.shape_head = nn.Linear(FEATURE_DIM, len(self.shapes))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, 32, 32) images in [0, 1] -> (B, FEATURE_DIM) features (used for FID)."""
        return self.body(images * 2 - 1)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(images)
        return self.color_head(h), self.shape_head(h)

    @torch.no_grad()
    def classify(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Class probabilities (colour (B, 5), shape (B, 4)) for images in [0, 1]."""
        color_logits, shape_logits = self(images)
        return color_logits.softmax(-1), shape_logits.softmax(-1)

    def save(self, directory: Path, report: dict | None = None) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()},
                  directory / "judge.safetensors")
        config = {"width": self.width, "colors": list(self.colors), "shapes": list(self.shapes),
                  "image_size": world.IMAGE_SIZE, **({"report": report} if report else {})}
        (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> ToyJudge:
        directory = Path(directory)
        config = json.loads((directory / "config.json").read_text())
        judge = cls(width=config["width"])
        judge.load_state_dict(load_file(directory / "judge.safetensors"))
        return judge.eval()


def _augment(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mild blur and noise so the judge also reads slightly imperfect generated images."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    blur = rng.random(len(images)) < 0.5
    if blur.any():
        kernel = torch.tensor([1.0, 2.0, 1.0])
        kernel = (kernel[:, None] * kernel[None, :] / 16).expand(3, 1, 3, 3)
        x[blur] = F.conv2d(F.pad(x[blur], (1, 1, 1, 1), mode="replicate"), kernel, groups=3)
    x = x + torch.from_numpy(rng.normal(0, 0.03, x.shape).astype(np.float32))
    return x.clamp(0, 1)


def train_judge(steps: int = 600, batch_size: int = 64, seed: int = 0, log=print) -> ToyJudge:
    """Train the judge on freshly drawn images (half natural, half balanced)."""
    torch.manual_seed(seed)
    judge = ToyJudge()
    opt = torch.optim.AdamW(judge.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    rng = np.random.default_rng(seed)
    color_idx = {c: i for i, c in enumerate(judge.colors)}
    shape_idx = {s: i for i, s in enumerate(judge.shapes)}
    judge.train()
    for step in range(steps):
        images, _, colors, shapes = world.sample_batch(batch_size, seed=seed * 1_000_003 + step)
        x = _augment(images, rng)
        yc = torch.tensor([color_idx[c] for c in colors])
        ys = torch.tensor([shape_idx[s] for s in shapes])
        color_logits, shape_logits = judge(x)
        loss = F.cross_entropy(color_logits, yc) + F.cross_entropy(shape_logits, ys)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"judge step {step:5d}  loss {loss.item():.4f}")
    return judge.eval()


@torch.no_grad()
def judge_accuracy(judge: ToyJudge, n: int = 2000, seed: int = 12345) -> dict[str, float]:
    """Accuracy on fresh procedural images (a seed never used in training)."""
    images, _, colors, shapes = world.sample_batch(n, seed=seed)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    pc, ps = judge.classify(x)
    color_ok = [judge.colors[i] == c for i, c in zip(pc.argmax(-1).tolist(), colors, strict=True)]
    shape_ok = [judge.shapes[i] == s for i, s in zip(ps.argmax(-1).tolist(), shapes, strict=True)]
    return {"color_accuracy": float(np.mean(color_ok)), "shape_accuracy": float(np.mean(shape_ok)),
            "n": n}
