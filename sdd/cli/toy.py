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
    """Train the toy world (tokenizer, VAE, text encoder + UNet, judge) from a seed."""
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
    """Print the toy model's judged per-colour and per-shape rates on held-out captions."""
    from rich.console import Console
    from rich.table import Table

    from sdd.toy.quality import check_world

    with exit_on_error():
        q = check_world(world_dir, samples, seed)
    table = Table(title=f"toy base model, held-out captions ({q['n']} images)")
    table.add_column("asked for")
    table.add_column("judged correct", justify="right")
    for name, rate in {**q["per_color"], **q["per_shape"]}.items():
        table.add_row(name, f"{rate:.1%}")
    table.add_row("[b]all colours[/b]", f"[b]{q['color_rate']:.1%}[/b]")
    table.add_row("[b]all shapes[/b]", f"[b]{q['shape_rate']:.1%}[/b]")
    Console().print(table)

