"""Robust erasure frontier on the toy world (issue 15 item 5): ASR vs benign drop per setting.

Each setting is params/presets/robust.yaml with a few overrides. For each: ``sdd erase`` (timed),
``sdd evaluate`` (held-out red, benign correctness drop, FID), ``sdd redteam --eval`` (ASR table).
The prompt set and the base images are built once and shared.

    OMP_NUM_THREADS=1 .venv/bin/python bench/robust_frontier.py --out /tmp/rb [--only full xattn] [--jobs 2]
    OMP_NUM_THREADS=1 .venv/bin/python bench/robust_frontier.py --out /tmp/rb --table   # table only
    OMP_NUM_THREADS=1 .venv/bin/python bench/robust_frontier.py --out /tmp/rb2 --concept red --concept triangle \
        --only preset
    OMP_NUM_THREADS=1 .venv/bin/python bench/robust_frontier.py --out /tmp/rb3 --seeds 0 1 2 --curves erased \
        --only base distill te+retention te+adversary+retention   # issue 31: spread over seeds, cost curves
    OMP_NUM_THREADS=1 .venv/bin/python bench/robust_frontier.py --out /tmp/rb4 --seeds 0 1 2 --curves erased \
        --only te+adversary+retention10 te+adversary+retention30   # stronger retention against the adversary

Results: docs/robust-erasure.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

PRESET = Path("params/presets/robust.yaml")
PLAIN = Path("params/distill.yaml")
SDD = str(Path(sys.executable).with_name("sdd"))

#: The first preset's values where today's differs: every setting below is the preset file, these,
#: then its own overrides (nested keys under "adversarial"), so each row stays what it was measured
#: as when the preset moves on. "preset" is params/presets/robust.yaml as it is.
FIRST_PRESET = {"train_method": "xattn", "steps": 1000,
                "adversarial": {"attacks": ["inversion"], "every": 50, "pool_size": 8, "retention_weight": 1.0}}

SETTINGS: dict[str, dict] = {
    "preset": {},
    "distill": {},  # params/distill.yaml as it is (SDD + retention), what make demo and the deployments run
    "xattn": {},  # the first preset
    "full": {"train_method": "full"},  # the whole UNet at the toy's lr 1e-3 wrecks it (FID 330)
    "full-lr2e-4-e100": {"train_method": "full", "lr": 2.0e-4, "adversarial": {"every": 100}},
    "noxattn-lr2e-4-e100": {"train_method": "noxattn", "lr": 2.0e-4, "adversarial": {"every": 100}},
    # Only the cross-attention output projections: erasing in the 64-d value space, not per embedding.
    "out": {"train_method": "xattn_out"},
    "out-600": {"train_method": "xattn_out", "steps": 600},
    "out-600-tok": {"train_method": "xattn_out", "steps": 600, "adversarial": {"attacks": ["inversion", "tokens"]}},
    "out-600-tok-e25": {"train_method": "xattn_out", "steps": 600,
                        "adversarial": {"attacks": ["inversion", "tokens"], "every": 25, "pool_size": 16}},
    "out-800-tok-e25-r3": {"train_method": "xattn_out", "steps": 800,
                           "adversarial": {"attacks": ["inversion", "tokens"], "every": 25, "pool_size": 16,
                                           "retention_weight": 3.0}},
    "out-1000-tok-e25-r3": {"train_method": "xattn_out", "steps": 1000,
                            "adversarial": {"attacks": ["inversion", "tokens"], "every": 25, "pool_size": 16,
                                            "retention_weight": 3.0}},
    "out-800-tok-e20-r3-lr2e-3": {"train_method": "xattn_out", "steps": 800, "lr": 2.0e-3,
                                  "adversarial": {"attacks": ["inversion", "tokens"], "every": 20, "pool_size": 24,
                                                  "retention_weight": 3.0}},
    "out-800-tok-e20-r3-lr2e-3-seed1": {"train_method": "xattn_out", "steps": 800, "lr": 2.0e-3, "seed": 1,
                                        "adversarial": {"attacks": ["inversion", "tokens"], "every": 20,
                                                        "pool_size": 24, "retention_weight": 3.0}},
    "out-800-tok-e20-r3-lr3e-3": {"train_method": "xattn_out", "steps": 800, "lr": 3.0e-3,
                                  "adversarial": {"attacks": ["inversion", "tokens"], "every": 20, "pool_size": 24,
                                                  "retention_weight": 3.0}},
    # Each inversion from the concept word (as the red team's), twice as long: less drift between seeds?
    "out-800-tok-e20-r3-lr2e-3-cold100": {"train_method": "xattn_out", "steps": 800, "lr": 2.0e-3,
                                          "adversarial": {"attacks": ["inversion", "tokens"], "every": 20,
                                                          "pool_size": 24, "retention_weight": 3.0,
                                                          "warm_start": False, "inversion_steps": 100}},
    "out-800-tok-e20-r3-lr2e-3-cold100-seed1": {"train_method": "xattn_out", "steps": 800, "lr": 2.0e-3, "seed": 1,
                                                "adversarial": {"attacks": ["inversion", "tokens"], "every": 20,
                                                                "pool_size": 24, "retention_weight": 3.0,
                                                                "warm_start": False, "inversion_steps": 100}},
    "out-800-tok-e20-r3-lr2e-3-cold100-seed2": {"train_method": "xattn_out", "steps": 800, "lr": 2.0e-3, "seed": 2,
                                                "adversarial": {"attacks": ["inversion", "tokens"], "every": 20,
                                                                "pool_size": 24, "retention_weight": 3.0,
                                                                "warm_start": False, "inversion_steps": 100}},
    "out-800-tok-e20-r3-lr2e-3-cold100-p60": {"train_method": "xattn_out", "steps": 800, "lr": 2.0e-3,
                                              "adversarial": {"attacks": ["inversion", "tokens"], "every": 20,
                                                              "pool_size": 24, "retention_weight": 3.0,
                                                              "warm_start": False, "inversion_steps": 100,
                                                              "prefix_steps": 60}},
    # Keep every conditioning found (40 attacks x 2-3 prompts): the model must not forget old attacks.
    "cold100-pool96": {"train_method": "xattn_out", "steps": 800, "lr": 2.0e-3,
                       "adversarial": {"attacks": ["inversion", "tokens"], "every": 20, "pool_size": 96,
                                       "retention_weight": 3.0, "warm_start": False, "inversion_steps": 100}},
    "cold100-pool96-seed2": {"train_method": "xattn_out", "steps": 800, "lr": 2.0e-3, "seed": 2,
                             "adversarial": {"attacks": ["inversion", "tokens"], "every": 20, "pool_size": 96,
                                             "retention_weight": 3.0, "warm_start": False, "inversion_steps": 100}},
    "out-600-tok-e20-r3": {"train_method": "xattn_out", "steps": 600,
                           "adversarial": {"attacks": ["inversion", "tokens"], "every": 20, "pool_size": 24,
                                           "retention_weight": 3.0}},
    # Not measured yet (docs/robust-erasure.md, what is left):
    # Held-out leakage varies 2-10 % between seeds of the preset (the demo's safety gate is 5 %):
    "f25": {"train_method": "xattn_out", "steps": 800, "lr": 2.0e-3,
            "adversarial": {"attacks": ["inversion", "tokens"], "every": 20, "pool_size": 96, "fraction": 0.25,
                            "retention_weight": 3.0, "warm_start": False, "inversion_steps": 100}},
    "r1": {"train_method": "xattn_out", "steps": 800, "lr": 2.0e-3,
           "adversarial": {"attacks": ["inversion", "tokens"], "every": 20, "pool_size": 96,
                           "retention_weight": 1.0, "warm_start": False, "inversion_steps": 100}},
    # The lr decays to 0 (cosine): the min-max game ends at a settled point, not wherever it stood.
    "cos": {"train_method": "xattn_out", "steps": 800, "lr": 2.0e-3, "lr_schedule": "cosine",
            "adversarial": {"attacks": ["inversion", "tokens"], "every": 20, "pool_size": 96,
                            "retention_weight": 3.0, "warm_start": False, "inversion_steps": 100}},
    "cos-lr4e-3": {"train_method": "xattn_out", "steps": 800, "lr": 4.0e-3, "lr_schedule": "cosine",
                   "adversarial": {"attacks": ["inversion", "tokens"], "every": 20, "pool_size": 96,
                                   "retention_weight": 3.0, "warm_start": False, "inversion_steps": 100}},
    # The last 200 steps attack no more (settle_steps): every attack found gets distilled before the run
    # ends, instead of the run ending wherever the last attacks left it (the seed variance above).
    "settle200": {"train_method": "xattn_out", "steps": 1000, "lr": 2.0e-3,
                  "adversarial": {"attacks": ["inversion", "tokens"], "every": 20, "pool_size": 96,
                                  "retention_weight": 3.0, "warm_start": False, "inversion_steps": 100,
                                  "settle_steps": 200}},
    # Fewer, stronger in-loop inversions, closer to the red team's (1,000 steps at lr 5e-3 on 64 images):
    # 250 steps every 50 on 48 targets, the same inversion compute as 100 steps every 20.
    "inv250-e50": {"train_method": "xattn_out", "steps": 800, "lr": 2.0e-3,
                   "adversarial": {"attacks": ["inversion", "tokens"], "every": 50, "pool_size": 96,
                                   "retention_weight": 3.0, "warm_start": False, "inversion_steps": 250,
                                   "targets": 48}},
    # The same inversions, and the tokens attack in 3 of 4 rounds (every 25 steps): inv250-e50 left
    # adversarial tokens at 12-50 % with only 8 prefix attacks.
    "inv250-tok3": {"train_method": "xattn_out", "steps": 800, "lr": 2.0e-3,
                    "adversarial": {"attacks": ["inversion", "tokens", "tokens", "tokens"], "every": 25,
                                    "pool_size": 96, "retention_weight": 3.0, "warm_start": False,
                                    "inversion_steps": 250, "targets": 48}},
    # In-loop inversions with the red team's own budget (1,000 steps at lr 5e-3 on 64 targets), every
    # 100 steps with the tokens attack in turn: 4 inversions and 4 prefix attacks in 800 steps.
    "inv1000-e100": {"train_method": "xattn_out", "steps": 800, "lr": 2.0e-3,
                     "adversarial": {"attacks": ["inversion", "tokens"], "every": 100, "pool_size": 96,
                                     "retention_weight": 3.0, "warm_start": False, "inversion_steps": 1000,
                                     "inversion_lr": 5.0e-3, "targets": 64}},
    # Twice inv250-e50's attacks: 250-step inversions every 25 steps, the tokens attack in turn (16 + 16).
    "inv250-e25": {"train_method": "xattn_out", "steps": 800, "lr": 2.0e-3,
                   "adversarial": {"attacks": ["inversion", "tokens"], "every": 25, "pool_size": 96,
                                   "retention_weight": 3.0, "warm_start": False, "inversion_steps": 250,
                                   "targets": 48}},
    # The preset, erasing a neighbourhood of each conditioning found instead of the point: Gaussian noise
    # at half each token's RMS (jit05), or half the draws an affine blend of two pool members (blend05).
    "jit05": {"train_method": "xattn_out", "steps": 800, "lr": 2.0e-3,
              "adversarial": {"attacks": ["inversion", "tokens"], "every": 20, "pool_size": 96,
                              "retention_weight": 3.0, "warm_start": False, "inversion_steps": 100, "jitter": 0.5}},
    "blend05": {"train_method": "xattn_out", "steps": 800, "lr": 2.0e-3,
                "adversarial": {"attacks": ["inversion", "tokens"], "every": 20, "pool_size": 96,
                                "retention_weight": 3.0, "warm_start": False, "inversion_steps": 100, "blend": 0.5}},
    # Erase where the colour is drawn, not where the prompt enters: the whole UNet (or all but the
    # cross-attention) with a strong retention term holding benign prompts to the base model.
    "full-r10": {"train_method": "full", "steps": 800, "lr": 5.0e-4,
                 "adversarial": {"attacks": ["inversion", "tokens"], "every": 20, "pool_size": 96,
                                 "retention_weight": 10.0, "retention_batch": 8, "warm_start": False,
                                 "inversion_steps": 100}},
    # full-r10 holds concept inversion at 6.5 % on two seeds but leaks 7-8 % held-out: erase harder.
    "full-r10-lr1e-3": {"train_method": "full", "steps": 800, "lr": 1.0e-3,
                        "adversarial": {"attacks": ["inversion", "tokens"], "every": 20, "pool_size": 96,
                                        "retention_weight": 10.0, "retention_batch": 8, "warm_start": False,
                                        "inversion_steps": 100}},
    "full-r10-f25": {"train_method": "full", "steps": 800, "lr": 5.0e-4,
                     "adversarial": {"attacks": ["inversion", "tokens"], "every": 20, "pool_size": 96,
                                     "fraction": 0.25, "retention_weight": 10.0, "retention_batch": 8,
                                     "warm_start": False, "inversion_steps": 100}},
    # The cross-attention at the preset's lr (2e-3, where the words enter) and the rest at 5e-4.
    "full-r10-x4": {"train_method": "full", "steps": 800, "lr": 5.0e-4, "xattn_lr_scale": 4.0,
                    "adversarial": {"attacks": ["inversion", "tokens"], "every": 20, "pool_size": 96,
                                    "retention_weight": 10.0, "retention_batch": 8, "warm_start": False,
                                    "inversion_steps": 100}},
    "noxattn-r10": {"train_method": "noxattn", "steps": 800, "lr": 5.0e-4,
                    "adversarial": {"attacks": ["inversion", "tokens"], "every": 20, "pool_size": 96,
                                    "retention_weight": 10.0, "retention_batch": 8, "warm_start": False,
                                    "inversion_steps": 100}},
    # Control: plain SDD as params/distill.yaml was on world I (lr 1e-3, xattn, 320 steps, no retention).
    "plain": {"steps": 320, "lr": 1.0e-3, "train_method": "xattn", "checkpoint_every": 20, "adversarial": None},
    "xattn-e100": {"adversarial": {"every": 100}},  # half the attacks: fits the 10-minute demo
    "xattn-f75": {"adversarial": {"fraction": 0.75}},
    "plain-xattn-1000": {"adversarial": None},  # control: the same run without the adversary
}

#: Text-encoder erasure (issue 31 item 1, docs/robust-erasure.md): the toy's text encoder trains, its UNet
#: stays the base's. Each is the file named, as it is now, with these overrides (not FIRST_PRESET's).
#: lr 3e-4: the whole text encoder trains; with retention it gave held-out red 11 %, benign drop 4 points
#: (1e-4: 30 % / 2, 1e-3: 0 % / 34; docs/robust-erasure.md).
TEXT_ENCODER_SETTINGS: dict[str, tuple[Path, dict]] = {
    "te": (PLAIN, {"train_method": "text_encoder", "lr": 3.0e-4, "retention": None}),  # the SDD loss alone
    "te+retention": (PLAIN, {"train_method": "text_encoder", "lr": 3.0e-4}),
    "te+adversary+retention": (PRESET, {"train_method": "text_encoder", "lr": 3.0e-4}),
    # te+adversary+retention held every text attack and inversion on seed 0 but collapsed benign
    # prompts (45 points): hold them harder (retention 10, 8 benign samples per step), and slower.
    "te+adversary+retention10": (PRESET, {"train_method": "text_encoder", "lr": 3.0e-4,
                                          "retention": {"weight": 10.0, "batch": 8}}),
    "te+adversary+retention10-lr1e-4": (PRESET, {"train_method": "text_encoder", "lr": 1.0e-4,
                                                 "retention": {"weight": 10.0, "batch": 8}}),
    # retention10 met every target on seed 0 and collapsed benign prompts on seeds 1-2 (26-28 points):
    # hold them harder still, or push less (a quarter of each batch adversarial instead of half).
    "te+adversary+retention30": (PRESET, {"train_method": "text_encoder", "lr": 3.0e-4,
                                          "retention": {"weight": 30.0, "batch": 8}}),
    "te+adversary+retention10-f25": (PRESET, {"train_method": "text_encoder", "lr": 3.0e-4,
                                              "retention": {"weight": 10.0, "batch": 8},
                                              "adversarial": {"fraction": 0.25}}),
    # seed 1: retention30 held benign prompts (4.7 points) but leaked (6.3 %); f25 the reverse (2.1 %, 9.9)
    "te+adversary+retention20": (PRESET, {"train_method": "text_encoder", "lr": 3.0e-4,
                                          "retention": {"weight": 20.0, "batch": 8}}),
    "te+adversary+retention30-s1200": (PRESET, {"train_method": "text_encoder", "lr": 3.0e-4, "steps": 1200,
                                                "retention": {"weight": 30.0, "batch": 8}}),
}
SETTINGS.update({name: {} for name in TEXT_ENCODER_SETTINGS})
#: The base model itself, not erased: the reference row of the frontier and of the cost curves.
BASE = "base"
SETTINGS[BASE] = {}


def settings_yaml(name: str) -> dict:
    """A setting's config; ``name@N`` is setting ``name`` with seed N (``--seeds``)."""
    name, _, seed = name.partition("@")
    if name in TEXT_ENCODER_SETTINGS:
        path, overrides = TEXT_ENCODER_SETTINGS[name]
        cfg = yaml.safe_load(path.read_text())
        for key, value in overrides.items():
            cfg[key] = {**cfg[key], **value} if isinstance(value, dict) and cfg.get(key) else value
        return {**cfg, **({"seed": int(seed)} if seed else {})}
    cfg = yaml.safe_load((PLAIN if name == "distill" else PRESET).read_text())
    for overrides in ([] if name in ("preset", "distill") else [FIRST_PRESET, SETTINGS[name]]):
        for key, value in overrides.items():
            if isinstance(value, dict):
                cfg[key] = {**cfg[key], **value}
            else:
                cfg[key] = value
    if seed:
        cfg["seed"] = int(seed)
    return cfg if name == "distill" else retention_moved_out(cfg)


