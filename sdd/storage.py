"""Where files go and how they get there: atomic local writes (and, later, S3 via boto3).

Every output of the pipeline (checkpoints, models, reports) is written to a temporary sibling and
renamed into place, so a crash or a full disk never leaves a half-written file where a good one was.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success rename it over ``target``.

    Works for files and for directories (write a whole folder, then swap it in).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    staged = tmp / target.name
    try:
        yield staged
        if target.is_dir() and staged.is_dir():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(staged, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            if staged.is_file():
                with open(staged, "rb") as f:
                    os.fsync(f.fileno())
            os.replace(staged, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def recover_interrupted_writes(directory: Path) -> list[str]:
    """Undo what a process killed inside :func:`atomic_path` left in ``directory``; return what was done.

    A kill can leave a ``.NAME.*.tmp`` staging folder (removed here) and, in the instant between
    the two renames of a folder swap, ``.NAME.old`` without ``NAME`` (renamed back, so a resume
    finds the last good checkpoint instead of starting over). Call it only while no other process
    writes to ``directory``.
    """
    directory = Path(directory)
    done = []
    for old in sorted(directory.glob(".*.old")):
        target = directory / old.name[1:-len(".old")]
        if target.exists():
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)
            done.append(f"removed {old.name}")
        else:
            os.replace(old, target)
            done.append(f"restored {target.name} from {old.name}")
    for tmp in sorted(directory.glob(".*.tmp")):
        shutil.rmtree(tmp, ignore_errors=True)
        done.append(f"removed {tmp.name}")
    return done


def write_text_atomic(target: Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(target: Path, data: Any) -> None:
    write_text_atomic(target, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def check_writable_dir(directory: Path) -> None:
    """Create ``directory`` if needed and check a file can be written in it, else a one-line ConfigError."""
    from sdd.errors import ConfigError

    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=directory).close()
    except OSError as e:
        raise ConfigError(f"{directory}: output folder is not writable ({e.strerror or type(e).__name__}); "
                          "choose another --out") from None


def copy_with_sorted_metadata(src: Path, dst: Path) -> None:
    """Copy the safetensors file ``src`` to ``dst`` with ``__metadata__`` in sorted key order.

    safetensors writes the metadata in Rust hash-map order, which differs between processes, so the
    same patch got different bytes (and hashes) on every run. Offsets are relative to the data
    section, so re-writing the header (padded to 8 bytes, as safetensors does) is safe.
    """
    with open(src, "rb") as f_in, open(dst, "wb") as f_out:
        n = int.from_bytes(f_in.read(8), "little")
        header = json.loads(f_in.read(n))
        header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        text += b" " * (-len(text) % 8)
        f_out.write(len(text).to_bytes(8, "little") + text)
        shutil.copyfileobj(f_in, f_out, 16 << 20)
