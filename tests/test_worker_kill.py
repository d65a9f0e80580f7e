"""Fault: a worker is ``kill -9``ed mid-flow, restarted, and the erasure re-run.

**The gpu worker, mid-distillation.**

The real stack (Prefect server, MLflow server, cpu + gpu process workers) on free ports -- the
stack the stack tests share, reset for each test (``helpers.reset_stack``) -- runs started through
the REST API the way the UI starts them. While the ``distill-gpu`` run is training
(after a few checkpoints), the gpu worker and its flow-run process get SIGKILL. Nothing reports
that run's end, so it stays Running: it holds the gpu pool's only slot, and the erase-concepts run
that started it waits for it with the run folder's lock held -- until the zombie automation that
``sdd stack up`` creates marks it Crashed (three missed heartbeats). A fresh gpu worker is started,
and erase-concepts is started again with the same parameters, as a user would after the crash.

The new run completes; its prompt stage comes from the cache; the distillation resumed from the
checkpoint the kill left (no checkpoint below it is ever written again, and the erasure has all its
steps); and MLflow holds exactly one version.

**The cpu worker, mid-evaluation.** The cpu pool runs ``erase-concepts`` itself (prompts, evaluation,
red team, registration; the distillation is a run of its own on the gpu pool). The cpu worker and
its flow-run process get SIGKILL while the evaluation is drawing images. The orphaned run is marked
Crashed the same way; the rerun gets the prompts and the distillation from the cache, the
evaluation resumes without drawing any finished image again, and MLflow holds exactly one version.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from helpers import (
    FINAL,
    GATES_OFF,
    TINY,
    api,
    artifact_text,
    cancel_runs,
    create_run,
    image_stamps,
    indexed_keys,
    registry,
    reset_stack,
    runs_of,
    wait_for_run,
)

from sdd.stack import HEARTBEAT_S, StackConfig, descendants, read_records, stack_env
from sdd.stack.processes import _reap
from sdd.stack.services import _start_workers

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

STEPS, CHECKPOINT_EVERY = 40, 5  # ~3 toy steps/s on a quiet core: the kill lands at step 10, 30 steps before the end
KILL_AFTER_STEP = 10  # kill once at least two checkpoints exist


def checkpoint_step(runs_dir: Path) -> int | None:
    """The step of the (only) erasure checkpoint under ``runs_dir``; None while there is none."""
    for state in runs_dir.glob("*/erasure/checkpoint/state.json"):
        try:
            return json.loads(state.read_text())["step"]
        except (OSError, ValueError, KeyError):
            return None  # mid-swap: the checkpoint folder is being replaced
    return None


def is_running(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z"


def kill_9(pid: int) -> list[int]:
    """SIGKILL ``pid`` and everything below it (each in its process group); wait until they are gone."""
    pids = [pid, *descendants(pid)]
    groups = set()
    for p in pids:
        try:
            groups.add(os.getpgid(p))
        except ProcessLookupError:
            pass
    for target in pids:
        try:
            os.kill(target, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for group in groups:
        try:
            os.killpg(group, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + 30
    while any(is_running(p) for p in pids) and time.monotonic() < deadline:
        _reap(pid)  # the worker is our child (spawned by sdd.stack.up in this process)
        time.sleep(0.1)
    _reap(pid)
    assert not any(is_running(p) for p in pids), f"still alive after SIGKILL: {pids}"
    return pids


class StepWatcher(threading.Thread):
    """Records every checkpoint step seen under ``runs_dir`` (polled every 0.1 s) until stopped."""

    def __init__(self, runs_dir: Path):
        super().__init__(daemon=True)
        self.runs_dir, self.seen, self.done = runs_dir, [], threading.Event()

    def run(self):
        while not self.done.is_set():
            step = checkpoint_step(self.runs_dir)
            if step is not None and (not self.seen or self.seen[-1] != step):
                self.seen.append(step)
            time.sleep(0.1)


@pytest.fixture
def stack(shared_stack):
    """Each test here kills a worker and counts versions and runs: the shared stack, reset for each."""
    return reset_stack(shared_stack)


def kill_worker(cfg: StackConfig, pool: str) -> None:
    """kill -9 the pool's worker and the flow-run process below it."""
    [worker] = [r for r in read_records(cfg.state_dir) if r["name"] == f"worker-{pool}"]
    killed = kill_9(worker["pid"])
    assert len(killed) >= 2, f"no flow-run process below the {pool} worker (pids {killed})"


