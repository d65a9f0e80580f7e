"""``sdd evaluate`` and ``sdd plots``: measure an erased model against its base, plot the results
(:mod:`sdd.evaluation`, :mod:`sdd.plots`)."""

from __future__ import annotations

from pathlib import Path

import typer

from sdd.cli.common import active_base_model, echo_verdict, exit_on_error
from sdd.cli.types import InputFile, InputPath, OutputDir, Text


def evaluate_cmd(
    model: str = typer.Option(..., "--model", parser=Text(),
                              help="The erased model: a local diffusers folder (or hub id)."),
    prompts: Path = typer.Option(..., "--prompts", parser=InputPath(),
                                 help="A prompt file, or a `sdd prompts build` folder."),
    out: Path = typer.Option(..., "--out", parser=OutputDir(),
                             help="Output folder (metrics.json, report.md, grids, images)."),
    base: str | None = typer.Option(None, "--base", parser=Text(),
                                    help="The base model: 'toy', a local folder or a hub id "
                                    "[the base_model of the active set in params/concepts.yaml]."),
    params: Path | None = typer.Option(None, "--params", parser=InputFile(),
                                       help="Evaluation settings [params/eval.yaml]."),
    gates: Path | None = typer.Option(None, "--gates", parser=InputFile(),
                                      help="Gate thresholds [params/gates.yaml]."),
    base_images: Path | None = typer.Option(None, "--base-images", parser=OutputDir(),
                                            help="Share base-model images across runs [OUT/images/base]."),
    strict: bool = typer.Option(False, "--strict", help="Exit with status 1 when a gate fails."),
) -> None:
    """Measure erasure and quality of MODEL against BASE, apply the gates, write a report."""
    from sdd.config import PARAMS_DIR, load_eval_config, load_gates_config
    from sdd.evaluation import build_judge, evaluate
    from sdd.models import load_pipeline
    from sdd.prompts import load_prompts
    from sdd.storage import check_writable_dir

    with exit_on_error():
        base = base or active_base_model()
        cfg = load_eval_config(params or PARAMS_DIR / "eval.yaml")
        gate_cfg = load_gates_config(gates or PARAMS_DIR / "gates.yaml")
        prompt_set = load_prompts(prompts)
        check_writable_dir(out)  # before loading two models, not at the first image
        if base_images is not None:
            check_writable_dir(base_images)
        judge = build_judge(cfg.judge)
        metrics = evaluate(load_pipeline(base), load_pipeline(model), prompt_set, judge, cfg, gate_cfg, out,
                           base_name=base, erased_name=model, base_images=base_images)
    for name, m in metrics["concepts"].items():
        b, e = m["base"]["rate"], m["erased"]["rate"]
        typer.echo(f"{name}: presence {b:.1%} -> {e:.1%} over {m['n']} images")
    echo_verdict(metrics, "verdict", out, strict)



def plots_cmd(
    loss: Path = typer.Option(Path("data/erased/loss.csv"), "--loss", parser=InputFile(),
                              help="loss.csv of `sdd erase`."),
    rates: Path = typer.Option(Path("data/eval/rates.csv"), "--rates", parser=InputFile(),
                               help="rates.csv of `sdd evaluate`."),
    out: Path = typer.Option(Path("data/plots"), "--out", parser=OutputDir(),
                             help="Output folder (loss.png, rates.png)."),
) -> None:
    """Render the loss curve and the per-concept base/erased rates as PNGs (viewable offline)."""
    from sdd.plots import write_plots

    with exit_on_error():
        written = write_plots(loss, rates, out)
    for path in written.values():
        typer.echo(f"wrote {path}")

