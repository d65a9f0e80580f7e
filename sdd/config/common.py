"""What every settings model shares: strict pydantic models, the ``params/`` folder, YAML loading with
one-line errors (:func:`load_model`, :func:`validate`) and the concept-name validators.

An invalid file fails with :class:`ConfigError`, a one-line message naming the field and the fix.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from sdd.errors import ConfigError
from sdd.errors import one_line as one_line  # re-exported: callers import it from here

PARAMS_DIR = Path("params")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


_M = TypeVar("_M", bound=BaseModel)


#: Longest accepted concept name (a label, not a prompt: prompts may be longer).
MAX_CONCEPT_NAME_LEN = 200


def _shown(text: str, limit: int = 40) -> str:
    """``text`` for a one-line message: quoted, escaped (no newlines or control characters), cut."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def check_concept_name(name: Any) -> str:
    """Return ``name`` if it is usable as a concept name, else raise a one-line ConfigError.

    A concept name is a short label that ends up in manifests, tags, report and file names: it must
    be non-blank text without control characters, path separators or undecodable bytes.
    """
    if not isinstance(name, str) or not name.strip():
        raise ConfigError("concept name: must be a non-empty string")
    if len(name) > MAX_CONCEPT_NAME_LEN:
        raise ConfigError(f"concept name {_shown(name)}: longer than {MAX_CONCEPT_NAME_LEN} characters")
    bad = next((ch for ch in name if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp")), None)
    if bad is not None:
        what = "undecodable (non-UTF-8) bytes" if unicodedata.category(bad) == "Cs" else "a control character"
        raise ConfigError(f"concept name {_shown(name)}: contains {what}")
    if "/" in name or "\\" in name or name.strip() in (".", ".."):
        raise ConfigError(f"concept name {_shown(name)}: must not contain path separators or be . / ..")
    return name


def check_concept_names(names: Any) -> list[str]:
    """Every name valid (see :func:`check_concept_name`) and no name twice (ignoring case and spaces)."""
    seen: set[str] = set()
    for name in names:
        key = check_concept_name(name).strip().lower()
        if key in seen:
            raise ConfigError(f"concept name {_shown(name)}: given more than once")
        seen.add(key)
    return list(names)


def option_flag(field: str) -> str:
    """The command-line option that overrides a settings field: ``ddim_steps`` -> ``--ddim-steps``."""
    return "--" + field.replace("_", "-")


def shown_value(value: Any, limit: int = 40) -> str:
    """A value for a one-line message: as typed if it is a plain word or number, else quoted and cut."""
    text = str(value)
    plain = isinstance(value, int | float) or (text and text.isprintable() and " " not in text and len(text) <= limit)
    return text if plain else _shown(text, limit)


#: pydantic's bound errors, said the way sdd's messages say them ("must be ≥ 1").
_BOUNDS = {"greater_than_equal": ("≥", "ge"), "greater_than": (">", "gt"),
           "less_than_equal": ("≤", "le"), "less_than": ("<", "lt")}


def describe_error(error: dict[str, Any]) -> str:
    """What is wrong with one value, from one of pydantic's errors: ``must be ≥ 1 (got 0)``.

    A ``ValueError`` of a validator is its own message (it says what it got, if anything).
    """
    if error["type"] == "value_error":
        return str(error["ctx"]["error"])
    if error["type"] in _BOUNDS:
        sign, key = _BOUNDS[error["type"]]
        problem = f"must be {sign} {error['ctx'][key]}"
    else:
        problem = error["msg"][0].lower() + error["msg"][1:]
    return f"{problem} (got {shown_value(error['input'])})"


def format_validation_error(err: ValidationError, source: str, overrides: dict[str, Any] | None = None) -> str:
    """One line: the first offending field, what is wrong, and where.

    A field whose value came from ``overrides`` (a command-line option) is named as that option
    (``--steps: must be ≥ 1 (got 0)``); any other by ``source`` (the file) and its field.
    """
    first = err.errors()[0]
    more = f" (+{err.error_count() - 1} more)" if err.error_count() > 1 else ""
    loc = first["loc"]
    if len(loc) == 1 and loc[0] in (overrides or {}):
        return f"{option_flag(str(loc[0]))}: {describe_error(first)}{more}"
    field = ".".join(str(p) for p in loc) or "(top level)"
    if not field.isprintable() or len(field) > 80:  # a key from the file itself: never break the line
        field = _shown(field, 80)[1:-1]
    return f"{source}: field '{field}': {first['msg']}{more}"


def read_yaml(path: Path) -> Any:
    """Parse a YAML file, turning every I/O and syntax problem into a one-line ConfigError."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found; pass an existing params file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; save the file as UTF-8") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: invalid YAML{where}; fix the syntax") from None


def validate(model: type[_M], data: Any, source: str, error: type[ConfigError] = ConfigError,
             overrides: dict[str, Any] | None = None) -> _M:
    """Validate ``data`` (with ``overrides`` on top) against ``model`` or raise a one-line ``error``."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise error(f"{source}: expected a mapping of settings, got {type(data).__name__}")
    try:
        return model.model_validate({**data, **(overrides or {})})
    except ValidationError as e:
        raise error(format_validation_error(e, source, overrides)) from None


def load_model(model: type[_M], path: Path, overrides: dict[str, Any] | None = None) -> _M:
    """Load one params file into ``model``, applying ``overrides`` (from CLI options) on top.

    ``overrides`` maps field names to values; None means "not given". An invalid override is
    reported as its option (:func:`option_flag`), an invalid file value as the file and field.
    """
    data = read_yaml(path) if Path(path).exists() else {}
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    return validate(model, data, str(path), overrides=given)

