"""SD-1.5 size on the CPU: `sdd erase` for 2 optimizer steps, then 2 generated images.

Builds Stable Diffusion 1.5's architecture with random weights (bench/sd15.py: 860 M UNet, 77-token
CLIP text encoder, 64x64 latents), saves it as a diffusers folder and runs, each in its own
process so that its peak RSS is its own:

* ``sdd erase`` (the CLI, in-process) for ``--steps`` optimizer steps with ``ddim_steps`` small,
  once per memory mode (DistillConfig's gradient_checkpointing / frozen_dtype / attention);
* generation of 2 images (CFG, ``--gen-steps`` DDIM steps, VAE decode at 512 px) from the erased
  model the first mode wrote.

Prints one table: peak RSS, seconds per UNet image-pass (forward only, timed around every UNet
call), erase wall time, and the sizes of patch.safetensors, checkpoint/ and model/.

    python bench/sd15_cpu.py                          # all modes (~25 min on 2 busy cores)
    python bench/sd15_cpu.py --modes fp32,memory      # fewer
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))

#: DistillConfig settings of each memory mode ("memory" is what a 24 GB GPU user would set).
MODES = {
    "fp32": {},
    "grad-ckpt": {"gradient_checkpointing": True},
    "bf16-frozen": {"frozen_dtype": "bf16"},
    "sliced-attn": {"attention": "sliced"},
    "eager-attn": {"attention": "eager"},
    "memory": {"gradient_checkpointing": True, "frozen_dtype": "bf16"},
}
PROMPTS = ["a photo of an astronaut riding a horse", "a watercolor painting of a lighthouse"]


def count_unet_calls() -> dict:
    """Time and count every UNet call of this process (class-level, so the CLI's UNets are included)."""
    from diffusers import UNet2DConditionModel

    stats = {"passes": 0, "forward_s": 0.0}
    real = UNet2DConditionModel.forward

    def forward(self, sample, *args, **kwargs):
        start = time.perf_counter()
        out = real(self, sample, *args, **kwargs)
        stats["forward_s"] += time.perf_counter() - start
        stats["passes"] += sample.shape[0]
        return out

    UNet2DConditionModel.forward = forward
    return stats


def dir_bytes(path: Path) -> int:
    path = Path(path)
    return path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def child_erase(model: str, out: str, config: str, result: str) -> None:
    from sdd.cli import app

    stats = count_unet_calls()
    start = time.perf_counter()
    try:
        app(["erase", "--model", model, "--concept", "nudity", "--out", out, "--config", config],
            standalone_mode=False)
    except SystemExit as e:
        if e.code:
            raise
    seconds = time.perf_counter() - start
    out = Path(out)
    Path(result).write_text(json.dumps({
        **stats, "erase_s": seconds, "patch_mb": dir_bytes(out / "patch.safetensors") / 1e6,
        "checkpoint_mb": dir_bytes(out / "checkpoint") / 1e6, "model_mb": dir_bytes(out / "model") / 1e6}))


def child_generate(model: str, steps: int, result: str) -> None:
    from sdd.models import load_pipeline

    stats = count_unet_calls()
    pipe = load_pipeline(model)
    pipe.set_progress_bar_config(disable=True)
    start = time.perf_counter()
    images = pipe(PROMPTS, num_inference_steps=steps, guidance_scale=7.5).images
    seconds = time.perf_counter() - start
    assert len(images) == 2
    Path(result).write_text(json.dumps({**stats, "generate_s": seconds}))


def run_child(args: list[str], timeout: float) -> dict:
    """Run this script as a child; its peak RSS comes from wait4, the rest from its JSON."""
    result = Path(tempfile.mkstemp(suffix=".json")[1])
    proc = subprocess.Popen([sys.executable, __file__, "--child", *args, str(result)])
    deadline = time.time() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.time() > deadline:
            proc.kill()
            pid, status, usage = os.wait4(proc.pid, 0)
            return {"error": "timeout"}
        time.sleep(0.5)
    if status != 0 or not result.read_text():
        return {"error": f"exit status {status}"}
    return {**json.loads(result.read_text()), "peak_rss_gib": usage.ru_maxrss / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--steps", type=int, default=2, help="optimizer steps of each sdd erase")
    ap.add_argument("--ddim-steps", type=int, default=2, help="DistillConfig.ddim_steps")
    ap.add_argument("--sampler", default="pool")
    ap.add_argument("--gen-steps", type=int, default=4, help="DDIM steps of the 2 generated images (0: none)")
    ap.add_argument("--timeout", type=float, default=1200, help="seconds per child")
    ap.add_argument("--workdir", type=Path, help="keep files here (default: a temporary folder, removed)")
    ap.add_argument("--tiny", action="store_true", help="toy-size configs (checks that the bench runs)")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "erase":
            child_erase(*rest)
        else:
            child_generate(rest[0], int(rest[1]), rest[2])
        return

    import torch
    from sd15 import parameter_count, sd15_pipeline

    work = args.workdir or Path(tempfile.mkdtemp(prefix="sd15-"))
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "base" / "model_index.json").exists():  # a --workdir keeps the base between runs
        start = time.perf_counter()
        pipe = sd15_pipeline(tiny=args.tiny)
        sizes = {n: parameter_count(getattr(pipe, n)) / 1e6 for n in ("unet", "text_encoder", "vae")}
        pipe.save_pretrained(work / "base", safe_serialization=True)
        del pipe
        print(f"SD-1.5 architecture, random weights: {sizes['unet']:.0f} M UNet, {sizes['text_encoder']:.0f} M "
              f"text encoder, {sizes['vae']:.0f} M VAE; built and saved in {time.perf_counter() - start:.0f} s; "
              f"torch {torch.__version__}, {os.cpu_count()} CPUs", flush=True)

    rows, modes = [], [m for m in args.modes.split(",") if m]
    for mode in modes:
        cfg = {"steps": args.steps, "batch_size": 1, "ddim_steps": args.ddim_steps, "sampler": args.sampler,
               "checkpoint_every": 1, "seed": 0, **MODES[mode]}
        (work / f"{mode}.yaml").write_text(yaml.safe_dump(cfg))
        out = work / f"erase-{mode}"
        shutil.rmtree(out, ignore_errors=True)
        r = run_child(["erase", str(work / "base"), str(out), str(work / f"{mode}.yaml")], args.timeout)
        rows.append((f"sdd erase, {mode}", r))
        print(mode, r, flush=True)
    if args.gen_steps:  # 0 skips generation
        first = next(p for m in [*modes, *MODES] if (p := work / f"erase-{m}" / "model").is_dir())
        r = run_child(["generate", str(first), str(args.gen_steps)], args.timeout)
        rows.append((f"generate 2 images ({args.gen_steps} CFG steps, 512 px)", r))
        print("generate", r, flush=True)

    print(f"\n`sdd erase` x {args.steps} optimizer steps (batch 1, sampler {args.sampler}, ddim_steps "
          f"{args.ddim_steps}); SD-1.5 architecture, random weights, CPU\n")
    header = "| run | peak RSS GiB | UNet passes | s/pass (forward) | wall s | patch MB | checkpoint MB | model MB |"
    print(header + "\n|" + "---|" * (header.count("|") - 1))
    for label, r in rows:
        if "error" in r:
            print(f"| {label} | {r['error']} | | | | | | |")
            continue
        wall = r.get("erase_s", r.get("generate_s"))
        sizes = [f"{r[k]:.0f}" if k in r else "" for k in ("patch_mb", "checkpoint_mb", "model_mb")]
        print(f"| {label} | {r['peak_rss_gib']:.2f} | {r['passes']} | {r['forward_s'] / max(r['passes'], 1):.2f} "
              f"| {wall:.0f} | {' | '.join(sizes)} |")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