def retention_moved_out(cfg: dict) -> dict:
    """The settings above were written when the retention term was ``adversarial.retention_*``; it is
    ``retention:`` now (sdd/erasure/retention.py). A setting without the adversary had no retention."""
    adversarial = cfg.get("adversarial")
    if adversarial is None:
        cfg["retention"] = None
        return cfg
    for key in [k for k in adversarial if k.startswith("retention_")]:
        cfg["retention"][key.removeprefix("retention_")] = adversarial.pop(key)
    return cfg


def run(cmd: list[str], log: Path) -> float:
    start = time.monotonic()
    with log.open("w") as f:
        subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT)
    return time.monotonic() - start


def redteam_config(out: Path, curves: str) -> Path:
    """params/redteam.yaml with the cost curves off, or for the erased model only (``--curves``): the
    base model's curves are the same for every setting, so they are measured once, as the ``base`` row."""
    cfg = yaml.safe_load(Path("params/redteam.yaml").read_text())
    cfg["cost_curves"] = None if curves == "none" else {**(cfg.get("cost_curves") or {}), "models": ["erased"]}
    path = out / "cfg" / f"redteam-{curves}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def measure(name: str, out: Path, concepts: list[str], redteam: bool = True, curves: str = "none") -> None:
    """Erase (timed), evaluate and red-team one setting; ``base`` evaluates and attacks the base model."""
    run_dir, eval_dir = out / name, out / f"{name}-eval"
    model = "toy" if name.partition("@")[0] == BASE else str(run_dir / "model")
    if model != "toy" and not (run_dir / "manifest.json").exists():
        cfg_path = out / "cfg" / f"{name}.yaml"
        cfg_path.parent.mkdir(parents=True, exist_ok=True)
        cfg_path.write_text(yaml.safe_dump(settings_yaml(name), sort_keys=False))
        wall = run([SDD, "erase", "--model", "toy", *concept_args(concepts), "--config", str(cfg_path),
                    "--out", str(run_dir)], out / f"{name}.erase.log")
        (out / f"{name}.wall").write_text(f"{wall:.1f}\n")
    if not (eval_dir / "metrics.json").exists():
        run([SDD, "evaluate", "--base", "toy", "--model", model, "--prompts", str(out / "prompts"),
             "--out", str(eval_dir), "--base-images", str(out / "base-images")], out / f"{name}.eval.log")
    if redteam and "redteam" not in json.loads((eval_dir / "metrics.json").read_text()):
        run([SDD, "redteam", "--base", "toy", "--model", model, "--prompts", str(out / "prompts"),
             "--eval", str(eval_dir), "--config", str(redteam_config(out, curves))], out / f"{name}.redteam.log")


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def concept_args(concepts: list[str]) -> list[str]:
    return [arg for c in concepts for arg in ("--concept", c)]


