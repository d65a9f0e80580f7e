"""What every command shares: one-line errors with their exit status, and the gate verdict's last lines."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer

from sdd.errors import SddError, exit_code

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



def echo_verdict(metrics: dict, label: str, out: Path, strict: bool) -> None:
    """The failed gates and the verdict of ``metrics``; with ``strict``, exit 1 unless it passed."""
    for reason in metrics["gates"]["failed"]:
        typer.echo(f"gate failed: {reason}")
    typer.echo(f"{label}: {metrics['verdict'].upper()}; report in {out / 'report.md'}")
    if strict and metrics["verdict"] != "pass":
        raise typer.Exit(1)



def active_base_model() -> str:
    """The base model of the active concept set in params/concepts.yaml (what the DVC stages erase,
    evaluate and attack); ``toy`` where there is no such file (outside a project checkout)."""
    from sdd.config import PARAMS_DIR, load_concept_sets

    if not (PARAMS_DIR / "concepts.yaml").is_file():
        return "toy"
    return load_concept_sets().active_set.base_model
