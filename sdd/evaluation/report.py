"""Evaluation report files: ``metrics.json``, ``report.md`` and before/after image grids.

A grid shows, for one concept, the base model's images in the top row and the erased model's in
the bottom row, column by column from the same prompt and seed.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from sdd.evaluation.generate import load_images
from sdd.layout import BENIGN_STEM, GRIDS_DIR, METRICS_FILE, RATES_FILE, REPORT_FILE, concept_stem
from sdd.prompts import PromptSet, spread
from sdd.storage import atomic_path, write_json_atomic, write_text_atomic

LABEL_WIDTH = 64


def image_grid(rows: dict[str, Sequence[Image.Image]], cell: int | None = None) -> Image.Image:
    """Labelled rows of images (same number per row), each image scaled to ``cell`` pixels."""
    first = next(iter(rows.values()))
    cell = cell or min(256, max(96, first[0].width))
    cols = max(len(r) for r in rows.values())
    grid = Image.new("RGB", (LABEL_WIDTH + cols * cell, len(rows) * cell), "white")
    draw = ImageDraw.Draw(grid)
    for r, (label, images) in enumerate(rows.items()):
        draw.text((4, r * cell + cell // 2 - 6), label, fill="black")
        for c, im in enumerate(images):
            resample = Image.Resampling.NEAREST if im.width < cell else Image.Resampling.LANCZOS
            grid.paste(im.convert("RGB").resize((cell, cell), resample), (LABEL_WIDTH + c * cell, r * cell))
    return grid


def write_grid(prompt_set: PromptSet, indices: Sequence[int], base_paths: Sequence[Path],
               erased_paths: Sequence[Path], out_dir: Path, stem: str, n: int) -> dict[str, Any]:
    """``grids/<stem>.png``: base row over erased row for up to ``n`` of ``indices``; returns file and rows."""
    shown = spread(indices, n)
    grid = image_grid({"base": load_images([base_paths[i] for i in shown]),
                       "erased": load_images([erased_paths[i] for i in shown])})
    file = f"{GRIDS_DIR}/{stem}.png"
    with atomic_path(out_dir / file) as tmp:
        grid.save(tmp, format="PNG")
    return {"file": file, "rows": [{"prompt": prompt_set.rows[i].prompt, "seed": prompt_set.rows[i].seed}
                                   for i in shown]}


def write_grids(prompt_set: PromptSet, base_paths: Sequence[Path], erased_paths: Sequence[Path],
                out_dir: Path, n: int = 8) -> tuple[dict[str, dict[str, Any]], dict[str, Any] | None]:
    """One before/after grid per concept, and one of the benign prompts (None without any).

    The benign grid is returned apart, so that a concept named ``benign`` keeps its own grid.
    """
    grids = {c: write_grid(prompt_set, prompt_set.indices_for(c), base_paths, erased_paths, out_dir,
                           concept_stem(c), n) for c in prompt_set.concepts()}
    benign = prompt_set.benign_indices()
    if not benign:
        return grids, None
    return grids, write_grid(prompt_set, benign, base_paths, erased_paths, out_dir, BENIGN_STEM, n)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def _num(x: float | None, fmt: str = ".3f") -> str:
    return "n/a" if x is None else format(x, fmt)


def _rate(r: dict[str, Any]) -> str:
    if r["rate"] is None:
        return f"n/a (0/{r['n']})"
    lo, hi = r["ci95"]
    return f"{_pct(r['rate'])} ({r['count']}/{r['n']}; 95 % CI {100 * lo:.1f}–{100 * hi:.1f})"


def render_markdown(metrics: dict[str, Any]) -> str:
    gates, ps, q = metrics["gates"], metrics["prompt_set"], metrics["quality"]
    lines = [
        f"# Erasure evaluation: **{metrics['verdict'].upper()}**", "",
        f"- base model: `{metrics['models']['base']['name']}`",
        f"- erased model: `{metrics['models']['erased']['name']}`",
        f"- prompt set: `{ps['name']}`, {ps['rows']} rows, sha256 `{ps['sha256']}`",
        f"- generation: {metrics['generation']['num_inference_steps']} steps, guidance "
        f"{metrics['generation']['guidance_scale']} (unless a row sets its own)",
        f"- judge: `{metrics['judge']['name']}` "
        f"`{json.dumps(metrics['judge']['settings'], sort_keys=True)}`", "",
        "## Erasure (presence rate on prompts evoking the concept)", "",
        "| concept | prompts | base | erased | relative reduction |", "|---|---|---|---|---|",
    ]
    for c, m in metrics["concepts"].items():
        lines.append(f"| {c} | {m['n']} | {_rate(m['base'])} | {_rate(m['erased'])} "
                     f"| {_pct(m['relative_reduction'])} |")
    lines += ["", f"## Quality ({q['n']} benign prompts)", ""]
    if q.get("correctness"):
        cb, ce = q["correctness"]["base"], q["correctness"]["erased"]
        lines += ["| judged correct | base | erased |", "|---|---|---|"]
        for k in ("color", "shape", "both"):
            lines.append(f"| {k} | {_pct(cb[k]['accuracy'])} | {_pct(ce[k]['accuracy'])} |")
        lines += ["", f"Quality drop: {_num(q['correctness']['drop_points'], '.1f')} points."]
    lines.append(f"FID base vs erased: {_num(q.get('fid'))}"
                 + (f" ({q['fid_features']} features)" if q.get("fid_features") else ""))
    if q.get("clip_score"):
        cs = q["clip_score"]
        lines.append(f"CLIP score: base {cs['base']:.2f}, erased {cs['erased']:.2f} "
                     f"(relative drop {_pct(cs['relative_drop'])})")
    lines += [f"- note: {n}" for n in q.get("notes", [])]
    lines += robustness_section(metrics.get("redteam"))
    lines += ["", "## Gates", "", "| gate | status | detail |", "|---|---|---|"]
    for c in gates["checks"]:
        gate = f"{c['gate']} ({c['concept']})" if c["concept"] else c["gate"]
        lines.append(f"| {gate} | {c['status']} | {c['reason']} |")
    lines += ["", "## Before / after", ""]
    grids = list(metrics.get("grids", {}).items())
    if metrics.get("benign_grid"):
        grids.append(("benign prompts", metrics["benign_grid"]))
    for name, g in grids:
        lines += [f"### {name}", "", f"![{name}]({g['file']})", "",
                  "Columns: " + "; ".join(f"`{r['prompt']}` (seed {r['seed']})" for r in g["rows"]), ""]
    return "\n".join(lines) + "\n"


def cost_curve_lines(concept: str, curves: dict[str, Any], plot: str | None, heading: str = "###") -> list[str]:
    """The cost curves of one concept as a table (ASR at each budget, erased and base) and their plot."""
    if not curves:
        return []
    lines = ["", f"{heading} {concept}: cost curves", "",
             "ASR against the attacker's budget: how much harder the erasure makes the attack than it is "
             "on the base model.", "", "| attack | model | " + " | ".join(
                 f"{b} steps" for b in max((c["budgets"] for c in curves.values()), key=len)) + " |"]
    lines.append("|---|---|" + "---|" * max(len(c["budgets"]) for c in curves.values()))
    for attack, curve in curves.items():
        for model in ("erased", "base"):
            if curve.get(model):
                lines.append(f"| {attack} | {model} | " + " | ".join(
                    _rate(curve[model][str(b)]) for b in curve["budgets"]) + " |")
    if plot:
        lines += ["", f"![{concept} cost curves]({plot})"]
    return lines


def robustness_section(redteam: dict[str, Any] | None) -> list[str]:
    """The red team's attack success rates (``sdd redteam --eval``), or a line saying it has not run."""
    if not redteam:
        return ["", "## Robustness (red team)", "", "Not measured: run `sdd redteam --eval <this folder>`."]
    attacks = redteam["attacks"]
    lines = ["", f"## Robustness (red team): **{redteam['verdict'].upper()}**", "",
             "Attack success rate over the effective prompts (the base model shows the concept); "
             f"details and grids in [{redteam['dir']}/report.md]({redteam['dir']}/report.md).", "",
             "| concept | effective prompts | pre-attack | " + " | ".join(attacks) + " | union |",
             "|---|---|---|" + "---|" * len(attacks) + "---|"]
    for concept, m in redteam["concepts"].items():
        cells = [_rate(m["attacks"][a]) if a in m["attacks"] else "n/a" for a in attacks]
        lines.append(f"| {concept} | {m['effective_prompts']} | {_rate(m['pre_attack'])} | "
                     + " | ".join(cells) + f" | {_rate(m['union'])} |")
    threat_models = redteam.get("threat_models") or {}
    if threat_models:
        lines += ["", "Per threat model (the attacks that count for how the model ships): "
                  + "; ".join(f"**{name}** {t['verdict']} ({', '.join(t['attacks'])})"
                              for name, t in threat_models.items()) + "."]
    plots = redteam.get("cost_curve_plots") or {}
    for concept, m in redteam["concepts"].items():
        plot = plots.get(concept)
        lines += cost_curve_lines(concept, m.get("cost_curves") or {}, f"{redteam['dir']}/{plot}" if plot else None)
    return lines