def row(name: str, out: Path, concept: str) -> str | None:
    path = out / f"{name}-eval" / "metrics.json"
    if not path.exists():
        return None
    m = json.loads(path.read_text())
    heldout_rate = m["concepts"][concept]["erased"]["rate"]  # the concept on the held-out eval prompts
    quality = m.get("quality") or {}
    drop = (quality.get("correctness") or {}).get("drop_points")
    fid = quality.get("fid")
    clip = (quality.get("clip_score") or {}).get("erased")
    rt = ((m.get("redteam") or {}).get("concepts") or {}).get(concept) or {}
    attacks = rt.get("attacks") or {}

    def asr(a):
        v = attacks.get(a) or {}
        return v.get("rate") if isinstance(v, dict) else v

    union = (rt.get("union") or {}).get("rate")
    wall = (out / f"{name}.wall").read_text().strip() if (out / f"{name}.wall").exists() else "–"
    return (f"| {name} | {concept} | {_pct(heldout_rate)} | {'–' if drop is None else f'{drop:.1f}'} | "
            f"{'–' if fid is None else f'{fid:.2f}'} | {'–' if clip is None else f'{clip:.2f}'} | "
            f"{_pct(asr('transfer'))} | {_pct(asr('adversarial_tokens'))} | "
            f"{_pct(asr('concept_inversion'))} | {_pct(asr('relearning'))} | {_pct(union)} | {wall} |")


