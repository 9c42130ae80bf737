"""Chips as text: the fleet's HBM and DUTY cells, the node's per-chip rows, `top`, sparklines.

Numbers come from services/chip_metrics.py (ChipMetrics); where a number is missing, the text
says why in the words of models.CHIP_STATES. The `top --json` shape is documented in the README
("tpuconsole top") and pinned by a test: add keys at will, never rename or drop one.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from console.models import ChipMetrics, ChipReading, WorkerChips

BAR_WIDTH = 10
SPARK = "▁▂▃▄▅▆▇█"
STANDIN_NOTE = (
    "sandbox stand-in numbers: HBM from the memory of the processes holding each chip, "
    "duty cycle from their CPU time"
)


def human_bytes(n: int | None) -> str:
    """GiB-based, as tpu-info prints HBM: 7.9G, 512M, 0."""
    if n is None:
        return "?"
    if n == 0:
        return "0"
    for unit, size in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= size:
            value = n / size
            return f"{value:.1f}{unit}" if value < 10 else f"{value:.0f}{unit}"
    return f"{n}B"


def _span_text(low: str, high: str) -> str:
    return low if low == high else f"{low}–{high}"


def _missing_mark(metrics: ChipMetrics) -> str:
    """' +2?' when two workers' numbers are missing or old among live ones."""
    problems = [w for w in metrics.problems() if w.state not in ("no_program",)]
    return f" +{len(problems)}?" if problems else ""


def _all_down(metrics: ChipMetrics) -> str:
    """The one state every worker shares when none has numbers ("" otherwise)."""
    states = {w.state for w in metrics.workers}
    if any(c.duty_pct is not None for c in metrics.chips):
        return ""
    if len(states) == 1:
        return metrics.workers[0].label if metrics.workers else "-"
    return "no numbers"


def hbm_cell(metrics: ChipMetrics | None) -> str:
    """Per node: min–max HBM in use over its chips, of the chips' total."""
    if metrics is None:
        return "-"
    if down := _all_down(metrics):
        return down
    if all(w.state == "no_program" for w in metrics.workers):
        return "0 (idle)"
    span = metrics.hbm_used_range
    if span is None:
        return "?"
    text = _span_text(human_bytes(span[0]), human_bytes(span[1]))
    total = metrics.hbm_total
    return text + (f"/{human_bytes(total)}" if total else "") + _missing_mark(metrics)


def duty_cell(metrics: ChipMetrics | None) -> str:
    """Per node: min–max duty cycle over its chips, percent."""
    if metrics is None:
        return "-"
    if down := _all_down(metrics):
        return down
    if all(w.state == "no_program" for w in metrics.workers):
        return "0% (idle)"
    span = metrics.duty_range
    if span is None:
        return "?"
    return _span_text(f"{span[0]:.0f}", f"{span[1]:.0f}") + "%" + _missing_mark(metrics)


def bar(fraction: float | None, width: int = BAR_WIDTH) -> str:
    """▕████▌     ▏ for a fraction; blank when unknown."""
    if fraction is None:
        return " " * width
    fraction = min(max(fraction, 0.0), 1.0)
    eighths = round(fraction * width * 8)
    if fraction > 0 and eighths == 0:
        eighths = 1  # in use, however little: a sliver, not an empty bar
    full, part = divmod(eighths, 8)
    text = "█" * full + ("▏▎▍▌▋▊▉"[part - 1] if part else "")
    return text.ljust(width)


def sparkline(values: Iterable[float | None], width: int = 40, top: float = 100.0) -> str:
    """The last `width` values, each one block high by its share of `top`; unknown is a space."""
    out = []
    for v in list(values)[-width:]:
        if v is None:
            out.append(" ")
        else:
            out.append(SPARK[min(len(SPARK) - 1, max(0, round(v / top * (len(SPARK) - 1))))])
    return "".join(out)


CHIP_HEADER = ("WORKER", "CHIP", "HBM USED", "HBM", "DUTY", "DUTY %", "PID", "COMMAND", "NOTE")


