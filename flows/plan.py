"""The plan of an ``erase-concepts`` run: which folders it uses, keyed on everything each stage depends on.

``<runs_dir>/<key>/`` is keyed on the base model, the concept set, the distill settings and the
prompt options; the evaluation's ``eval-<eval key>/`` inside it on the evaluation settings, gates
and red-team settings (:func:`make_plan`). A folder's ``.cache-id`` (:func:`folder_id`) is part of
its stages' Prefect cache keys, and ``.lock`` (:func:`run_folder_lock`) keeps two runs of the same
folder from racing (see :mod:`flows.erase`).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from flows.params import PromptOptions
from sdd.config import PARAMS_DIR, ConfigError, DistillConfig, EvalConfig, GatesConfig, RedteamConfig, load_model
from sdd.layout import REDTEAM_DIR
from sdd.prompts import concept_set_hash, normalise_concepts
from sdd.storage import write_json_atomic

CACHE_ID_FILE = ".cache-id"
LOCK_FILE = ".lock"


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


class ErasurePlan(BaseModel):
    """The resolved inputs of one erasure and the folders its stages write."""

    key: str
    eval_key: str
    runs_dir: str
    base_model: str
    concepts: list[str]
    distill: DistillConfig
    evaluation: EvalConfig
    gates: GatesConfig
    prompts: PromptOptions
    redteam: RedteamConfig

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.key

    @property
    def prompts_dir(self) -> Path:
        return self.run_dir / "prompts"

    @property
    def erasure_dir(self) -> Path:
        return self.run_dir / "erasure"

    @property
    def eval_dir(self) -> Path:
        return self.run_dir / f"eval-{self.eval_key}"

    @property
    def redteam_dir(self) -> Path:
        return self.eval_dir / REDTEAM_DIR

    @property
    def model_kind(self) -> str:
        return "toy" if self.base_model == "toy" else "real"


def make_plan(concepts: list[str], base_model: str, distill: DistillConfig, evaluation: EvalConfig,
              gates: GatesConfig, prompts: PromptOptions, runs_dir: str,
              redteam: RedteamConfig | None = None) -> ErasurePlan:
    """Key the run folder on what the erasure depends on, and the eval folder on what evaluation adds."""
    concepts = normalise_concepts(concepts)
    if not concepts:
        raise ConfigError("give at least one concept to erase")
    erasure_inputs = {"base_model": base_model, "concepts": concepts,
                      "concepts_sha256": concept_set_hash(base_model, concepts),  # names and their prompts
                      "distill": distill.model_dump(mode="json"), "prompts": prompts.model_dump(mode="json")}
    redteam = redteam or load_model(RedteamConfig, PARAMS_DIR / "redteam.yaml")
    eval_inputs = {"evaluation": evaluation.model_dump(mode="json"), "gates": gates.model_dump(mode="json"),
                   "redteam": redteam.model_dump(mode="json")}
    plan = ErasurePlan(key=_digest(erasure_inputs), eval_key=_digest(eval_inputs), runs_dir=str(runs_dir),
                       base_model=base_model, concepts=concepts,
                       distill=DistillConfig.model_validate(distill.model_dump()),
                       evaluation=EvalConfig.model_validate(evaluation.model_dump()),
                       gates=GatesConfig.model_validate(gates.model_dump()), prompts=prompts,
                       redteam=RedteamConfig.model_validate(redteam.model_dump()))
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(plan.run_dir / "plan.json", {**erasure_inputs, "key": plan.key})
    return plan


def folder_id(folder: Path) -> str:
    """The folder's ``.cache-id``, created on first use: a deleted folder comes back with a new one.

    Created with a hard link of a complete temporary file, so two processes asking at once agree on
    one id (the second link fails) and nobody reads a half-written one.
    """
    marker = folder / CACHE_ID_FILE
    if not marker.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{CACHE_ID_FILE}.{uuid.uuid4().hex}.tmp"
        tmp.write_text(uuid.uuid4().hex)
        try:
            os.link(tmp, marker)
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    return marker.read_text().strip()


@contextmanager
def run_folder_lock(run_dir: Path, logger=None, holder: str = "") -> Iterator[None]:
    """Hold an exclusive lock on ``run_dir/.lock``; wait (and say so) while another run holds it.

    The lock file names its holder (``holder``, pid, host, time) for the log of a run that waits.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / LOCK_FILE, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            other = f.read().strip() or "unknown"
            if logger is not None:
                logger.info("another run of this erasure holds %s (%s); waiting for it to finish",
                            run_dir / LOCK_FILE, other)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            f.truncate(0)
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
            f.write(f"{holder} pid {os.getpid()} on {socket.gethostname()} since {stamp}".strip() + "\n")
            f.flush()
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
