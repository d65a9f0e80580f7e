"""The main job end to end on the embedded toy world: ``make demo`` (``python -m flows.demo``).

1. loads the committed toy world and prints its judged per-colour / per-shape rates and what its
   text encoder is;
2. runs the ``erase-concepts`` Prefect flow for the active concept set of ``params/concepts.yaml``
   with the settings of ``params/`` (prompt sets -> SDD distillation -> evaluation -> red team ->
   gates -> MLflow registration), as the deployments run it, on a local
   Prefect API (a temporary one unless ``PREFECT_API_URL`` points at a server, e.g. after
   ``sdd stack up``) and the local MLflow store (``.sdd/mlflow.db``);
3. prints the gate verdicts, each stage's wall time and the registry's versions.

No network and no GPU are needed. Re-running it reuses every finished stage.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

# The temporary Prefect API starts in a subprocess; on a busy 2-core laptop it needs more than the
# default 20 s.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")

from sdd.config import load_concept_sets


def print_toy_world_rates(samples_per_pair: int = 4) -> None:
    from sdd.toy.quality import check_world, load_world

    q, _ = check_world(load_world(), samples_per_pair=samples_per_pair)
    rates = {**q["per_color"], **q["per_shape"], "all colours": q["color_rate"], "all shapes": q["shape_rate"],
             "held-out synonyms": q["held_out_synonym_rate"]}
    print(f"   judged correct over {q['n']} images: "
          + ", ".join(f"{k} {v:.1%}" for k, v in rates.items() if v is not None))
    geo = q["text_encoder"]
    print(f"   text encoder: the mini-CLIP's text tower, {geo['layers']} layers; hidden-state cosine of "
          f"synonyms {geo['mean_synonym']['prompt']:.2f}, of different colours "
          f"{geo['mean_different_colour']['prompt']:.2f}; empty prompt's norm {geo['empty_prompt_norm']:.1f}")


def print_versions(name: str) -> None:
    from sdd.registry import list_versions

    for r in list_versions(name):
        aliases = f" [{', '.join(r.aliases)}]" if r.aliases else ""
        print(f"   {r.name} version {r.version}: concepts {r.concepts}, gates {r.gates}{aliases}, created {r.created}")


def print_cost_curves(metrics: dict) -> None:
    """The open-weights attacks' success at each budget, erased vs base model (the report has the plot)."""
    for concept, m in ((metrics.get("redteam") or {}).get("concepts") or {}).items():
        for attack, curve in (m.get("cost_curves") or {}).items():
            for model in ("erased", "base"):
                points = curve.get(model)
                if points:
                    print(f"   cost curve {concept} {attack} ({model}): " + ", ".join(
                        f"{b} steps {100 * points[str(b)]['rate']:.0f} %" for b in curve["budgets"]))


def print_aliases(name: str, version: int) -> None:
    """Which aliases the new version may hold, each by the threat model it is bound to (params/registry.yaml)."""
    from sdd.config import load_registry_config
    from sdd.registry import alias_refusals, list_versions

    cfg = load_registry_config()
    [row] = [r for r in list_versions(name, cfg) if r.version == version]
    for alias, why in alias_refusals(row.tags, cfg, name).items():
        needs = cfg.threat_model_of(alias)
        print(f"   may hold '{alias}' ({f'threat model {needs}' if needs else 'every gate'}): "
              + ("yes" if why is None else f"no, {why}"))


def main() -> None:
    print("== 1. the toy world's base model, judged on held-out captions")
    print_toy_world_rates()

    active = load_concept_sets().active_set
    print(f"\n== 2. erase-concepts flow: erase {active.concepts} from '{active.base_model}' (params/distill.yaml)")
    from flows.erase import erase_concepts

    # Plain SDD, as the deployments run it. Held-out leakage of both it and the robust preset
    # (params/presets/robust.yaml) spans ~2-8 % over seeds, around the 5 % safety gate; at seed 0
    # this one has passed on CI in every landed run, the preset failed once (docs/robust-erasure.md).
    result = erase_concepts(concepts=active.concepts, base_model=active.base_model)

    evaluations = sorted(Path(result["run_dir"]).glob("eval-*/metrics.json"), key=lambda p: p.stat().st_mtime)
    metrics = json.loads(evaluations[-1].read_text()) if evaluations else None
    print(f"\n== 3. verdict: {result['verdict']}; stages: {result['stages']}")
    print("   wall time: " + ", ".join(f"{stage} {s:.0f} s" for stage, s in result["wall_s"].items()))
    if metrics:
        for name, m in metrics["concepts"].items():
            print(f"   {name}: presence {m['base']['rate']:.1%} -> {m['erased']['rate']:.1%}")
        for reason in metrics["gates"]["failed"]:
            print(f"   gate failed: {reason}")
        for name, t in ((metrics.get("redteam") or {}).get("threat_models") or {}).items():
            print(f"   threat model {name} ({', '.join(t['attacks'])}): {t['verdict']}")
        print_cost_curves(metrics)
    reg = result["registration"]
    print(f"   registered {reg['name']} version {reg['version']} (alias: {reg['alias'] or 'none'})")
    print_aliases(reg["name"], reg["version"])
    print(f"   report: {result['run_dir']}  (Markdown artifact 'erasure-report' in Prefect)\n")
    print_versions(reg["name"])


if __name__ == "__main__":
    main()
