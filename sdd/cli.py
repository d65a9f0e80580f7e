"""The ``sdd`` command line (typer). Each command is a thin shell over library functions.

Errors (:mod:`sdd.errors`) are printed as one line, never as a traceback, with one exit status per
kind (:func:`exit_on_error`): 2 for what the user must fix, 1 for what may pass on a rerun. Option
values are checked while the command line is parsed, before any work (:mod:`sdd.cli_types`).
Command groups of other packages join through the ``sdd.cli`` entry point group (``sdd concepts``
comes from :mod:`flows.events`), so the library never imports the orchestration layer.
"""

from __future__ import annotations

import errno
import importlib.metadata
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import typer

from sdd.cli_types import (
    InputDir,
    InputFile,
    InputPath,
    OneLineErrors,
    OutputDir,
    PathOrURI,
    Text,
    reject_options_of_other_modes,
)
from sdd.errors import ConfigError, SddError, exit_code

if TYPE_CHECKING:
    from rich.table import Table
    from rich.text import Text as RichText

    from sdd.registry.promotion import VersionRow

app = typer.Typer(cls=OneLineErrors, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Safe self-Distillation of Diffusion models: erase concepts, measure, register.")


#: Write failures of the machine, not of the input: a full disk or quota, a read-only or broken file system.
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO}


@contextmanager
def exit_on_error() -> Iterator[None]:
    """An :class:`~sdd.errors.SddError` becomes ``error: <one line>`` and its exit status (2 or 1);
    so does a write the file system refused (disk full...): outputs are written atomically, so what
    was finished is kept and a rerun continues."""
    try:
        yield
    except SddError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(exit_code(e)) from None
    except OSError as e:
        if e.errno not in STORAGE_ERRNOS:
            raise
        from sdd.config import one_line

        where = f" {e.filename}" if e.filename else ""
        typer.echo(one_line(f"error: cannot write{where} ({e.strerror}); free space or fix the file system, "
                            f"then rerun: finished outputs are kept"), err=True)
        raise typer.Exit(1) from None


toy_app = typer.Typer(help="The embedded toy world.", no_args_is_help=True)
app.add_typer(toy_app, name="toy")


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