def restart_worker_and_wait_until_crashed(stack, cfg: StackConfig, pool: str, orphan_id: str) -> None:
    """A fresh worker for ``pool``; the orphaned run stays Running until the stack's zombie automation
    notices its heartbeats stopped and marks it Crashed (nobody does it by hand)."""
    _start_workers(dataclasses.replace(cfg, pools=(pool,)), stack_env(cfg))
    crashed_by = time.monotonic() + 3 * HEARTBEAT_S + 240
    while (orphan := api(stack, "GET", f"/flow_runs/{orphan_id}"))["state_type"] == "RUNNING":
        assert time.monotonic() < crashed_by, "the zombie automation did not crash the orphaned run"
        time.sleep(3)
    assert orphan["state_type"] == "CRASHED", orphan["state"]
    assert "no heartbeat" in (orphan["state"].get("message") or ""), orphan["state"]


def stages_line(stack, run_id: str) -> str:
    lines = [line for line in artifact_text(stack, run_id, "erasure-report").splitlines() if line.startswith("Stages:")]
    assert lines, "the erasure report has no Stages line"
    return lines[0]


def cancel_if_unfinished(stack, run_id: str | None) -> None:
    """The killed run may still wait (or have finished): leave nothing running."""
    if run_id is None:
        return
    try:
        if api(stack, "GET", f"/flow_runs/{run_id}")["state_type"] not in FINAL:
            cancel_runs(stack, [run_id])
    except OSError:
        pass


def test_gpu_worker_killed_mid_distillation_then_rerun_resumes_and_registers_once(stack, tmp_path):
    cfg = stack["cfg"]
    runs_dir = tmp_path / "runs"
    params = {"concepts": ["red"], **TINY,
              "distill": {**TINY["distill"], "steps": STEPS, "checkpoint_every": CHECKPOINT_EVERY},
              "gates": GATES_OFF, "runs_dir": str(runs_dir)}
    first_id = None
    watcher = StepWatcher(runs_dir)
    try:
        # 1. erase-concepts from the UI; wait until its distill run on the gpu pool has checkpointed a few times
        first_id = create_run(stack, "erase-concepts/erase-concepts", params)
        deadline, orphan = time.monotonic() + 600, None
        while orphan is None and time.monotonic() < deadline:
            running = [r for r in runs_of(stack, "distill/distill-gpu") if r["state_type"] == "RUNNING"]
            orphan = running[0] if running else None
            first = api(stack, "GET", f"/flow_runs/{first_id}")
            assert first["state_type"] not in FINAL, f"first run ended before the kill: {first['state']}"
            time.sleep(0.5)
        assert orphan is not None, "the distill run never started"
        last = checkpoint_step(runs_dir)
        while time.monotonic() < deadline:  # kill just after a checkpoint swap, the next is steps away
            step = checkpoint_step(runs_dir)
            if step is not None and step >= KILL_AFTER_STEP and step != last:
                break
            last = step if step is not None else last
            time.sleep(0.05)
        else:
            raise AssertionError(f"distillation did not reach step {KILL_AFTER_STEP} (checkpoint at {last})")

        # 2. kill -9 the gpu worker and its flow-run process
        kill_worker(cfg, "gpu")
        killed_at = checkpoint_step(runs_dir)
        assert killed_at is not None, "the kill left no checkpoint (it landed in the checkpoint swap)"
        assert KILL_AFTER_STEP <= killed_at < STEPS
        watcher.start()

        # 3. a fresh gpu worker comes up; the orphan is Crashed by the zombie automation
        restart_worker_and_wait_until_crashed(stack, cfg, "gpu", orphan["id"])

        # 4. the user runs erase-concepts again with the same parameters
        second = wait_for_run(stack, create_run(stack, "erase-concepts/erase-concepts", params), timeout_s=900)
        assert second["state_type"] == "COMPLETED", second["state"]
        assert "prepare-prompts cached" in stages_line(stack, second["id"])

        # the distillation resumed: no checkpoint below the one the kill left was written again,
        # training went on to the end, and the erasure holds every step
        watcher.done.set()
        watcher.join(5)
        assert watcher.seen and min(watcher.seen) >= killed_at and watcher.seen[-1] == STEPS, \
            f"checkpoint steps after the kill at step {killed_at}: {watcher.seen}"
        [erasure] = list(runs_dir.glob("*/erasure"))
        assert json.loads((erasure / "manifest.json").read_text())["steps"] == STEPS
        assert len((erasure / "loss.csv").read_text().splitlines()) == STEPS + 1
        finished = [r for r in runs_of(stack, "distill/distill-gpu") if r["state_type"] == "COMPLETED"]
        assert len(finished) == 1, [(r["name"], r["state_type"]) for r in runs_of(stack, "distill/distill-gpu")]

        # exactly one registered version for the concept set
        versions, _ = registry(stack)
        assert list(versions) == [1], {n: v.tags.get("concepts") for n, v in versions.items()}
        assert versions[1].tags["concepts"] == "red"
    finally:
        watcher.done.set()
        cancel_if_unfinished(stack, first_id)


