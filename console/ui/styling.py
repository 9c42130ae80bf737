"""How fleet values look: colours for states, health and provisioning, in one place."""

from __future__ import annotations

from rich.text import Text

from console.models import ALARM_STATES, TRANSIENT_STATES


def state_text(state: str) -> Text:
    if state == "READY":
        return Text(state, style="bold green")
    if state in ALARM_STATES:
        return Text(state, style="bold white on red")
    if state in TRANSIENT_STATES:
        return Text(state, style="bold yellow")
    if state.isdigit():  # newer than our API client: shown as its number, never hidden
        return Text(state, style="bold magenta")
    return Text(state, style="dim")


def health_text(health: str) -> Text:
    if not health or health == "-":
        return Text("-", style="dim")
    if health == "HEALTHY":
        return Text(health, style="green")
    return Text(health, style="bold red")


def provisioning_text(value: str) -> Text:
    return Text(value, style="magenta" if value in {"spot", "preemptible"} else "")
