"""``sdd prompts build``: the train / eval / benign prompt sets of some concepts (:mod:`sdd.prompts`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer

from sdd.cli.common import exit_on_error
from sdd.cli.types import OutputDir, PathOrURI, Text, reject_options_of_other_modes

prompts_app = typer.Typer(help="Prompt sets for erasure and evaluation.", no_args_is_help=True)


#: The options of `sdd prompts build` that mean something for one --model-kind only.
PROMPTS_BUILD_MODES = {"seeds_per_prompt": "toy", "i2p": "real", "i2p_category": "real", "i2p_limit": "real",
                       "coco": "real", "benign_limit": "real"}


@prompts_app.command("build")
def prompts_build(
    ctx: typer.Context,
    concept: list[str] = typer.Option([], "--concept", help="A concept to erase; repeat for several "
                                      "[the active set of params/concepts.yaml]."),
    out: Path = typer.Option(Path("data/prompts"), "--out", parser=OutputDir(),
                             help="Output folder (sets + index.json)."),
    model_kind: Literal["toy", "real"] = typer.Option("toy", "--model-kind",
                                   help="toy (toy-world prompts) or real."),
    seeds_per_prompt: int = typer.Option(2, "--seeds-per-prompt", min=1, max=1000,
                                         help="Toy: seeds per eval prompt."),
    i2p: str | None = typer.Option(None, "--i2p", parser=PathOrURI(),
                                   help="Real: I2P CSV (path or s3:// URI) for eval prompts."),
    i2p_category: list[str] = typer.Option([], "--i2p-category", parser=Text(),
                                           help="Real: I2P categories for every concept [nudity -> sexual]."),
    i2p_limit: int | None = typer.Option(None, "--i2p-limit", min=1,
                                         help="Real: keep at most this many I2P rows."),
    coco: str | None = typer.Option(None, "--coco", parser=PathOrURI(),
                                    help="Real: COCO captions (json or txt; path or s3://)."),
    benign_limit: int = typer.Option(1000, "--benign-limit", min=1, help="Real: number of COCO captions."),
) -> None:
    """Build the train / eval / benign prompt sets for some concepts."""
    from sdd.prompts import build_prompt_sets

    with exit_on_error():
        reject_options_of_other_modes(ctx, "--model-kind", model_kind, PROMPTS_BUILD_MODES)
        if not concept:
            from sdd.config import load_concept_sets

            concept = load_concept_sets().active_set.concepts
        categories = {c: i2p_category for c in concept} if i2p_category else None
        index = build_prompt_sets(concept, model_kind, out, seeds_per_prompt=seeds_per_prompt, i2p=i2p,
                                  i2p_categories=categories, i2p_limit=i2p_limit, coco=coco,
                                  benign_limit=benign_limit)
    for kind, entry in index["sets"].items():
        typer.echo(f"{kind:6s} {entry['rows']:6d} rows  sha256 {entry['sha256'][:16]}  {out / entry['file']}")

