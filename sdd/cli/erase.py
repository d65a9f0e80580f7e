"""``sdd erase``: erase concepts from a model with SDD (:func:`sdd.erasure.erase`)."""

from __future__ import annotations

from pathlib import Path

import typer

from sdd.cli.common import active_base_model, exit_on_error
from sdd.cli.types import InputFile, OutputDir, Text
from sdd.errors import ConfigError


def _erasure_concepts(model: str, names: list[str], prompts: Path | None):
    """Concepts from --prompts (a prepared training set) or --concept names, never both."""
    from sdd.prompts import Concept, concepts_from_prompt_set, default_concepts, read_prompt_set

    if prompts is not None and names:
        raise ConfigError("--concept and --prompts both given; the training set already names its concepts")
    if prompts is not None:
        return [Concept(c, p) for c, p in concepts_from_prompt_set(read_prompt_set(prompts)).items()]
    if not names:
        raise ConfigError("no concept given; pass --concept NAME (repeatable) or --prompts TRAIN_SET")
    return default_concepts(model, names)




def erase(
    model: str | None = typer.Option(None, "--model", parser=Text(),
                                     help="'toy', a diffusers folder or a Hugging Face Hub id "
                                     "[the base_model of the active set in params/concepts.yaml]."),
    concept: list[str] = typer.Option([], "--concept", help="A concept to erase; repeat for several."),
    out: Path = typer.Option(..., "--out", parser=OutputDir(),
                             help="Output folder (model/, patch, manifest, loss.csv)."),
    prompts: Path | None = typer.Option(None, "--prompts", parser=InputFile(),
                                        help="Training prompt set from `sdd prompts build` "
                                        "(its concepts and prompts; instead of --concept)."),
    config: Path | None = typer.Option(None, "--config", parser=InputFile(),
                                       help="Distillation settings [params/distill.yaml]."),
    steps: int | None = typer.Option(None, "--steps", help="Override the number of optimizer steps."),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT/checkpoint if there is one."),
) -> None:
    """Erase concepts from a model with SDD (safe self-distillation)."""
    from safetensors import SafetensorError

    from sdd.config import PARAMS_DIR, DistillConfig, load_model
    from sdd.erasure import NonFiniteLossError
    from sdd.erasure import erase as run_erase
    from sdd.layout import CHECKPOINT_DIR

    with exit_on_error():
        try:
            model = model or active_base_model()
            cfg = load_model(DistillConfig, config or PARAMS_DIR / "distill.yaml", {"steps": steps})
            concepts = _erasure_concepts(model, concept, prompts)
            result = run_erase(model, concepts, out, cfg, resume=resume, progress=True)
        except NonFiniteLossError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(1) from None
        except (OSError, SafetensorError) as e:  # disk full, folder gone or read-only mid-run
            from sdd.config import one_line

            what = (f"{e.filename} ({e.strerror or type(e).__name__})" if isinstance(e, OSError) and e.filename
                    else f"({e.strerror or type(e).__name__})" if isinstance(e, OSError) else f"({e})")
            typer.echo(one_line(f"error: cannot write outputs {what}; no file in {out} was left half-written"),
                       err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            saved = out / CHECKPOINT_DIR
            hint = f"; checkpoint in {saved}, rerun with --resume to continue" if saved.exists() else ""
            typer.echo(f"interrupted{hint}", err=True)
            raise typer.Exit(130) from None
    loss = f"{result.final_loss:.4g}" if result.final_loss is not None else "n/a"
    typer.echo(f"erased {', '.join(c.name for c in concepts)} in {result.steps} steps (final loss {loss}); "
               f"model in {result.model_dir}")
