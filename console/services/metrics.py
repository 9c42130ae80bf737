"""Results read from the runners' own lines: per-engine timings, loss and reward, the DONE line.

The formats are the seeds' runners' (remote/multi_engine.py and the GRPO script print them;
`Train step N reward_mean=R` is remote/grpo.py's, beside Tunix's loss line).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from console.services.lines import matching_lines

ENGINE_RE = re.compile(r"\[engine (\d+)\] generate_sec=([0-9.]+)")
DONE_ENGINES_RE = re.compile(r"DONE: engines=(\d+) wall_sec=([0-9.]+)")
LOSS_RE = re.compile(r"Train step (\d+) training loss: ([-0-9.eE+]+)")
REWARD_RE = re.compile(r"Train step (\d+) reward_mean=([-0-9.eE+]+)")
DONE_STEPS_RE = re.compile(r"DONE: steps=(\d+) elapsed_sec=([0-9.]+)")
_ANY_RESULT = re.compile(
    rb"\[engine \d+\] generate_sec=|DONE: |Train step \d+ (?:training loss|reward_mean=)"
)
_RESULT_ANCHORS = (b"generate_sec=", b"DONE: ", b"training loss", b"reward_mean=")
CONCURRENT_SLACK = 1.25  # wall time within 25% of the slowest engine counts as concurrent


@dataclass
class JobMetrics:
    """What a run achieved so far, per worker where it matters."""

    engine_sec: dict[tuple[int, int], float] = field(default_factory=dict)  # (worker, engine)
    losses: dict[int, list[tuple[int, float]]] = field(default_factory=dict)  # worker -> steps
    rewards: dict[int, list[tuple[int, float]]] = field(default_factory=dict)  # worker -> steps
    done: dict[int, str] = field(default_factory=dict)  # worker -> the DONE line
    wall_sec: dict[int, float] = field(default_factory=dict)

    def feed(self, worker: int, line: str) -> bool:
        """Take one line; True when it carried a result."""
        if m := ENGINE_RE.search(line):
            self.engine_sec[(worker, int(m.group(1)))] = float(m.group(2))
        elif m := LOSS_RE.search(line):
            self.losses.setdefault(worker, []).append((int(m.group(1)), float(m.group(2))))
        elif m := REWARD_RE.search(line):
            self.rewards.setdefault(worker, []).append((int(m.group(1)), float(m.group(2))))
        elif m := DONE_ENGINES_RE.search(line) or DONE_STEPS_RE.search(line):
            self.done[worker] = line.strip()
            self.wall_sec[worker] = float(m.group(2))
        else:
            return False
        return True

    def feed_chunk(self, worker: int, data: bytes) -> bool:
        """Complete lines in bulk: only the lines that carry results are decoded."""
        found = False
        for _, line in matching_lines(_ANY_RESULT, data, _RESULT_ANCHORS):
            found = self.feed(worker, line) or found
        return found

    def as_json(self) -> dict:
        """For the history: what the job screen and `jobs show` need once the log is gone."""
        return {
            "summary": self.summary(),
            "losses": {str(w): s for w, s in sorted(self.losses.items())},
            "rewards": {str(w): s for w, s in sorted(self.rewards.items())},
            "engine_sec": {f"w{w}/e{e}": t for (w, e), t in sorted(self.engine_sec.items())},
            "done": {str(w): line for w, line in sorted(self.done.items())},
        }

    def concurrency(self, worker: int) -> str:
        """How the seeds judged a multi-engine run: wall time against its engines' times."""
        times = [t for (w, _), t in self.engine_sec.items() if w == worker]
        wall = self.wall_sec.get(worker)
        if not times or wall is None:
            return ""
        if wall <= max(times) * CONCURRENT_SLACK:
            return f"concurrent (wall {wall:.3f} s ≈ slowest engine {max(times):.3f} s)"
        if wall >= sum(times) * 0.9:
            return f"serial (wall {wall:.3f} s ≈ sum of engines {sum(times):.3f} s)"
        return f"partly concurrent (wall {wall:.3f} s; engines {min(times):.3f}–{max(times):.3f} s)"

    def summary(self) -> str:
        parts = []
        for worker, line in sorted(self.done.items()):
            verdict = self.concurrency(worker)
            parts.append(f"w{worker}: {line}" + (f" — {verdict}" if verdict else ""))
        for worker, series in sorted(self.losses.items()):
            if worker not in self.done and series:
                step, loss = series[-1]
                reward = self.rewards.get(worker)
                tail = f", reward {reward[-1][1]:.4g}" if reward else ""
                parts.append(f"w{worker}: step {step}, loss {loss:.4f}{tail}")
        return "; ".join(parts)


def sparkline(values: list[float], width: int = 30) -> str:
    """A curve (loss, reward) in one line of block characters."""
    if not values:
        return ""
    values = values[-width:]
    low, high = min(values), max(values)
    bars = "▁▂▃▄▅▆▇█"
    if high == low:
        return bars[3] * len(values)
    return "".join(bars[int((v - low) / (high - low) * (len(bars) - 1))] for v in values)
