"""``sdd redteam``: attack an erased model and gate its attack success rates (:mod:`sdd.redteam`)."""

from __future__ import annotations

from pathlib import Path

import typer

from sdd.cli.common import active_base_model, echo_verdict, exit_on_error
from sdd.cli.types import InputDir, InputFile, InputPath, OutputDir, Text
from sdd.errors import ConfigError


def redteam_cmd(
    model: str = typer.Option(..., "--model", parser=Text(),
                              help="The erased model: a local diffusers folder (or hub id)."),
    prompts: Path = typer.Option(..., "--prompts", parser=InputPath(),
                                 help="A prompt file, or a `sdd prompts build` folder."),
    out: Path | None = typer.Option(None, "--out", parser=OutputDir(),
                                    help="Output folder (metrics.json, report.md, grids) [EVAL/redteam with --eval]."),
    base: str | None = typer.Option(None, "--base", parser=Text(),
                                    help="The base model: 'toy', a local folder or a hub id "
                                    "[the base_model of the active set in params/concepts.yaml]."),
    eval_dir: Path | None = typer.Option(None, "--eval", parser=InputDir(),
                                         help="An evaluation folder (`sdd evaluate --out`) whose "
                                         "metrics.json and verdict get the robustness gates."),
    config: Path | None = typer.Option(None, "--config", parser=InputFile(),
                                       help="Attacks and budgets [params/redteam.yaml]."),
    gates: Path | None = typer.Option(None, "--gates", parser=InputFile(),
                                      help="Gate thresholds (robustness) [params/gates.yaml]."),
    params: Path | None = typer.Option(None, "--params", parser=InputFile(),
                                       help="Judge settings [params/eval.yaml]."),
    strict: bool = typer.Option(False, "--strict", help="Exit with status 1 when a robustness gate fails."),
) -> None:
    """Attack MODEL (transfer prompts, adversarial tokens, concept inversion) and gate its attack success rates."""
    from sdd.config import PARAMS_DIR, RedteamConfig, load_eval_config, load_gates_config, load_model
    from sdd.evaluation import build_judge
    from sdd.layout import METRICS_FILE, REDTEAM_DIR
    from sdd.models import load_pipeline
    from sdd.prompts import load_prompts
    from sdd.redteam import fold_into_evaluation, run_redteam
    from sdd.storage import check_writable_dir

    with exit_on_error():
        if eval_dir is not None and not (eval_dir / METRICS_FILE).is_file():
            raise ConfigError(f"--eval {eval_dir}: no {METRICS_FILE}; pass the --out folder of `sdd evaluate`")
        if out is None and eval_dir is None:
            raise ConfigError("--out missing; pass --out DIR (or --eval EVAL_DIR to write EVAL_DIR/redteam)")
        out = out if out is not None else eval_dir / REDTEAM_DIR
        base = base or active_base_model()
        cfg = load_model(RedteamConfig, config or PARAMS_DIR / "redteam.yaml")
        gate_cfg = load_gates_config(gates or PARAMS_DIR / "gates.yaml").robustness
        judge = build_judge(load_eval_config(params or PARAMS_DIR / "eval.yaml").judge)
        prompt_set = load_prompts(prompts)
        check_writable_dir(out)  # before loading two models and attacking
        metrics = run_redteam(load_pipeline(base), load_pipeline(model), prompt_set, judge, cfg, out,
                              gates=gate_cfg, base_name=base, erased_name=model,
                              log=lambda line: typer.echo(line, err=True))
        if eval_dir is not None:
            fold_into_evaluation(eval_dir, metrics, out)
    for concept, m in metrics["redteam"].items():
        asr = ", ".join(f"{name} {a['rate']:.1%}" if a["rate"] is not None else f"{name} n/a"
                        for name, a in m["attacks"].items())
        union = f"{m['union']['rate']:.1%}" if m["union"]["rate"] is not None else "n/a"
        typer.echo(f"{concept}: {m['effective_prompts']} effective prompts; ASR {asr}; union {union}")
    echo_verdict(metrics, "robustness verdict", out, strict)

