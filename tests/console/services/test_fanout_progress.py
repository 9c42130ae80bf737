"""The words of a fan-out's progress, on a clock we move by hand (the counting, not the
timing, is under test here; the Pilot test and the CLI test run real fan-outs)."""

from __future__ import annotations

from console.services.fanout_progress import FanoutProgress


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_live_line_counts_and_names_the_longest_running_worker() -> None:
    clock = Clock()
    progress = FanoutProgress(256, clock=clock)
    for w in range(256):
        progress.start(w)
    clock.now += 2
    for w in range(256):
        if w != 17:
            progress.finish(w, "refused" if w == 3 else "")
    clock.now += 10
    assert progress.line() == "255/256 done, 1 failed, slowest: w17 (12 s)"
    progress.finish(17)
    assert progress.finished
    assert progress.closing() == (
        "255/256 ok in 12 s; slowest: w17 (12 s), w0 (2.0 s), w1 (2.0 s); failed: w3 (refused)"
    )


def test_many_failures_are_named_up_to_a_few_then_counted() -> None:
    progress = FanoutProgress(20, clock=Clock())
    for w in range(20):
        progress.start(w)
        progress.finish(w, "timeout")
    assert progress.closing().endswith("w7 (timeout) +12 more")
    assert progress.closing().startswith("0/20 ok in 0.0 s")