def table(out: Path, names: list[str], concepts: list[str]) -> str:
    lines = ["| setting | concept | held-out % | benign drop (pts) | FID | CLIP score | transfer % | adv. tokens % | "
             "inversion % | relearning % | union % | erase wall s |", "|---" * 12 + "|"]
    lines += [r for n in names for c in concepts if (r := row(n, out, c))]
    return "\n".join(lines)


def _values(name: str, out: Path, concept: str) -> dict[str, float | None] | None:
    path = out / f"{name}-eval" / "metrics.json"
    if not path.exists():
        return None
    m = json.loads(path.read_text())
    rt = ((m.get("redteam") or {}).get("concepts") or {}).get(concept) or {}
    values = {"held-out %": m["concepts"][concept]["erased"]["rate"],
              "benign drop (pts)": ((m.get("quality") or {}).get("correctness") or {}).get("drop_points")}
    for attack in ("transfer", "adversarial_tokens", "concept_inversion", "relearning"):
        values[f"{attack} %"] = ((rt.get("attacks") or {}).get(attack) or {}).get("rate")
    values["union %"] = (rt.get("union") or {}).get("rate")
    wall = out / f"{name}.wall"
    values["erase wall s"] = float(wall.read_text()) if wall.exists() else None
    return values


def spread_table(out: Path, settings: list[str], seeds: list[int], concepts: list[str]) -> str:
    """Per setting and concept, each column's range over the seeds (min–max): a claim holds on every seed."""
    columns = ["held-out %", "benign drop (pts)", "transfer %", "adversarial_tokens %", "concept_inversion %",
               "relearning %", "union %", "erase wall s"]
    lines = [f"| setting | concept | seeds | {' | '.join(columns)} |", "|---|---|---|" + "---|" * len(columns)]
    for setting in settings:
        for concept in concepts:
            found = [v for s in seeds if (v := _values(f"{setting}@{s}", out, concept))]
            if not found:
                continue
            cells = []
            for col in columns:
                xs = [v[col] for v in found if v[col] is not None]
                scale = 1 if col in ("benign drop (pts)", "erase wall s") else 100
                cells.append("–" if not xs else f"{scale * min(xs):.1f}–{scale * max(xs):.1f}")
            lines.append(f"| {setting} | {concept} | {len(found)} | {' | '.join(cells)} |")
    return "\n".join(lines)


