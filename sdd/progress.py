"""Progress as log lines, for where no progress bar is seen (a Prefect flow's log, ``make demo``).

:class:`ProgressLog` turns "n of total done" calls into one line every few seconds, with the rate
and the time left: ``distill red from toy: 120/320 steps (38 %), 3.1 steps/s, ETA 1 min 5 s, loss 0.0021``.
The CLI keeps its tqdm bars; the flows pass their run logger's ``info``.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 5 s``, ``1 h 2 min``."""
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


class ProgressLog:
    """Calls ``log`` with a progress line at most every ``every_s`` seconds, and always at the end.

    ``start`` is what was done before this run (the rate counts only what this run does); ``None``
    takes it from the first call, as one unit before it (a resumed loop reporting each step).
    """

    def __init__(self, what: str, total: int, log: Callable[[str], None], *, unit: str = "steps",
                 start: int | None = 0, every_s: float = 5.0, clock: Callable[[], float] = time.monotonic):
        self.what, self.total, self.log, self.unit, self.every_s, self.clock = what, total, log, unit, every_s, clock
        self.start, self.started = start, clock()
        self.last_logged = self.started  # so a short stage logs once, at its end

    def __call__(self, done: int, note: str = "") -> None:
        now = self.clock()
        if self.start is None:
            self.start = done - 1
        finished = done >= self.total
        if not finished and now - self.last_logged < self.every_s:
            return
        self.last_logged = now
        self.log(self.line(done, now) + (f", {note}" if note else ""))

    def line(self, done: int, now: float) -> str:
        pct = 100 * done / self.total if self.total else 100.0
        text = f"{self.what}: {done}/{self.total} {self.unit} ({pct:.0f} %)"
        elapsed, progressed = now - self.started, done - self.start
        if elapsed > 0 and progressed > 0:
            rate = progressed / elapsed
            text += f", {rate:.3g} {self.unit}/s"
            text += f", ETA {duration((self.total - done) / rate)}" if done < self.total else \
                f", done in {duration(elapsed)}"
        return text
