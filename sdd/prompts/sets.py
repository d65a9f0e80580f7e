"""Prompt sets: the versioned, content-hashed lists of (prompt, seed) that erasure and evaluation use.

File format (``.jsonl``): an optional header line, then one JSON object per row::

    {"format": "sdd-prompts", "version": 1, "name": "red-eval", "kind": "eval", "rows": 144,
     "sha256": "…", "meta": {…}}
    {"prompt": "an image showing a scarlet box", "seed": 0, "concepts": ["red"], "source": "toy-heldout"}
    {"prompt": "a photo of a cat", "seed": 1, "concepts": [], "source": "coco", "guidance": 7.5}

``concepts`` lists the erasure targets a prompt should evoke (empty for benign prompts);
``guidance`` optionally overrides the evaluation's CFG scale for that row (I2P carries one per
prompt). The content hash is the sha256 of the canonical rows (sorted keys, compact JSON, one row
per line), so it identifies what is evaluated independently of the file's name, header or layout.
A CSV with the same columns (``concepts`` separated by ``;``) is read too, for hand-written sets.

The builders of the sets are :mod:`sdd.prompts.toy` (the toy world) and :mod:`sdd.prompts.real`
(I2P, COCO captions); :mod:`sdd.prompts.build` writes them all at once.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sdd.config import ConfigError, check_concept_name, validate
from sdd.storage import write_text_atomic

FORMAT = "sdd-prompts"
FORMAT_VERSION = 1
INDEX_FILE = "index.json"
SET_KINDS = ("train", "eval", "benign")



class PromptSetError(ConfigError):
    """A prompt file or source is invalid; the message is one line naming the row and field."""


class PromptRow(BaseModel):
    """One prompt to generate from, with the seed of its initial noise."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str
    seed: int = Field(ge=0, lt=2**63)
    concepts: tuple[str, ...] = ()
    source: str = ""
    guidance: float | None = Field(None, ge=0)

    @field_validator("concepts", mode="before")
    @classmethod
    def _split_and_normalise(cls, v: Any) -> Any:
        if isinstance(v, str):  # a CSV cell: "red;triangle"
            v = re.split(r"[;|]", v)
        if isinstance(v, list | tuple) and all(isinstance(c, str) for c in v):
            return tuple(c.strip().lower() for c in v if c.strip())
        return v

    @field_validator("concepts")
    @classmethod
    def _valid_names(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(check_concept_name(c) for c in v)  # names reach reports, tags and file names

    def canonical(self) -> str:
        return json.dumps(self.model_dump(mode="json", exclude_none=True), sort_keys=True,
                          separators=(",", ":"), ensure_ascii=False)


def content_hash(rows: Iterable[PromptRow]) -> str:
    """sha256 of the canonical rows: the version identifier of a prompt set."""
    h = hashlib.sha256()
    for row in rows:
        h.update(row.canonical().encode("utf-8") + b"\n")
    return h.hexdigest()


@dataclass(frozen=True)
class PromptSet:
    name: str
    kind: str
    rows: tuple[PromptRow, ...]
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def sha256(self) -> str:
        return content_hash(self.rows)

    def concepts(self) -> list[str]:
        """Every concept some row evokes, in order of first appearance."""
        return list(dict.fromkeys(c for row in self.rows for c in row.concepts))

    def indices_for(self, concept: str) -> list[int]:
        return [i for i, row in enumerate(self.rows) if concept in row.concepts]

    def benign_indices(self) -> list[int]:
        return [i for i, row in enumerate(self.rows) if not row.concepts]

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "rows": len(self), "sha256": self.sha256,
                "concepts": self.concepts(), "benign_rows": len(self.benign_indices()), "meta": self.meta}


def concat(name: str, sets: Sequence[PromptSet], kind: str = "mixed") -> PromptSet:
    """One set holding the rows of ``sets``; the parts' hashes are kept in ``meta['parts']``."""
    rows = tuple(r for s in sets for r in s.rows)
    parts = {s.name: {"kind": s.kind, "rows": len(s), "sha256": s.sha256} for s in sets}
    return PromptSet(name, kind, rows, {"parts": parts})



def seeded_rows(prompts: Iterable[tuple[str, tuple[str, ...]]], source: str, seeds_per_prompt: int,
                first_seed: int = 0) -> tuple[PromptRow, ...]:
    """Rows for unique prompts (first occurrence wins), each repeated with consecutive seeds."""
    unique = dict.fromkeys(prompts)
    seeds = iter(range(first_seed, first_seed + len(unique) * seeds_per_prompt))
    return tuple(PromptRow(prompt=p, seed=next(seeds), concepts=c, source=source)
                 for p, c in unique for _ in range(seeds_per_prompt))



# --- reading and writing ------------------------------------------------------------------------


