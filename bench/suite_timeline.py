"""How a ``make test`` run loaded its xdist workers: per worker, its busy time, its idle tail and the
work units it ran (heaviest first), from the timeline ``tests/conftest.py`` writes.

    SDD_TEST_TIMELINE=/tmp/timeline.jsonl make test
    .venv/bin/python bench/suite_timeline.py /tmp/timeline.jsonl

The worker that ends last is the critical path; a unit moved to the other worker, or made cheaper,
shortens the suite only if it is on that path.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path


def main(path: Path) -> None:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    t0, t1 = min(r["start"] for r in rows), max(r["end"] for r in rows)
    by_worker: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_worker[r["worker"]].append(r)
    print(f"suite: {t1 - t0:.0f} s wall from the first test's start to the last test's end, {len(rows)} tests\n")
    print("| worker | tests | busy s | ends at s | idle at the end s | heaviest units (s) |")
    print("|---|---|---|---|---|---|")
    for worker, tests in sorted(by_worker.items()):
        units: dict[str, float] = defaultdict(float)
        for r in tests:
            units[r["unit"]] += r["end"] - r["start"]
        end = max(r["end"] for r in tests) - t0
        heavy = ", ".join(f"{u} {s:.0f}" for u, s in sorted(units.items(), key=lambda kv: -kv[1])[:6])
        print(f"| {worker} | {len(tests)} | {sum(units.values()):.0f} | {end:.0f} | {t1 - t0 - end:.0f} | {heavy} |")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/timeline.jsonl"))
