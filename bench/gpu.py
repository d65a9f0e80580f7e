"""Everything the SD-scale targets need, on one CUDA device, in one table (≤ 9 minutes on an H200).

SD-1.5 architecture with random weights (bench/sd15.py), bf16 autocast:

* s/iteration of SDD with the reference loop and the pool loop (paper settings: 50 DDIM steps,
  CFG 3.0, xattn, batch 1; the pool also at batch 8), with UNet image-passes per iteration;
* img/s of 50-step CFG generation (bf16 weights, VAE decode at 512 px) at batch 8 and 32;
* peak GiB of a training step in the default mode and in the memory mode
  (gradient_checkpointing + frozen_dtype bf16);

and the flow-matching transformers at their real sizes with random weights (bench/flow_models.py), 1024 px,
28 sampler steps, the pool loop at batch 1, bf16 autocast, gradient checkpointing:

* SD 3.5 Medium (2.5 B), ``train_method: context`` (the joint attention's text-side projections), fp32
  trained weights beside bf16 frozen ones (``frozen_dtype: bf16``);
* FLUX.1-dev (12 B), ``train_method: lora`` (rank 16 on the context projections, as EraseAnything), the
  transformer in bf16 and the adapter in fp32.

    bench/gpu.sh                 # on a machine with CUDA; writes bench/gpu-results.md too
    bench/gpu.sh --dry-run       # tiny configs on the CPU: checks that it starts (the test suite runs this)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from flow_models import flux_dev_pipeline, sd35_medium_pipeline  # noqa: E402
from sd15 import sd15_pipeline  # noqa: E402

from sdd.config import DistillConfig  # noqa: E402
from sdd.erasure import Distiller  # noqa: E402
from sdd.prompts import Concept  # noqa: E402

CONCEPTS = [Concept("nudity", ["nudity"])]
PAPER = dict(ddim_steps=50, guidance_scale=3.0, lr=1e-5, ema_decay=0.999, train_method="xattn")
MEMORY_MODE = dict(gradient_checkpointing=True, frozen_dtype="bf16")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def pipeline(device: torch.device, tiny: bool, build=sd15_pipeline):
    with torch.device(device):  # random init on the device: seconds instead of a minute on the CPU
        return build(tiny=tiny).to(device)


#: The flow-matching rows: their pipelines and settings (the SD rows use PAPER).
FLOW = dict(ddim_steps=28, guidance_scale=3.5, lr=1e-5, ema_decay=0.999, gradient_checkpointing=True, resolution=1024)
FLOW_ROWS = {
    "SD 3.5 Medium size, pool loop, batch 1, context": (
        sd35_medium_pipeline, dict(train_method="context", frozen_dtype="bf16"),
        "2.5 B MMDiT; grad ckpt + bf16 frozen"),
    "FLUX.1-dev size, pool loop, batch 1, LoRA r16": (
        flux_dev_pipeline, dict(train_method="lora", lora={"rank": 16, "alpha": 16.0}, lr=1e-4, mixed_precision="bf16"),
        "12 B, bf16 weights, fp32 adapter; grad ckpt"),
}


def train_rate(device, tiny: bool, iterations: int, warmup: int, build=sd15_pipeline, base: dict | None = None,
               **settings) -> dict:
    """Seconds per optimizer step (after ``warmup`` steps), passes per step, peak GiB."""
    pipe = pipeline(device, tiny, build)
    small = {"ddim_steps": 4, **({"resolution": 16} if "resolution" in (base or PAPER) else {})} if tiny else {}
    cfg = DistillConfig(**{**(base or PAPER), **small, **settings, "steps": warmup + iterations})
    distiller = Distiller(pipe, CONCEPTS, cfg)
    distiller.train(warmup)  # the pool's one-off start, allocations, kernel selection
    sync(device)
    reset_peak(device)
    passes, start = distiller.unet_passes, time.perf_counter()
    distiller.train(warmup + iterations)
    sync(device)
    seconds = (time.perf_counter() - start) / iterations
    row = {"s_per_step": seconds, "passes_per_step": (distiller.unet_passes - passes) / iterations,
           "peak_gib": peak_gib(device), "batch": cfg.batch_size}
    del distiller, pipe
    return row


def generation_rate(device, tiny: bool, batch: int, steps: int) -> dict:
    pipe = pipeline(device, tiny).to(torch.bfloat16 if device.type == "cuda" else torch.float32)
    pipe.set_progress_bar_config(disable=True)
    prompts = ["a photo of an astronaut riding a horse"] * batch
    pipe(prompts, num_inference_steps=2, guidance_scale=7.5, output_type="pt")  # warm-up
    sync(device)
    reset_peak(device)
    start = time.perf_counter()
    pipe(prompts, num_inference_steps=steps, guidance_scale=7.5, output_type="pt")
    sync(device)
    seconds = time.perf_counter() - start
    return {"img_per_s": batch / seconds, "seconds": seconds, "peak_gib": peak_gib(device)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="tiny configs on the CPU, 2 iterations each")
    ap.add_argument("--out", type=Path, help="also write the table here (default: bench/gpu-results.md on CUDA)")
    args = ap.parse_args()
    if args.dry_run:
        device, tiny, its, warm, gen_steps, gen_batches = torch.device("cpu"), True, 1, 1, 2, (2, 4)
    else:
        if not torch.cuda.is_available():
            sys.exit("no CUDA device: run with --dry-run to check the script on the CPU")
        device, tiny, its, warm, gen_steps, gen_batches = torch.device("cuda"), False, 10, 3, 50, (8, 32)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    where = "dry run: tiny configs, CPU" if args.dry_run else torch.cuda.get_device_name()
    start = time.perf_counter()
    rows = []

    def add(label, r, note=""):
        rows.append((label, r, note))
        print(label, {k: round(v, 4) for k, v in r.items()}, flush=True)

    add("SDD reference loop, batch 1", train_rate(device, tiny, its, warm, sampler="reference"), "s/iteration")
    add("SDD pool loop, batch 1", train_rate(device, tiny, its, warm, sampler="pool"), "s/iteration")
    add("SDD pool loop, batch 8", train_rate(device, tiny, its, warm, sampler="pool", batch_size=8), "s/step of 8")
    add("SDD pool loop, batch 1, memory mode",
        train_rate(device, tiny, its, warm, sampler="pool", **MEMORY_MODE), "grad ckpt + bf16 frozen")
    add("SDD pool loop, batch 8, memory mode",
        train_rate(device, tiny, its, warm, sampler="pool", batch_size=8, **MEMORY_MODE), "grad ckpt + bf16 frozen")
    for b in gen_batches:
        add(f"generation, {gen_steps} CFG steps, batch {b}", generation_rate(device, tiny, b, gen_steps))
    for label, (build, settings, note) in FLOW_ROWS.items():
        add(label, train_rate(device, tiny, its, warm, build, FLOW, sampler="pool", **settings), note)

    lines = [f"Random weights (SD 1.5, SD 3.5 Medium, FLUX.1-dev architectures), {where}; "
             f"total {time.perf_counter() - start:.0f} s", "",
             "| run | s/iteration | denoiser passes/iteration | img/s | peak GiB | note |", "|---|---|---|---|---|---|"]
    for label, r, note in rows:
        s = f"{r['s_per_step']:.3f}" if "s_per_step" in r else f"{r['seconds']:.1f} s/batch"
        passes = f"{r['passes_per_step']:.1f}" if "passes_per_step" in r else ""
        rate = f"{r['img_per_s']:.2f}" if "img_per_s" in r else ""
        lines.append(f"| {label} | {s} | {passes} | {rate} | {r['peak_gib']:.2f} | {note} |")
    table = "\n".join(lines)
    print("\n" + table)
    out = args.out or (None if args.dry_run else Path(__file__).with_name("gpu-results.md"))
    if out:
        out.write_text(table + "\n")


if __name__ == "__main__":
    main()
