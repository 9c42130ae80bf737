"""A job's findings above its log: each diagnosis with cause and remedy, then its results
(DONE lines, engine timings, loss and reward sparklines). Hidden while there is nothing."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from console.models import Diagnosis
from console.services.metrics import JobMetrics, sparkline
from console.ui.plain import lines, styled


def training_line(worker: int, metrics: JobMetrics) -> str:
    """Loss and mean reward side by side: sparklines with their latest values, no markup."""
    parts = [f"w{worker}"]
    for label, series in (
        ("loss", metrics.losses.get(worker)),
        ("reward", metrics.rewards.get(worker)),
    ):
        if series:
            step, value = series[-1]
            spark = sparkline([v for _, v in series], width=20)
            parts.append(f"{label} {spark} step {step}: {value:.6g}")
    return "   ".join(parts)


def finding_text(d: Diagnosis) -> Text:
    where = f"w{d.worker}: " if d.worker is not None else ""
    return styled(
        (where + d.title, "b red"),
        f" — {d.evidence[:120]}\n   ",
        ("cause", "b"),
        f" {d.cause}\n   ",
        ("remedy", "b"),
        f" {d.remedy}",
    )


class FindingsPanel(Static):
    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("", id=id, markup=False)

    def show(self, found: list[Diagnosis], metrics: JobMetrics) -> None:
        shown: list[Text | str] = [finding_text(d) for d in found]
        summary = metrics.summary()
        if summary:
            shown.append(styled(("results", "b green"), f" {summary}"))
        engines: dict[int, list[tuple[int, float]]] = {}
        for (worker, engine), seconds in sorted(metrics.engine_sec.items()):
            engines.setdefault(worker, []).append((engine, seconds))
        for worker, timings in engines.items():
            shown.append(
                f"w{worker} generate_sec " + "  ".join(f"e{e} {t:.3f}" for e, t in timings)
            )
        for worker in sorted({*metrics.losses, *metrics.rewards}):
            shown.append(training_line(worker, metrics))
        self.update(lines(shown))
        self.set_class(bool(shown), "shown")
