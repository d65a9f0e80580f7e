"""The ``sdd`` command line (typer). Each command is a thin shell over library functions.

Errors the user can fix (:class:`sdd.config.ConfigError` and friends) are printed as one line
and exit with status 2, never as a traceback.
"""

from __future__ import annotations

import typer

app = typer.Typer(help="Safe self-Distillation of Diffusion models: erase concepts, measure, register.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
toy_app = typer.Typer(help="The embedded toy world.", no_args_is_help=True)
app.add_typer(toy_app, name="toy")


def main() -> None:  # pragma: no cover - console-script entry
    app()
