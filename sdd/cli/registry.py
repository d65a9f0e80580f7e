"""``sdd register``, ``sdd promote`` and ``sdd models``: the MLflow registry (:mod:`sdd.registry`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from sdd.cli.common import exit_on_error
from sdd.cli.types import InputDir, InputFile, Text

if TYPE_CHECKING:
    from rich.table import Table
    from rich.text import Text as RichText

    from sdd.registry.promotion import VersionRow


def _registry_config(params: Path | None):
    from sdd.config import PARAMS_DIR, load_checked_registry_config

    return load_checked_registry_config(params or PARAMS_DIR / "registry.yaml")


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
    """Point an alias (default: production) at a model version; a version that failed the gates of the
    alias's threat model (params/registry.yaml alias_threat_models) needs --force --reason."""
    from sdd.registry import promote

    with exit_on_error():
        done = promote(name, version, alias, force=force, reason=reason, cfg=_registry_config(params),
                       tracking_uri=tracking_uri)
    before = f" (was version {done.previous})" if done.previous is not None else ""
    forced = " [forced]" if done.forced else ""
    typer.echo(f"{done.name}@{done.alias} -> version {done.version}{before}{forced}")


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