EVAL_ROWS, KILL_AFTER_IMAGES = 48, 8


def test_cpu_worker_killed_mid_evaluation_then_rerun_resumes_and_registers_once(stack, tmp_path):
    cfg = stack["cfg"]
    runs_dir = tmp_path / "runs"
    params = {"concepts": ["red"], **TINY,
              "evaluation": {**TINY["evaluation"], "num_inference_steps": 10, "batch_size": 4},
              "prompts": {**TINY["prompts"], "max_eval_prompts": EVAL_ROWS},
              "gates": GATES_OFF, "runs_dir": str(runs_dir)}
    first_id = None
    try:
        # 1. erase-concepts from the UI; wait until its evaluation has drawn a few images
        first_id = create_run(stack, "erase-concepts/erase-concepts", params)
        deadline = time.monotonic() + 600
        while sum(len(indexed_keys(f)) for f in image_folders(runs_dir)) < KILL_AFTER_IMAGES:
            first = api(stack, "GET", f"/flow_runs/{first_id}")
            assert first["state_type"] not in FINAL, f"first run ended before the kill: {first['state']}"
            assert time.monotonic() < deadline, "the evaluation drew no images in 600 s"
            time.sleep(0.05)

        # 2. kill -9 the cpu worker and its flow-run process, mid-generation
        kill_worker(cfg, "cpu")
        folders = image_folders(runs_dir)
        drawn = {f.name: len(indexed_keys(f)) for f in folders}
        assert sum(drawn.values()) < 2 * EVAL_ROWS, f"the evaluation had drawn everything before the kill: {drawn}"
        [eval_dir] = {f.parent.parent for f in folders}
        assert not (eval_dir / "metrics.json").exists()
        finished = {f.name: image_stamps(f) for f in folders}

        # 3. a fresh cpu worker comes up; the orphan is Crashed by the zombie automation
        restart_worker_and_wait_until_crashed(stack, cfg, "cpu", first_id)

        # 4. the user runs erase-concepts again with the same parameters
        second = wait_for_run(stack, create_run(stack, "erase-concepts/erase-concepts", params), timeout_s=900)
        assert second["state_type"] == "COMPLETED", second["state"]
        stages = stages_line(stack, second["id"])
        assert "prepare-prompts cached" in stages and "distill cached" in stages, stages

        # the evaluation resumed: no finished image drawn again, every image drawn once
        for folder in image_folders(runs_dir):
            after = image_stamps(folder)
            assert {k: after.get(k) for k in finished.get(folder.name, {})} == finished.get(folder.name, {}), \
                f"{folder.name} images drawn again after the kill ({drawn})"
            keys = indexed_keys(folder)
            assert len(keys) == len(set(keys)) == EVAL_ROWS, f"{folder.name}: {len(keys)} index lines"
        assert (eval_dir / "metrics.json").is_file()
        assert len([r for r in runs_of(stack, "distill/distill-gpu") if r["state_type"] == "COMPLETED"]) == 1

        versions, _ = registry(stack)
        assert list(versions) == [1], {n: v.tags.get("concepts") for n, v in versions.items()}
    finally:
        cancel_if_unfinished(stack, first_id)


def image_folders(runs_dir: Path) -> list[Path]:
    """The evaluation's image folders (base, erased) that have an index yet."""
    return sorted(p.parent for p in runs_dir.glob("*/eval-*/images/*/index.jsonl"))
