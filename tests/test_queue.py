"""A queue under load: three ``erase-concepts`` runs with different concept sets submitted at once.

The real local stack (Prefect and MLflow servers, cpu + gpu process workers) on free ports; the runs
are created through the REST API the way the UI's "Run" button creates them. The gpu pool's
concurrency limit (1, set by ``sdd stack up``) is the queue: each erase-concepts run hands its
distillation to the ``distill/distill-gpu`` deployment, and the runs the pool cannot take yet wait
``Scheduled`` (then ``Late``) in the pool's ``default`` work queue -- what the UI's work-pool page
shows, with the slot holder in its concurrency status. A watcher polls the API once a second for the
queue depth (waiting gpu runs) and the slots in use.

All three must complete; the gpu runs never overlap; MLflow holds one version per concept set (three
in all, none lost, none twice). Three is the fewest that loads the queue with a backlog (two waiting
behind the slot holder) and a multi-concept set; six took 2.5 minutes more of the suite's critical
path for the same checks (issue 28). The wall time, the deepest queue and the order the gpu runs started in
are printed (docs/reliability.md records them).
"""

from __future__ import annotations

import threading
import time
from datetime import datetime
from itertools import pairwise

import pytest
from helpers import GATES_OFF, TINY, api, create_run, registry, runs_of, wait_for_run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

CONCEPT_SETS = [["red"], ["green"], ["purple", "square"]]
WAITING = {"SCHEDULED", "PENDING"}  # "Late" is a Scheduled state by name


class QueueWatcher(threading.Thread):
    """Polls the gpu pool once a second: how many runs wait, how many hold a slot."""

    def __init__(self, stack):
        super().__init__(daemon=True)
        self.stack, self.done = stack, threading.Event()
        self.max_waiting, self.max_slots, self.samples, self.errors = 0, 0, 0, []

    def poll(self) -> None:
        runs = api(self.stack, "POST", "/flow_runs/filter",
                   {"work_pools": {"name": {"any_": ["gpu"]}},
                    "flow_runs": {"state": {"type": {"any_": ["SCHEDULED", "PENDING", "RUNNING"]}}}})
        waiting = sum(r["state_type"] in WAITING for r in runs)
        status = api(self.stack, "POST", "/work_pools/gpu/concurrency_status", {})
        self.max_waiting = max(self.max_waiting, waiting)
        self.max_slots = max(self.max_slots, status["active_slots"])
        self.samples += 1

    def run(self):
        while not self.done.is_set():
            try:
                self.poll()
            except Exception as e:  # noqa: BLE001 - a slow answer is no failure of the queue; the test
                self.errors.append(repr(e))  # asserts enough polls succeeded and shows these if not
            self.done.wait(1.0)


def started(run: dict) -> datetime:
    return datetime.fromisoformat(run["start_time"])


def ended(run: dict) -> datetime:
    return datetime.fromisoformat(run["end_time"])


def test_three_runs_at_once_queue_on_the_gpu_pool_and_each_registers_once(stack):
    pool = api(stack, "GET", "/work_pools/gpu")
    assert pool["concurrency_limit"] == 1, pool
    tiny = {**TINY, "gates": GATES_OFF, "runs_dir": str(stack["root"] / "runs-queue"),
            "evaluation": {**TINY["evaluation"], "fid_features": "none"},  # as tests/test_postgres_stack.py:
            "prompts": {**TINY["prompts"], "max_eval_prompts": 4}}  # the queue is the subject, not the scores
    watcher = QueueWatcher(stack)
    watcher.start()
    began = time.monotonic()
    try:
        ids = {tuple(concepts): create_run(stack, "erase-concepts/erase-concepts", {"concepts": concepts, **tiny})
               for concepts in CONCEPT_SETS}
        finished = {concepts: wait_for_run(stack, run_id, timeout_s=2100) for concepts, run_id in ids.items()}
    finally:
        watcher.done.set()
        watcher.join(10)
    wall_s = time.monotonic() - began
    failed = {c: r["state"] for c, r in finished.items() if r["state_type"] != "COMPLETED"}
    assert not failed, failed

    # one distill run per erasure on the gpu pool, one at a time
    gpu_runs = sorted(runs_of(stack, "distill/distill-gpu"), key=started)
    assert len(gpu_runs) == len(CONCEPT_SETS) and all(r["state_type"] == "COMPLETED" for r in gpu_runs), \
        [(r["name"], r["state_type"]) for r in gpu_runs]
    assert all(r["work_pool_name"] == "gpu" for r in gpu_runs)
    overlaps = [(a["name"], b["name"]) for a, b in pairwise(gpu_runs) if started(b) < ended(a)]
    assert not overlaps, f"gpu runs overlapped despite the pool's limit of 1: {overlaps}"
    assert watcher.max_slots <= 1 and watcher.samples >= 10, (watcher.max_slots, watcher.samples, watcher.errors[:3])
    assert watcher.max_waiting >= 1, "no gpu run ever waited: the test did not load the queue"

    # each concept set registered exactly once
    versions, _ = registry(stack)
    registered = sorted(tuple(sorted(v.tags["concepts"].split(","))) for v in versions.values())
    assert registered == sorted(tuple(sorted(c)) for c in ids), registered
    keys = [v.tags["registration_key"] for v in versions.values()]
    assert len(versions) == len(CONCEPT_SETS) and len(set(keys)) == len(keys), registered
    waits = [(started(r) - datetime.fromisoformat(r["expected_start_time"])).total_seconds() for r in gpu_runs]
    print(f"queue: {len(CONCEPT_SETS)} erase-concepts runs at once, wall {wall_s:.0f} s; gpu pool: max "
          f"{watcher.max_waiting} waiting, max {watcher.max_slots} slot in use ({watcher.samples} polls, "
          f"{len(watcher.errors)} slow); gpu waits {[round(w) for w in waits]} s in start order "
          f"{[r['parameters'].get('concepts') for r in gpu_runs]}")
