"""The ``sdd`` command line (typer). Each command is a thin shell over library functions.

Errors (:mod:`sdd.errors`) are printed as one line, never as a traceback, with one exit status per
kind (:func:`exit_on_error`): 2 for what the user must fix, 1 for what may pass on a rerun. Option
values are checked while the command line is parsed, before any work (:mod:`sdd.cli.types`).
Command groups of other packages join through the ``sdd.cli`` entry point group (``sdd concepts``
comes from :mod:`flows.events`), so the library never imports the orchestration layer.

One module per stage: :mod:`sdd.cli.erase`, :mod:`sdd.cli.prompts`, :mod:`sdd.cli.evaluate`
(``evaluate``, ``plots``), :mod:`sdd.cli.redteam`, :mod:`sdd.cli.registry` (``register``,
``promote``, ``models``), :mod:`sdd.cli.toy`, :mod:`sdd.cli.stack`; :mod:`sdd.cli.main` assembles
them into :data:`app` (the ``sdd`` script). Command groups of other packages take their option
types and error handling from here (``from sdd.cli import InputFile, Text, exit_on_error``).
"""

from typing import Any

from sdd.cli.common import exit_on_error
from sdd.cli.types import InputDir, InputFile, InputPath, OutputDir, PathOrURI, Text

__all__ = ["InputDir", "InputFile", "InputPath", "OutputDir", "PathOrURI", "Text", "app", "exit_on_error"]


def __getattr__(name: str) -> Any:
    """:data:`app` is assembled on first use (``from sdd.cli import app``, the ``sdd`` script): it loads
    the command groups of other packages, which import this package's parameter types themselves."""
    if name == "app":
        from sdd.cli.main import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
