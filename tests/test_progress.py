"""Progress log lines (sdd.progress): throttled, with rate and ETA, always one at the end."""

from __future__ import annotations

from sdd.progress import ProgressLog, duration


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_duration_reads_like_a_person_writes_it():
    assert [duration(s) for s in (4.4, 65, 3725)] == ["4 s", "1 min 5 s", "1 h 2 min"]


def test_lines_are_throttled_and_carry_rate_eta_and_the_note():
    clock, lines = Clock(), []
    log = ProgressLog("distill red", 100, lines.append, every_s=5.0, clock=clock)
    for step in range(1, 101):
        clock.now += 0.5  # 2 steps/s: a line every 10 steps
        log(step, f"loss {step}")
    assert len(lines) == 10
    assert lines[0] == "distill red: 10/100 steps (10 %), 2 steps/s, ETA 45 s, loss 10"
    assert lines[-1] == "distill red: 100/100 steps (100 %), 2 steps/s, done in 50 s, loss 100"


def test_a_short_stage_logs_once_at_its_end():
    clock, lines = Clock(), []
    log = ProgressLog("generate (base)", 3, lines.append, unit="images", clock=clock)
    for done in (1, 2, 3):
        clock.now += 0.1
        log(done)
    assert lines == ["generate (base): 3/3 images (100 %), 10 images/s, done in 0 s"]


def test_the_rate_counts_only_this_runs_work():
    clock, lines = Clock(), []
    resumed = ProgressLog("distill red", 100, lines.append, start=None, every_s=1.0, clock=clock)
    for step in range(61, 101):  # resumed at step 60: 40 steps in 20 s
        clock.now += 0.5
        resumed(step)
    assert lines[-1] == "distill red: 100/100 steps (100 %), 2 steps/s, done in 20 s"
    assert "ETA 19 s" in lines[0] and lines[0].startswith("distill red: 62/100")