def spread(indices: Sequence[int], n: int) -> list[int]:
    """Up to ``n`` indices evenly spread over ``indices`` (so a grid covers many prompts, not one)."""
    step = max(1, len(indices) // n)
    return list(indices[::step][:n])


def limit_rows(prompt_set: PromptSet, n: int | None) -> PromptSet:
    """At most ``n`` rows, spread evenly over the set (for smoke runs); all of them for ``None``."""
    if n is None or len(prompt_set) <= n:
        return prompt_set
    rows = tuple(prompt_set.rows[i] for i in spread(range(len(prompt_set)), n))
    return PromptSet(prompt_set.name, prompt_set.kind, rows, {**prompt_set.meta, "limited_to": n})


def write_prompt_set(ps: PromptSet, path: Path) -> str:
    """Write ``ps`` as JSONL (header + rows) atomically; returns the content hash."""
    digest = ps.sha256
    header = {"format": FORMAT, "version": FORMAT_VERSION, "name": ps.name, "kind": ps.kind,
              "rows": len(ps), "sha256": digest, "meta": ps.meta}
    lines = [json.dumps(header, sort_keys=True, ensure_ascii=False)] + [r.canonical() for r in ps.rows]
    write_text_atomic(Path(path), "\n".join(lines) + "\n")
    return digest


def validate_row(data: Any, where: str) -> PromptRow:
    """``data`` as a row, or a one-line :class:`PromptSetError` naming ``where`` (file and row)."""
    if not isinstance(data, dict):
        raise PromptSetError(f"{where}: expected an object with prompt, seed, concepts, source")
    return validate(PromptRow, data, where, PromptSetError)


def _check_header(header: dict, rows: list[PromptRow], path: str) -> None:
    if header.get("version", FORMAT_VERSION) > FORMAT_VERSION:
        raise PromptSetError(f"{path}: format version {header['version']} is newer than this sdd "
                             f"understands ({FORMAT_VERSION}); upgrade sdd")
    if "rows" in header and header["rows"] != len(rows):
        raise PromptSetError(f"{path}: header says {header['rows']} rows but the file has {len(rows)}; "
                             "the file is truncated or was edited")
    if header.get("sha256") and header["sha256"] != content_hash(rows):
        raise PromptSetError(f"{path}: rows do not match the header's sha256 (edited by hand?); "
                             "remove the sha256 field from the header to accept the edit")


def _parse_jsonl(text: str, path: str) -> PromptSet:
    header: dict[str, Any] = {}
    rows: list[PromptRow] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as e:
            raise PromptSetError(f"{path}: line {lineno}: invalid JSON ({e.msg})") from None
        if isinstance(data, dict) and data.get("format") == FORMAT:
            if rows or header:
                raise PromptSetError(f"{path}: line {lineno}: header must be the first line")
            header = data
            continue
        rows.append(validate_row(data, f"{path}: line {lineno}"))
    _check_header(header, rows, path)
    name = header.get("name") or Path(path).stem
    return PromptSet(name, header.get("kind", "custom"), tuple(rows), header.get("meta") or {})


def _parse_csv(text: str, path: str) -> PromptSet:
    reader = csv.DictReader(io.StringIO(text, newline=""))  # newline="": csv handles \r, \r\n itself
    rows = []
    try:
        missing = {"prompt", "seed"} - set(reader.fieldnames or [])
        if missing:
            raise PromptSetError(f"{path}: CSV needs columns prompt and seed "
                                 f"(missing: {', '.join(sorted(missing))})")
        for n, record in enumerate(reader, start=1):
            data = {k: v for k, v in record.items() if k in PromptRow.model_fields and v not in (None, "")}
            rows.append(validate_row(data, f"{path}: row {n}"))
    except csv.Error as e:
        raise PromptSetError(f"{path}: invalid CSV at line {reader.line_num} ({e})") from None
    return PromptSet(Path(path).stem, "custom", tuple(rows))


def read_prompt_set(path: str | Path) -> PromptSet:
    """Read a ``.jsonl`` (or ``.csv``) prompt set, validating every row."""
    text = read_text(str(path))
    ps = _parse_csv(text, str(path)) if str(path).lower().endswith(".csv") else _parse_jsonl(text, str(path))
    if not ps.rows:
        raise PromptSetError(f"{path}: no prompts in the file")
    return ps


def load_prompts(path: str | Path, kinds: Sequence[str] = ("eval", "benign")) -> PromptSet:
    """A prompt file, or a folder written by :func:`build_prompt_sets` (its ``kinds`` sets, joined)."""
    path = Path(path)
    if not path.is_dir():
        return read_prompt_set(path)
    index_file = path / INDEX_FILE
    if not index_file.is_file():
        raise PromptSetError(f"{path}: folder has no {INDEX_FILE}; pass a prompt file or a built folder")
    try:
        files = {k: v["file"] for k, v in json.loads(index_file.read_text())["sets"].items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        raise PromptSetError(f"{index_file}: unreadable index (no sets); rebuild the folder") from None
    sets = [read_prompt_set(path / files[k]) for k in kinds if k in files]
    sets = [s for s in sets if len(s)]
    if not sets:
        raise PromptSetError(f"{path}: none of the sets {', '.join(kinds)} is present")
    return concat(f"{path.name}:{'+'.join(kinds)}", sets)


def concepts_from_prompt_set(ps: PromptSet) -> dict[str, list[str]]:
    """Concept -> its training prompts, in file order (the input of ``sdd erase --prompts``)."""
    grouped: dict[str, list[str]] = {}
    for row in ps.rows:
        for concept in row.concepts:
            grouped.setdefault(concept, [])
            if row.prompt not in grouped[concept]:
                grouped[concept].append(row.prompt)
    if not grouped:
        raise PromptSetError(f"prompt set '{ps.name}' names no concepts; every training row needs 'concepts'")
    return grouped


def read_text(uri: str) -> str:
    """The UTF-8 text at a local path or an ``s3://bucket/key`` URI."""
    try:
        if uri.startswith("s3://"):
            import boto3

            bucket, _, key = uri[len("s3://"):].partition("/")
            body = boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
        else:
            body = Path(uri).expanduser().read_bytes()
        return body.decode("utf-8-sig")
    except FileNotFoundError:
        raise PromptSetError(f"{uri}: file not found") from None
    except UnicodeDecodeError:
        raise PromptSetError(f"{uri}: not UTF-8 text") from None
    except PromptSetError:
        raise
    except Exception as e:  # S3/OS failures become one line for the user
        raise PromptSetError(f"{uri}: cannot read ({type(e).__name__}: {e})") from None
