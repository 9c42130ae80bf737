"""Each worker's duty cycle over the last minutes, one sparkline a worker, under the log status.

It shows what the log screen hands it (the chip service's per-worker history); a worker whose
numbers are missing says why instead of drawing zeros.
"""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from console.models import ChipMetrics
from console.present.chips import sparkline

WIDTH = 60  # samples shown: about a minute at one poll a second
MAX_WORKERS = 8  # beyond that, one line says how many more (`tpuconsole top` shows all)


def duty_lines(
    metrics: ChipMetrics, history: dict[int, list[float | None]], width: int = WIDTH
) -> Text:
    out = Text(no_wrap=True, overflow="ellipsis")
    for i, worker in enumerate(metrics.workers):
        if i == MAX_WORKERS:
            out.append(f"\n… {len(metrics.workers) - MAX_WORKERS} more workers", style="dim")
            break
        if i:
            out.append("\n")
        out.append(f"w{worker.worker} duty ", style="bold")
        out.append(sparkline(history.get(worker.worker, []), width).rjust(width), style="cyan")
        peak = worker.peak_duty_pct
        if worker.state == "ok" and peak is not None:
            out.append(f" {peak:3.0f}%")
        else:
            out.append(f" {worker.label}", style="yellow")
            if worker.reason:
                out.append(f": {worker.reason}", style="dim")
    if metrics.standin:
        out.append(
            "\n(sandbox stand-in: duty from the CPU time of the chips' holders)", style="dim"
        )
    return out


class DutySparklines(Widget):
    text: reactive[Text] = reactive(Text, layout=True)

    def render(self) -> Text:
        return self.text
