"""What the ``sdd`` command line accepts, checked while it is parsed, and how it refuses the rest.

Each option declares what its value is (free text, an input file, an output folder...) with one
of the parsers below (``typer.Option(parser=...)``), so a bad value stops the command before any
work: before a model is loaded, a server started or an output folder created. :class:`OneLineErrors`,
the root command group, prints every refusal of the parser (bad value, unknown option, missing
option) the way :func:`sdd.cli.exit_on_error` prints a :class:`~sdd.errors.ConfigError`: one line
``error: --option: what is wrong``, exit status 2. ``tests/test_cli_walk.py`` tries bad values on
every option of every command, chosen by these parsers.

typer (0.29) parses with its own copy of click and validates values with pydantic: its errors are
``typer._click`` exceptions, and a parser's ``ValueError`` reaches us as a pydantic error.
"""

from __future__ import annotations

import os
import re
import sys
import unicodedata
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from typer._click.core import ParameterSource
from typer._click.exceptions import BadParameter, ClickException, MissingParameter, NoArgsIsHelpError
from typer.core import TyperGroup
from typer.exceptions import Abort

from sdd.config import describe_error, shown_value
from sdd.errors import ConfigError, one_line

#: Unicode categories no typed value contains: control and format characters, lone surrogates
#: (undecodable argv bytes) and line or paragraph separators. The rule of concept names, too.
UNPRINTABLE = ("Cc", "Cf", "Cs", "Zl", "Zp")

_URI = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)


def parameter_name(param: Any) -> str:
    """How a message names a parameter: its long option (``--steps``) or, for an argument, ``VERSION``."""
    if param.param_type_name == "option":
        return max(param.opts, key=len)
    return param.name.upper()


def usage_error_line(error: ClickException) -> str:
    """The one line (without ``error:``) for a refusal of the parser, naming the parameter first."""
    if isinstance(error, BadParameter) and not isinstance(error, MissingParameter) and error.param is not None:
        cause = error.__cause__
        problem = describe_error(cause.errors()[0]) if isinstance(cause, ValidationError) else error.message
        return one_line(f"{parameter_name(error.param)}: {problem}")
    return one_line(error.format_message())


class OneLineErrors(TyperGroup):
    """The root group: the parser's usage errors become one ``error:`` line with exit status 2.

    Without it, typer prints a usage line, a hint and a framed message. ``sdd`` and ``sdd GROUP``
    without arguments still print their help.
    """

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            status = super().main(*args, standalone_mode=False, **kwargs)
        except NoArgsIsHelpError as e:
            if e.format_message().strip():  # with rich installed, typer has printed the help already
                e.show()
            sys.exit(e.exit_code)
        except ClickException as e:
            print(f"error: {usage_error_line(e)}", file=sys.stderr)
            sys.exit(e.exit_code)
        except Abort:
            print("aborted", file=sys.stderr)
            sys.exit(1)
        sys.exit(status if isinstance(status, int) else 0)


def reject_options_of_other_modes(ctx: Any, mode_option: str, mode: str, modes: dict[str, str]) -> None:
    """An option given for another mode than ``mode`` is an error, not silently ignored.

    ``modes`` maps a parameter name to the one mode it applies to.
    """
    for param in ctx.command.params:
        wanted = modes.get(param.name)
        if wanted is not None and wanted != mode and ctx.get_parameter_source(param.name) in (
                ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT):
            raise ConfigError(f"{parameter_name(param)} applies only to {mode_option} {wanted} (got {mode})")


# --- parsers: typer.Option(parser=...) -----------------------------------------------------------
# Each takes the typed string and returns the value, or raises ValueError saying what is wrong.


class Text:
    """A name, id or URL typed on one line: not blank, no control characters, at most ``max_length``."""

    def __init__(self, max_length: int = 1000):
        self.max_length = max_length

    def __call__(self, value: str) -> str:
        if not value.strip():
            raise ValueError(f"must not be blank (got {shown_value(value)})")
        if len(value) > self.max_length:
            raise ValueError(f"longer than {self.max_length} characters (got {shown_value(value)})")
        if any(unicodedata.category(ch) in UNPRINTABLE for ch in value):
            raise ValueError(f"contains a control character or undecodable bytes (got {shown_value(value)})")
        return value


class PathOrURI(Text):
    """A local file or a ``scheme://`` URI (``s3://bucket/key``); a local path must be an existing file."""

    def __call__(self, value: str) -> str:
        value = super().__call__(value)
        if not _URI.match(value):
            existing(Path(value), "file")
        return value


def existing(path: Path, kind: str) -> Path:
    """``path`` if it exists and is a ``kind`` (file, folder or path), else a ValueError saying why."""
    if not path.exists():
        raise ValueError(f"{path}: {'file not found' if kind == 'file' else 'no such ' + kind}")
    if kind == "file" and path.is_dir():
        raise ValueError(f"{path}: is a folder, not a file")
    if kind == "folder" and not path.is_dir():
        raise ValueError(f"{path}: is a file, not a folder")
    if not os.access(path, os.R_OK):
        raise ValueError(f"{path}: cannot be read (permission denied)")
    return path


class InputFile:
    """An existing, readable file (its content is checked by whatever reads it)."""

    kind = "file"

    def __call__(self, value: str | Path) -> Path:
        return existing(Path(Text()(str(value))), self.kind)


class InputDir(InputFile):
    """An existing, readable folder."""

    kind = "folder"


class InputPath(InputFile):
    """An existing file or folder (a prompt file, or a folder of `sdd prompts build`)."""

    kind = "path"


class OutputDir:
    """A folder to write into: it, or its first existing parent, is a writable folder. Creates nothing."""

    def __call__(self, value: str | Path) -> Path:
        path = Path(Text()(str(value)))
        if path.exists() and not path.is_dir():
            raise ValueError(f"{path}: output folder is not writable (a file of that name exists)")
        first_existing = next(p for p in (path, *path.absolute().parents) if p.exists())
        if not first_existing.is_dir():
            raise ValueError(f"{path}: output folder is not writable ({first_existing} is a file)")
        if not os.access(first_existing, os.W_OK):
            raise ValueError(f"{path}: output folder is not writable (permission denied)")
        return path
