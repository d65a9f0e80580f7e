"""Where an erasure came from: git commit, DVC hashes, and scrubbing secrets out of what is recorded.

Importable without MLflow (``flows.erase`` reads the lineage for its report without loading the
registry); :mod:`sdd.registry` tags runs and model versions with these values.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

MAX_TAG_LEN = 5000


_SECRET_NAME = re.compile(r"SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|PRIVATE|ACCESS_KEY|API_KEY|_KEY$", re.I)


_SKIP_DIRS = {"node_modules", "runs", "__pycache__"}


def _secret_values() -> list[str]:
    return [v for k, v in os.environ.items() if _SECRET_NAME.search(k) and len(v) >= 6]


def scrub(value: Any, limit: int = MAX_TAG_LEN) -> str:
    """``value`` as a string, with secret environment values masked and cut to ``limit``."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    for secret in _secret_values():
        text = text.replace(secret, "***")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _git(*args: str, cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_info(project: Path | None = None) -> dict[str, str]:
    """``git_commit`` (``git rev-parse HEAD``) and ``git_dirty``; "none" outside a git checkout."""
    project = Path(project or Path.cwd())
    commit = _git("rev-parse", "HEAD", cwd=project)
    if not commit:
        return {"git_commit": "none", "git_dirty": "none"}
    dirty = _git("status", "--porcelain", "--untracked-files=no", cwd=project)
    return {"git_commit": commit, "git_dirty": "none" if dirty is None else str(bool(dirty)).lower()}


def file_md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()  # what DVC records for files


def _dvc_files(project: Path) -> list[Path]:
    found = []
    for root, dirs, files in os.walk(project):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in _SKIP_DIRS]
        found += [Path(root) / f for f in files if f.endswith(".dvc")]
    return sorted(found)


#: The concept list the ``prepare`` stage reads and the prompt sets it writes (see dvc.yaml).
DVC_CONCEPTS_FILE, DVC_PROMPTS_OUT = "params/concepts.yaml", "data/prompts"


def _lock_outs(stages: dict[str, Any]) -> dict[str, str]:
    """``{path: hash}`` of every stage output recorded in ``dvc.lock`` (md5, or etag for cloud outputs)."""
    outs: dict[str, str] = {}
    for stage in stages.values():
        for out in (stage.get("outs") or []) if isinstance(stage, dict) else []:
            if isinstance(out, dict) and out.get("path"):
                outs[str(out["path"])] = str(out.get("md5") or out.get("etag") or out.get("checksum") or "?")
    return outs


def dvc_info(project: Path | None = None) -> dict[str, str]:
    """DVC provenance: the commit and sha256 of ``dvc.lock``, md5 of the params files it tracks,
    and the output hashes of ``*.dvc`` files; ``"none"`` for what does not exist.

    Lineage of the concept list and the prompt sets: ``dvc_concepts`` is the md5 of
    ``params/concepts.yaml`` (the hash DVC gives that file), ``dvc_prompts`` the hash ``dvc.lock``
    records for ``data/prompts`` (the ``prepare`` stage's output; ``dvc pull`` / ``dvc checkout``
    with that lock bring the exact sets back), ``dvc_concepts_locked`` whether the concept list
    ``dvc.lock`` recorded for that output equals the file now (``true`` / ``false``), and
    ``dvc_outs`` every output hash of ``dvc.lock`` (``path=hash``, comma-separated)."""
    import yaml

    project = Path(project or Path.cwd())
    info = {"dvc_rev": "none", "dvc_lock": "none", "dvc_params": "none", "dvc_data": "none",
            "dvc_concepts": "none", "dvc_prompts": "none", "dvc_concepts_locked": "none", "dvc_outs": "none"}
    concepts_file = project / DVC_CONCEPTS_FILE
    if concepts_file.is_file():
        info["dvc_concepts"] = file_md5(concepts_file)
    lock = project / "dvc.lock"
    if lock.is_file():
        info["dvc_lock"] = hashlib.sha256(lock.read_bytes()).hexdigest()
        info["dvc_rev"] = _git("log", "-1", "--format=%H", "--", "dvc.lock", cwd=project) or "none"
        try:
            stages = (yaml.safe_load(lock.read_text(encoding="utf-8")) or {}).get("stages", {})
        except (yaml.YAMLError, AttributeError):
            stages = {}
        stages = stages if isinstance(stages, dict) else {}
        params_files = sorted({f for s in stages.values() if isinstance(s, dict) for f in (s.get("params") or {})})
        hashes = [f"{f}={file_md5(project / f)}" for f in params_files if (project / f).is_file()]
        info["dvc_params"] = ",".join(hashes) or "none"
        outs = _lock_outs(stages)
        info["dvc_outs"] = ",".join(f"{p}={h}" for p, h in sorted(outs.items())) or "none"
        info["dvc_prompts"] = outs.get(DVC_PROMPTS_OUT, "none")
        locked = [s["params"][DVC_CONCEPTS_FILE] for s in stages.values() if isinstance(s, dict)
                  and DVC_PROMPTS_OUT in {o.get("path") for o in s.get("outs") or [] if isinstance(o, dict)}
                  and DVC_CONCEPTS_FILE in (s.get("params") or {})]
        if locked and concepts_file.is_file():
            try:
                current = yaml.safe_load(concepts_file.read_text(encoding="utf-8"))
            except yaml.YAMLError:
                current = None
            info["dvc_concepts_locked"] = str(current == locked[0]).lower()
    data = []
    for path in _dvc_files(project):
        try:
            outs = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("outs", [])
        except (yaml.YAMLError, OSError):
            continue
        data += [f"{path.relative_to(project)}={o.get('md5') or o.get('etag') or '?'}" for o in outs]
    info["dvc_data"] = ",".join(data) or "none"
    return info
