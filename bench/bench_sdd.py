"""Benchmark SDD iterations: the straightforward loop against the batched engine, in one process.

Prints a table of time per training sample, samples/s, the projected time for a paper-sized
erasure (1,500 training samples) and peak memory, for

* the toy world on CPU (default), and
* an SD-1.x-architecture UNet with random weights on a GPU (``--sd15``; needs CUDA).

The "reference" row is the straightforward loop: one trajectory per optimizer step (batch 1).
The "batched" rows advance several teacher trajectories as one UNet batch (``batch_size``); the
"pool" rows are the default engine (``sampler: pool``: each trajectory one DDIM step per optimizer
step; see bench/bench_loops.py for its erasure outcome). Speed does not depend on weight values, so random weights are
a faithful stand-in for a real checkpoint.

    python bench/bench_sdd.py                      # toy world, CPU
    python bench/bench_sdd.py --sd15 --samples 64  # SD-1.x size, GPU
"""

from __future__ import annotations

import argparse
import time

import torch

from sdd.config import DistillConfig
from sdd.erasure import Distiller
from sdd.models import load_pipeline
from sdd.prompts import Concept

PAPER_SAMPLES = 1500


def sd15_pipeline(device: str):
    """An SD-1.x-architecture pipeline with random weights (UNet 860M, CLIP ViT-L text encoder)."""
    import json
    import tempfile

    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)  # the SD-1.x defaults
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2,
                        sample_size=512)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                        num_hidden_layers=12, num_attention_heads=12))
    folder = tempfile.mkdtemp()
    words = ["<|startoftext|>", "<|endoftext|>"] + [f"{c}</w>" for c in "abcdefghijklmnopqrstuvwxyz,"]
    vocab = {w: i for i, w in enumerate(words + list("abcdefghijklmnopqrstuvwxyz,"))}
    with open(f"{folder}/vocab.json", "w") as f:
        json.dump(vocab, f)
    with open(f"{folder}/merges.txt", "w") as f:
        f.write("#version: 0.2\n")
    tokenizer = CLIPTokenizer(f"{folder}/vocab.json", f"{folder}/merges.txt")
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    return pipe.to(device)


def run(pipe_factory, label: str, batch_size: int, samples: int, cfg_overrides: dict,
        sampler: str = "reference") -> dict:
    pipe = pipe_factory()
    device = pipe.unet.device
    cfg = DistillConfig(batch_size=batch_size, steps=max(1, samples // batch_size), sampler=sampler, **cfg_overrides)
    distiller = Distiller(pipe, [Concept("nudity", ["nudity"])], cfg)
    distiller.train_step()  # warm-up (allocations, kernel selection)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    distiller.train(distiller.step + cfg.steps)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    n = cfg.steps * batch_size
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return {"engine": label, "batch": batch_size, "samples": n, "s_per_sample": seconds / n,
            "samples_per_s": n / seconds, "erasure_min": PAPER_SAMPLES * seconds / n / 60, "peak_gib": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sd15", action="store_true", help="SD-1.x-size random UNet on CUDA")
    parser.add_argument("--samples", type=int, default=32, help="training samples per engine")
    parser.add_argument("--batches", type=int, nargs="+", default=[8], help="batched engine sizes")
    args = parser.parse_args()

    if args.sd15:
        device = "cuda"
        factory = lambda: sd15_pipeline(device)  # noqa: E731
        overrides = {"mixed_precision": "bf16"}
    else:
        factory = lambda: load_pipeline("toy")  # noqa: E731
        overrides = {}
    rows = [run(factory, "reference (batch 1)", 1, args.samples, overrides)]
    rows += [run(factory, f"batched ({b})", b, args.samples, overrides) for b in args.batches]
    rows += [run(factory, f"pool ({b})", b, args.samples, overrides, "pool") for b in args.batches]

    from rich.console import Console
    from rich.table import Table

    where = f"SD-1.x random weights, {torch.cuda.get_device_name()}" if args.sd15 else "toy world, CPU"
    table = Table(title=f"SDD iteration cost ({where})")
    columns = ("engine", "samples", "s/sample", "samples/s", f"{PAPER_SAMPLES}-sample erasure", "peak GiB", "speed-up")
    for col in columns:
        table.add_column(col, justify="right")
    ref = rows[0]["s_per_sample"]
    for r in rows:
        table.add_row(r["engine"], str(r["samples"]), f"{r['s_per_sample']:.3f}", f"{r['samples_per_s']:.2f}",
                      f"{r['erasure_min']:.1f} min", f"{r['peak_gib']:.2f}", f"{ref / r['s_per_sample']:.1f}x")
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