def chip_row(worker: WorkerChips, chip: ChipReading) -> tuple[str, ...]:
    """One chip: numbers, bars, who holds it, and why a number is missing or old."""
    hbm = (
        f"{human_bytes(chip.hbm_used)}/{human_bytes(chip.hbm_total)}"
        if chip.hbm_used is not None and chip.hbm_total
        else (human_bytes(chip.hbm_used) if chip.hbm_used is not None else "-")
    )
    duty = f"{chip.duty_pct:.0f}%" if chip.duty_pct is not None else "-"
    note = chip.missing
    if chip.stale_s:
        note = f"{note} (numbers {chip.stale_s:.0f} s old)".strip()
    return (
        f"w{worker.worker}",
        str(chip.chip),
        hbm,
        bar(chip.hbm_fraction),
        duty,
        bar(chip.duty_pct / 100 if chip.duty_pct is not None else None),
        str(chip.pid) if chip.pid else "-",
        _short(chip.command) if chip.command else "-",
        note,
    )


def chip_rows(metrics: ChipMetrics) -> list[tuple[str, ...]]:
    """A row per chip of every worker; a worker with no chips to show has one row saying why."""
    rows: list[tuple[str, ...]] = []
    for worker in metrics.workers:
        if not worker.chips:
            rows.append((f"w{worker.worker}", "-", "-", "", "-", "", "-", "-", worker.label))
        rows.extend(chip_row(worker, c) for c in worker.chips)
    return rows


def worker_reasons(metrics: ChipMetrics) -> list[str]:
    """One line per worker whose numbers are missing, zero or old: what and what to do."""
    out = []
    for w in metrics.problems():
        text = f"w{w.worker}: {w.label}"
        if w.reason:
            text += f": {w.reason}"
        if w.remedy:
            text += f" {w.remedy}"
        out.append(text)
    return out


def top_lines(metrics: ChipMetrics) -> list[str]:
    """`tpuconsole top NODE`: the per-chip table of every worker, aligned, then the reasons."""
    rows: list[tuple[str, ...]] = [CHIP_HEADER, *chip_rows(metrics)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(CHIP_HEADER))]
    when = metrics.taken_at.astimezone().strftime("%H:%M:%S")
    head = f"{metrics.name} · {len(metrics.workers)} workers · {len(metrics.chips)} chips · {when}"
    lines = [head + (f" · {STANDIN_NOTE}" if metrics.standin else ""), ""]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    reasons = worker_reasons(metrics)
    if reasons:
        lines += ["", *reasons]
    return lines


def _short(text: str, limit: int = 40) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# The keys of `top --json`: documented in the README and pinned by a test.
TOP_JSON_KEYS = ("node", "name", "taken_at", "standin", "workers")
WORKER_JSON_KEYS = ("worker", "state", "reason", "remedy", "stale", "read_at", "chips")
CHIP_JSON_KEYS = (
    "chip",
    "hbm_used_bytes",
    "hbm_total_bytes",
    "duty_cycle_pct",
    "pid",
    "command",
    "user",
    "missing",
    "stale_s",
)


def metrics_as_json(metrics: ChipMetrics) -> dict[str, Any]:
    return {
        "node": metrics.node,
        "name": metrics.name,
        "taken_at": metrics.taken_at.isoformat(),
        "standin": metrics.standin,
        "workers": [
            {
                "worker": w.worker,
                "state": w.state,
                "reason": w.reason,
                "remedy": w.remedy,
                "stale": w.stale,
                "read_at": w.read_at.isoformat() if w.read_at else None,
                "chips": [
                    {
                        "chip": c.chip,
                        "hbm_used_bytes": c.hbm_used,
                        "hbm_total_bytes": c.hbm_total,
                        "duty_cycle_pct": c.duty_pct,
                        "pid": c.pid,
                        "command": c.command,
                        "user": c.user,
                        "missing": c.missing,
                        "stale_s": c.stale_s,
                    }
                    for c in w.chips
                ],
            }
            for w in metrics.workers
        ],
    }
