"""The ``sdd`` application: every command and group in the order ``sdd --help`` lists them.

Commands live with their stage (``sdd.cli.erase``, ``sdd.cli.evaluate``, ...); this module only puts
them together. Command groups of other packages join through the ``sdd.cli`` entry point group.
"""

from __future__ import annotations

import importlib.metadata

import typer

from sdd.cli.erase import erase
from sdd.cli.evaluate import evaluate_cmd, plots_cmd
from sdd.cli.prompts import prompts_app
from sdd.cli.redteam import redteam_cmd
from sdd.cli.registry import models_cmd, promote_cmd, register_cmd
from sdd.cli.stack import stack_app
from sdd.cli.toy import toy_app
from sdd.cli.types import OneLineErrors

app = typer.Typer(cls=OneLineErrors, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Safe self-Distillation of Diffusion models: erase concepts, measure, register.")

app.command()(erase)
app.command("evaluate")(evaluate_cmd)
app.command("redteam")(redteam_cmd)
app.command("plots")(plots_cmd)
app.command("register")(register_cmd)
app.command("promote")(promote_cmd)
app.command("models")(models_cmd)
app.add_typer(toy_app, name="toy")
app.add_typer(prompts_app, name="prompts")
app.add_typer(stack_app, name="stack")


# --- command groups of other packages (entry point group ``sdd.cli``) ------------------------------


def _add_entry_point_groups() -> None:
    """``[project.entry-points."sdd.cli"]``: ``name = "module:typer_app"`` adds ``sdd name ...``."""
    for entry_point in importlib.metadata.entry_points(group="sdd.cli"):
        app.add_typer(entry_point.load(), name=entry_point.name)


_add_entry_point_groups()
