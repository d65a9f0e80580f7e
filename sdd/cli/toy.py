"""``sdd toy build`` and ``sdd toy check``: the embedded toy world (:mod:`sdd.toy`)."""

from __future__ import annotations

from pathlib import Path

import typer

from sdd.cli.common import exit_on_error
from sdd.cli.types import InputDir, InputFile, OutputDir

toy_app = typer.Typer(help="The embedded toy world.", no_args_is_help=True)


@toy_app.command("build")
def toy_build(
    out: Path = typer.Option(None, "--out", parser=OutputDir(),
                             help="Where to write the world [the packaged default]."),
    config: Path | None = typer.Option(None, "--config", parser=InputFile(),
                                       help="Toy-world settings [params/toy.yaml]."),
    seed: int | None = typer.Option(None, "--seed", help="Override the build seed."),
) -> None:
    """Train the toy world (tokenizer, mini-CLIP, VAE, UNet, judge) from a seed."""
    from sdd.config import PARAMS_DIR, ToyConfig, load_model
    from sdd.toy import DEFAULT_TOY_DIR
    from sdd.toy.train import build_toy_world

    with exit_on_error():
        cfg = load_model(ToyConfig, config or PARAMS_DIR / "toy.yaml", {"seed": seed})
    report = build_toy_world(out or DEFAULT_TOY_DIR, cfg)
    typer.echo(f"built in {report['timings']['total_s']:.0f} s; judge accuracy "
               f"colour {report['judge']['color_accuracy']:.3f}, shape {report['judge']['shape_accuracy']:.3f}")


@toy_app.command("check")
def toy_check(
    world_dir: Path = typer.Option(None, "--world", parser=InputDir(),
                                   help="Toy-world folder [the packaged default]."),
    samples: int = typer.Option(8, "--samples", min=1, max=10_000, help="Images per (colour, shape) pair."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of the captions and the sampling noise."),
) -> None:
    """Print what kind of world the toy is: judged rates on held-out captions, its text encoder's
    depth and geometry, and how often the CLIP zero-shot judge agrees with the toy judge."""
    from rich.console import Console
    from rich.table import Table

    from sdd.evaluation.judges import toy_clip_agreement
    from sdd.toy.quality import check_world, load_world

    with exit_on_error():
        toy = load_world(world_dir)
        q, images = check_world(toy, samples, seed)
        agreement = toy_clip_agreement(images, toy.judge, str(toy.clip_dir)) if toy.clip_dir else None
    table = Table(title=f"toy base model, held-out captions ({q['n']} images)")
    table.add_column("asked for")
    table.add_column("judged correct", justify="right")
    for name, rate in {**q["per_color"], **q["per_shape"]}.items():
        table.add_row(name, f"{rate:.1%}")
    for name, rate in q["per_held_out_synonym"].items():
        table.add_row(f"{name} (held-out synonym)", f"{rate:.1%}")
    table.add_row("[b]all colours[/b]", f"[b]{q['color_rate']:.1%}[/b]")
    table.add_row("[b]all shapes[/b]", f"[b]{q['shape_rate']:.1%}[/b]")
    if q["held_out_synonym_rate"] is not None:
        table.add_row("[b]held-out synonyms[/b]", f"[b]{q['held_out_synonym_rate']:.1%}[/b]")
    console = Console()
    console.print(table)
    print_text_geometry(console, q["text_encoder"])
    if agreement:
        console.print(f"CLIP zero-shot judge (the world's mini-CLIP) agrees with the toy judge on "
                      f"colour {agreement['colour']:.1%}, shape {agreement['shape']:.1%} ({agreement['n']} images)")


def print_text_geometry(console, geo: dict) -> None:
    from rich.table import Table

    text = Table(title=f"text encoder: {geo['layers']} transformer layers, width {geo['width']}, causal attention")
    text.add_column("hidden-state cosine")
    text.add_column("end token", justify="right")
    text.add_column("whole prompt", justify="right")
    for pair, c in {**geo["synonyms"], **geo["different_colours"]}.items():
        text.add_row(pair, f"{c['end']:.3f}", f"{c['prompt']:.3f}")
    text.add_row("[b]mean, synonyms[/b]", f"[b]{geo['mean_synonym']['end']:.3f}[/b]",
                 f"[b]{geo['mean_synonym']['prompt']:.3f}[/b]")
    text.add_row("[b]mean, different colours[/b]", f"[b]{geo['mean_different_colour']['end']:.3f}[/b]",
                 f"[b]{geo['mean_different_colour']['prompt']:.3f}[/b]")
    console.print(text)
    console.print(f"empty prompt's hidden-state norm {geo['empty_prompt_norm']:.1f} "
                  f"('a red circle': {geo['caption_norm']:.1f})")