def curves_table(out: Path, names: list[str], concept: str) -> str:
    """The cost curves each run recorded (its erased model's; the ``base`` row's are the base model's)."""
    lines = ["| run | attack | ASR % at each budget (steps) |", "|---|---|---|"]
    for name in names:
        path = out / f"{name}-eval" / "metrics.json"
        if not path.exists():
            continue
        rt = ((json.loads(path.read_text()).get("redteam") or {}).get("concepts") or {}).get(concept) or {}
        for attack, curve in (rt.get("cost_curves") or {}).items():
            points = curve.get("erased") or {}
            lines.append(f"| {name} | {attack} | " + ", ".join(
                f"{b}: {100 * points[str(b)]['rate']:.1f}" for b in curve["budgets"] if str(b) in points) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/rb"))
    ap.add_argument("--only", nargs="*", default=list(SETTINGS))
    ap.add_argument("--concept", action="append", help="concept to erase (repeatable; default red); use a "
                                                        "separate --out per concept set")
    ap.add_argument("--seeds", type=int, nargs="*", help="run each setting once per seed (rows name@seed)")
    ap.add_argument("--no-redteam", action="store_true", help="erase and evaluate only (held-out, benign drop, FID)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--curves", choices=["none", "erased"], default="none",
                    help="cost curves of each run's erased model (params/redteam.yaml budgets); run the `base` "
                         "setting for the base model's")
    ap.add_argument("--table", action="store_true", help="only print the table of what is measured")
    args = ap.parse_args()
    concepts = args.concept or ["red"]
    names = [f"{n}@{s}" for n in args.only for s in args.seeds] if args.seeds else args.only
    # the base model is not trained: one seed of the red team says it all
    names = [n for n in names if n.partition("@")[0] != BASE or n == f"{BASE}@{(args.seeds or [0])[0]}"]
    if not args.table:
        args.out.mkdir(parents=True, exist_ok=True)
        if not (args.out / "prompts").exists():
            run([SDD, "prompts", "build", *concept_args(concepts), "--out", str(args.out / "prompts")],
                args.out / "prompts.log")
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(lambda n: measure(n, args.out, concepts, not args.no_redteam, args.curves), names))
    print(table(args.out, names, concepts))
    if args.seeds:
        print()
        print(spread_table(args.out, args.only, args.seeds, concepts))
    print()
    print(curves_table(args.out, names, concepts[0]))


if __name__ == "__main__":
    main()
