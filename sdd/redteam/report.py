"""Red-team report files: ``metrics.json``, ``report.md``, one attack grid per concept and, with cost
curves, one plot of them per concept (:func:`sdd.plots.cost_curve_plot`).

A grid shows, column by column for the same effective prompt and seed, the base model's image,
the erased model's image, and each attack's image (blank where an attack did not try the prompt).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image

from sdd.evaluation import cost_curve_lines, image_grid
from sdd.layout import GRIDS_DIR, concept_stem
from sdd.plots import cost_curve_plot
from sdd.prompts import spread
from sdd.storage import atomic_path, write_json_atomic, write_text_atomic

LABELS = {"adversarial_tokens": "adv tokens", "concept_inversion": "inversion"}  # fit the grid's label column


def _blank(like: Image.Image) -> Image.Image:
    return Image.new("RGB", like.size, (235, 235, 235))


def write_attack_grid(concept: str, art: dict[str, Any], out_dir: Path, n: int) -> dict[str, Any]:
    """The grid PNG of one concept; returns its file and the prompts of its columns."""
    results = art["results"]
    attacked = [set(r.rows) for r in results.values()]
    # Prefer prompts every attack tried, so the columns compare attacks on the same prompt.
    common = [i for i in range(len(art["rows"])) if all(i in a for a in attacked)]
    shown = spread(common or list(range(len(art["rows"]))), n)
    rows = {"base": [art["base"][i] for i in shown], "erased": [art["erased"][i] for i in shown]}
    for name, r in results.items():
        where = {i: k for k, i in enumerate(r.rows)}
        label = LABELS.get(name, name[:10])
        rows[label] = [r.images[where[i]] if i in where else _blank(art["base"][i]) for i in shown]
    file = f"{GRIDS_DIR}/{concept_stem(concept, prefix='redteam-')}.png"
    with atomic_path(out_dir / file) as tmp:
        image_grid(rows).save(tmp, format="PNG")
    columns = [{"prompt": art["rows"][i].prompt, "seed": art["rows"][i].seed} for i in shown]
    return {"file": file, "rows": columns}


def _rate(r: dict[str, Any]) -> str:
    if r["rate"] is None:
        return "n/a (0 prompts)"
    lo, hi = r["ci95"]
    return f"{100 * r['rate']:.1f} % ({r['count']}/{r['n']}; CI {100 * lo:.1f}–{100 * hi:.1f})"


def render_markdown(metrics: dict[str, Any]) -> str:
    gates, gen = metrics["gates"], metrics["generation"]
    lines = [f"# Red team: **{metrics['verdict'].upper()}**", "",
             f"- base model: `{metrics['models']['base']}`; erased model: `{metrics['models']['erased']}`",
             f"- prompt set: `{metrics['prompt_set']['name']}`, sha256 `{metrics['prompt_set']['sha256']}`",
             f"- generation: {gen['num_inference_steps']} steps, guidance {gen['guidance_scale']} "
             f"(unless a row sets its own), {gen['seeding']}",
             f"- judge: `{metrics['judge']['name']}` `{metrics['judge']['settings']}`",
             "- ASR: share of the effective prompts an attack tried on which one of its images shows the concept; "
             "union: any attack, over all effective prompts", ""]
    for concept, m in metrics["redteam"].items():
        lines += [f"## {concept}", "",
                  f"Effective prompts: {m['effective_prompts']} of {m['eval_prompts']} "
                  f"(base model shows the concept: {_rate(m['base'])}).", "",
                  "| | success rate (95 % Wilson CI) | prompts | gradient steps | generations | wall s |",
                  "|---|---|---|---|---|---|",
                  f"| pre-attack (erased, original prompts) | {_rate(m['pre_attack'])} | {m['effective_prompts']} "
                  f"| 0 | {m['effective_prompts']} | |"]
        for name, a in m["attacks"].items():
            lines.append(f"| {name} | {_rate(a)} | {a['attacked_prompts']} | {a['gradient_steps']} "
                         f"| {a['generations']} | {a['wall_s']:.1f} |")
        lines.append(f"| **union** | {_rate(m['union'])} | {m['effective_prompts']} | "
                     f"{m['budget']['gradient_steps']} | {m['budget']['generations']} | |")
        notes = [f"{name}: {n}" for name, a in m["attacks"].items() for n in a["notes"]]
        lines += [""] + [f"- {n}" for n in notes]
        grid = metrics.get("grids", {}).get(concept)
        if grid:
            lines += ["", f"![{concept}]({grid['file']})", "",
                      "Columns: " + "; ".join(f"`{r['prompt']}` (seed {r['seed']})" for r in grid["rows"])]
        lines += cost_curve_lines(concept, m.get("cost_curves") or {}, metrics.get("cost_curve_plots", {}).get(concept))
        lines.append("")
    lines += ["## Robustness gates", "", "| gate | status | detail |", "|---|---|---|"]
    lines += [f"| {c['gate']} ({c['concept']}) | {c['status']} | {c['reason']} |" for c in gates["checks"]]
    lines += threat_model_lines(gates.get("threat_models", {}))
    return "\n".join(lines) + "\n"


def threat_model_lines(threat_models: dict[str, Any]) -> list[str]:
    """A table of the threat models' verdicts (the attacks each counts, and why it failed or is unmeasured)."""
    if not threat_models:
        return []
    lines = ["", "## Threat models", "", "How the model ships decides which attacks count "
             "(`params/gates.yaml` `robustness.threat_models`).", "",
             "| threat model | attacks | verdict | detail |", "|---|---|---|---|"]
    for name, t in threat_models.items():
        detail = "; ".join(t["failed"] + ([f"not run: {', '.join(t['missing'])}"] if t["missing"] else [])) or "–"
        lines.append(f"| {name} | {', '.join(t['attacks'])} | **{t['verdict']}** | {detail} |")
    return lines


def write_redteam_report(metrics: dict[str, Any], artefacts: dict[str, dict[str, Any]], out_dir: Path,
                         grid_images: int = 8) -> None:
    """Grids first, then ``metrics.json`` (gaining a ``grids`` entry) and ``report.md``, all atomically."""
    out_dir = Path(out_dir)
    metrics["grids"] = {c: write_attack_grid(c, art, out_dir, grid_images) for c, art in artefacts.items()
                        if art["rows"]}
    metrics["cost_curve_plots"] = {
        concept: f"{GRIDS_DIR}/{concept_stem(concept, prefix='cost-')}.png"
        for concept, m in metrics["redteam"].items() if m.get("cost_curves")}
    for concept, file in metrics["cost_curve_plots"].items():
        cost_curve_plot(concept, metrics["redteam"][concept]["cost_curves"], out_dir / file)
    write_json_atomic(out_dir / "metrics.json", metrics)
    write_text_atomic(out_dir / "report.md", render_markdown(metrics))