@app.command()
def erase(
    model: str = typer.Option(..., "--model", parser=Text(),
                              help="'toy', a diffusers folder or a Hugging Face Hub id."),
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



# --- prompt sets and evaluation (sdd/prompts.py, sdd/evaluate.py) ---------------------------------

prompts_app = typer.Typer(help="Prompt sets for erasure and evaluation.", no_args_is_help=True)
app.add_typer(prompts_app, name="prompts")


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


def echo_verdict(metrics: dict, label: str, out: Path, strict: bool) -> None:
    """The failed gates and the verdict of ``metrics``; with ``strict``, exit 1 unless it passed."""
    for reason in metrics["gates"]["failed"]:
        typer.echo(f"gate failed: {reason}")
    typer.echo(f"{label}: {metrics['verdict'].upper()}; report in {out / 'report.md'}")
    if strict and metrics["verdict"] != "pass":
        raise typer.Exit(1)


@app.command("evaluate")
def evaluate_cmd(
    model: str = typer.Option(..., "--model", parser=Text(),
                              help="The erased model: a local diffusers folder (or hub id)."),
    prompts: Path = typer.Option(..., "--prompts", parser=InputPath(),
                                 help="A prompt file, or a `sdd prompts build` folder."),
    out: Path = typer.Option(..., "--out", parser=OutputDir(),
                             help="Output folder (metrics.json, report.md, grids, images)."),
    base: str = typer.Option("toy", "--base", parser=Text(),
                             help="The base model: 'toy', a local folder or a hub id."),
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


@app.command("redteam")
def redteam_cmd(
    model: str = typer.Option(..., "--model", parser=Text(),
                              help="The erased model: a local diffusers folder (or hub id)."),
    prompts: Path = typer.Option(..., "--prompts", parser=InputPath(),
                                 help="A prompt file, or a `sdd prompts build` folder."),
    out: Path | None = typer.Option(None, "--out", parser=OutputDir(),
                                    help="Output folder (metrics.json, report.md, grids) [EVAL/redteam with --eval]."),
    base: str = typer.Option("toy", "--base", parser=Text(),
                             help="The base model: 'toy', a local folder or a hub id."),
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
    from sdd.config import (
        PARAMS_DIR,
        RedteamConfig,
        load_eval_config,
        load_gates_config,
        load_model,
    )
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


@app.command("plots")
def plots_cmd(
    loss: Path = typer.Option(Path("data/erased/loss.csv"), "--loss", parser=InputFile(),
                              help="loss.csv of `sdd erase`."),
    rates: Path = typer.Option(Path("data/eval/rates.csv"), "--rates", parser=InputFile(),
                               help="rates.csv of `sdd evaluate`."),
    out: Path = typer.Option(Path("data/plots"), "--out", parser=OutputDir(),
                             help="Output folder (loss.png, rates.png)."),
) -> None:
    """Render the loss curve and the per-concept base/erased rates as PNGs (viewable offline)."""
    from sdd.evaluation import write_plots

    with exit_on_error():
        written = write_plots(loss, rates, out)
    for path in written.values():
        typer.echo(f"wrote {path}")


# --- tracking and model registry (sdd/registry.py) ------------------------------------------------


def _registry_config(params: Path | None):
    from sdd.config import PARAMS_DIR, load_registry_config

    return load_registry_config(params or PARAMS_DIR / "registry.yaml")


@app.command("register")
def register_cmd(
    run: Path = typer.Option(..., "--run", parser=InputDir(), help="An erasure output folder (`sdd erase --out`)."),
    eval_dir: Path = typer.Option(..., "--eval", parser=InputDir(),
                                  help="Its evaluation folder (`sdd evaluate --out`)."),
    name: str | None = typer.Option(None, "--name", parser=Text(),
                                    help="Registered model name [registry.yaml model_name]."),
    params: Path | None = typer.Option(None, "--params", parser=InputFile(),
                                       help="Registry settings [params/registry.yaml]."),
    tracking_uri: str | None = typer.Option(None, "--tracking-uri", parser=Text(),
                                            help="MLflow tracking URI [$MLFLOW_TRACKING_URI, else local]."),
) -> None:
    """Log an erasure and its evaluation to MLflow and register the model (alias candidate if gates pass)."""
    from sdd.registry import register

    with exit_on_error():
        reg = register(run, eval_dir, _registry_config(params), name=name, tracking_uri=tracking_uri)
    typer.echo(f"run {reg.run_id}")
    if reg.reused:
        typer.echo(f"already registered: {reg.name} version {reg.version} holds this erasure and evaluation "
                   f"(gates {reg.gates.tag})")
    else:
        typer.echo(f"registered {reg.name} version {reg.version} (gates {reg.gates.tag})")
    typer.echo(f"alias: {reg.alias or 'none'}")


@app.command("promote")
def promote_cmd(
    name: str = typer.Argument(..., parser=Text(), help="Registered model name."),
    version: int = typer.Argument(..., min=1, help="Model version to promote."),
    alias: str = typer.Option("production", "--alias", parser=Text(), help="Alias to move to VERSION."),
    force: bool = typer.Option(False, "--force", help="Promote even though the version failed its gates."),
    reason: str | None = typer.Option(None, "--reason", parser=Text(),
                                      help="Why (required with --force; recorded)."),
    params: Path | None = typer.Option(None, "--params", parser=InputFile(),
                                       help="Registry settings [params/registry.yaml]."),
    tracking_uri: str | None = typer.Option(None, "--tracking-uri", parser=Text(), help="MLflow tracking URI."),
) -> None:
    """Point an alias (default: production) at a model version; failed gates need --force --reason."""
    from sdd.registry import promote

    with exit_on_error():
        done = promote(name, version, alias, force=force, reason=reason, cfg=_registry_config(params),
                       tracking_uri=tracking_uri)
    before = f" (was version {done.previous})" if done.previous is not None else ""
    forced = " [forced]" if done.forced else ""
    typer.echo(f"{done.name}@{done.alias} -> version {done.version}{before}{forced}")


@app.command("models")
def models_cmd(
    name: str | None = typer.Argument(None, parser=Text(), help="Registered model name [all models]."),
    params: Path | None = typer.Option(None, "--params", parser=InputFile(),
                                       help="Registry settings [params/registry.yaml]."),
    tracking_uri: str | None = typer.Option(None, "--tracking-uri", parser=Text(), help="MLflow tracking URI."),
    check: bool = typer.Option(False, "--check", help="Check that each protected alias (params/registry.yaml) "
                               "is on a version the promotion rule allows; exit 1 if not (reverted when "
                               "guard.revert_on_check is true)."),
) -> None:
    """List registered model versions: concepts, gate verdict, aliases."""
    from rich.console import Console

    from sdd.registry import list_models, list_versions

    if check:
        return _check_protected_aliases(name, params, tracking_uri)
    with exit_on_error():
        cfg = _registry_config(params)
        names = [name] if name else list_models(cfg, tracking_uri=tracking_uri)
        rows = [r for n in names for r in list_versions(n, cfg, tracking_uri=tracking_uri)]
    console = Console()
    console.print(versions_table(rows, console.width))


def _check_protected_aliases(name: str | None, params: Path | None, tracking_uri: str | None) -> None:
    """``sdd models --check``: one line per protected alias that breaks the promotion rule, exit 1."""
    from sdd.registry.guard import check_aliases

    with exit_on_error():
        cfg = _registry_config(params)
        found = check_aliases(cfg, tracking_uri=tracking_uri, names=[name] if name else None)
    for outcome in found:
        typer.echo(outcome.line())
    if found:
        raise typer.Exit(1)
    typer.echo(f"protected aliases ({', '.join(cfg.protected_aliases)}) all on versions the promotion rule allows")


#: The columns of ``sdd models``: True for identifiers, which are never cut; the others wrap.
VERSION_COLUMNS = {"model": True, "version": True, "concepts": False, "gates": False, "aliases": True,
                   "created (UTC)": True, "run": True}
COLUMN_GAP = 2  # the padding between two columns of the table below


def versions_table(rows: list[VersionRow], width: int) -> Table:
    """A rich Table of registered versions for a ``width``-column terminal.

    Identifiers stay on one line when they all fit beside the longest word of each text column;
    otherwise they fold onto more lines, so no character of a name, date or alias is ever lost.
    """
    from rich import box
    from rich.table import Table

    cells = [_version_cells(r) for r in rows]
    whole = _narrowest(cells) <= width
    versions = f"{len(rows)} version" + ("" if len(rows) == 1 else "s")
    table = Table(title=f"registered models ({versions})", box=box.SIMPLE_HEAD, show_edge=False,
                  pad_edge=False, collapse_padding=True)
    for column, identifier in VERSION_COLUMNS.items():
        table.add_column(column, justify="right" if column == "version" else "left",
                         no_wrap=identifier and whole, overflow="fold")
    for row in cells:
        table.add_row(*row)
    return table


def _version_cells(r: VersionRow) -> list[RichText]:
    """One version's cells: aliases one per line, concepts spaced so they wrap, the date to the minute."""
    import datetime as dt

    from rich.text import Text

    created = dt.datetime.fromisoformat(r.created).strftime("%Y-%m-%d %H:%M") if r.created else ""
    gates = Text(r.gates, style="green" if r.gates == "passed" else "red") + (" (forced)" if r.forced else "")
    concepts = ", ".join(c.strip() for c in r.concepts.split(","))
    return [Text(r.name), Text(str(r.version)), Text(concepts), gates, Text("\n".join(r.aliases)),
            Text(created), Text((r.run_id or "")[:8])]


def _narrowest(cells: list[list[RichText]]) -> int:
    """Columns needed to show every identifier whole and each text column's longest word."""
    from rich.cells import cell_len

    widths = []
    for i, (header, identifier) in enumerate(VERSION_COLUMNS.items()):
        lines = [header] + [line for row in cells for line in row[i].plain.splitlines()]
        parts = lines if identifier else [w for line in lines for w in line.split()]
        widths.append(max(map(cell_len, parts)))
    return sum(widths) + COLUMN_GAP * (len(widths) - 1)


# --- the local orchestration stack (sdd/stack.py) ------------------------------------------------

stack_app = typer.Typer(help="The local Prefect + MLflow stack (servers, work pools, workers).",
                        no_args_is_help=True)
app.add_typer(stack_app, name="stack")


@stack_app.command("up")
def stack_up(
    prefect_port: int = typer.Option(4200, "--prefect-port", min=1, max=65535,
                                     help="Port of the Prefect server and UI."),
    mlflow_port: int = typer.Option(5000, "--mlflow-port", min=1, max=65535,
                                    help="Port of the MLflow server and UI."),
    guard_port: int = typer.Option(5055, "--guard-port", min=1, max=65535,
                                   help="Port of the promotion guard's webhook receiver."),
    no_guard: bool = typer.Option(False, "--no-guard", help="Do not start the promotion guard (the nightly "
                                  "re-erase run and `sdd models --check` still check protected aliases)."),
    host: str = typer.Option("127.0.0.1", "--host", parser=Text(), help="Interface the servers listen on."),
    reerase_cron: str = typer.Option("0 2 * * *", "--reerase-cron", parser=Text(),
                                     help="Cron (UTC) of the re-erase check."),
    no_deploy: bool = typer.Option(False, "--no-deploy", help="Do not (re)apply prefect.yaml."),
    prefect_db_url: str | None = typer.Option(
        None, "--prefect-db-url", envvar="SDD_PREFECT_DB_URL", show_envvar=True, parser=Text(),
        help="Prefect server database, e.g. postgresql+asyncpg://user:pw@host:5432/prefect "
             "(default: SQLite in PREFECT_HOME)"),
    mlflow_backend_uri: str | None = typer.Option(
        None, "--mlflow-backend-uri", envvar="SDD_MLFLOW_BACKEND_URI", show_envvar=True, parser=Text(),
        help="MLflow backend store, e.g. postgresql://user:pw@host:5432/mlflow (default: .sdd/mlflow.db)"),
    auth: bool = typer.Option(
        False, "--auth", help="Require HTTP basic auth on Prefect and MLflow; the user:password comes from "
                              "$SDD_STACK_AUTH or the file $SDD_STACK_AUTH_FILE names, never from the command line."),
) -> None:
    """Start Prefect and MLflow servers, create the cpu/gpu pools, deploy, start a worker per pool."""
    from sdd.stack import StackAuth, StackConfig, up

    with exit_on_error():
        info = up(StackConfig(host=host, prefect_port=prefect_port, mlflow_port=mlflow_port,
                              guard_port=guard_port, guard=not no_guard,
                              reerase_cron=reerase_cron, deploy=not no_deploy,
                              prefect_db_url=prefect_db_url, mlflow_backend_uri=mlflow_backend_uri,
                              auth=StackAuth.from_environment() if auth else None))
    typer.echo(f"Prefect UI  {info['prefect_ui']}")
    typer.echo(f"MLflow UI   {info['mlflow_ui']}")
    if info.get("guard"):
        typer.echo(f"guard       {info['guard']} (protected aliases: params/registry.yaml)")
    typer.echo(f"workers     {', '.join(info['pools'])} (logs in {info['logs']})")
    typer.echo(f"use it:     export PREFECT_API_URL={info['prefect_api']} "
               f"MLFLOW_TRACKING_URI={info['mlflow_ui']}")
    if auth:
        typer.echo("auth:       basic; clients also need PREFECT_API_AUTH_STRING=user:password and "
                   "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD")


@stack_app.command("down")
def stack_down() -> None:
    """Stop the workers, then the servers."""
    from sdd.stack import down

    stopped = down()
    typer.echo(f"stopped {', '.join(stopped)}" if stopped else "nothing was running")


@stack_app.command("status")
def stack_status() -> None:
    """Show the stack's URLs and which of its processes run."""
    from sdd.stack import status

    info = status()
    if not info["processes"]:
        typer.echo("the stack is not running (sdd stack up)")
        raise typer.Exit(1)
    for key in ("prefect_ui", "mlflow_ui"):
        if key in info:
            typer.echo(f"{key:10s}  {info[key]}")
    for name, proc in info["processes"].items():
        state = "running" if proc["alive"] else "STOPPED"
        typer.echo(f"{name:16s} pid {proc['pid']:<8d} {state}  {proc['log']}")
    if not all(p["alive"] for p in info["processes"].values()):
        raise typer.Exit(1)


# --- command groups of other packages (entry point group ``sdd.cli``) ------------------------------


def _add_entry_point_groups() -> None:
    """``[project.entry-points."sdd.cli"]``: ``name = "module:typer_app"`` adds ``sdd name ...``."""
    for entry_point in importlib.metadata.entry_points(group="sdd.cli"):
        app.add_typer(entry_point.load(), name=entry_point.name)


_add_entry_point_groups()