def write_report(metrics: dict[str, Any], prompt_set: PromptSet, base_paths: Sequence[Path],
                 erased_paths: Sequence[Path], out_dir: Path, grid_images: int = 8) -> None:
    """Write the grids, then ``metrics.json`` and ``report.md``.

    Metrics gain ``grids`` (``{concept: {file, rows}}``) and ``benign_grid`` (None without benign prompts).
    """
    out_dir = Path(out_dir)
    metrics["grids"], metrics["benign_grid"] = write_grids(prompt_set, base_paths, erased_paths, out_dir,
                                                           grid_images)
    write_json_atomic(out_dir / METRICS_FILE, metrics)
    write_text_atomic(out_dir / REPORT_FILE, render_markdown(metrics))
    write_text_atomic(out_dir / RATES_FILE, rates_csv(metrics))


def rates_csv(metrics: dict[str, Any]) -> str:
    """Per-concept presence rates of both models, one row each (the DVC ``evaluate`` plot)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")  # quotes a concept name such as "blood, gore"
    writer.writerow(["concept", "model", "rate"])
    for concept, m in metrics["concepts"].items():
        writer.writerows([concept, role, f"{m[role]['rate']:.6f}"] for role in ("base", "erased")
                         if m[role]["rate"] is not None)
    return out.getvalue()
