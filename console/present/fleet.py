"""The fleet as text: what `ls` says beyond the table (fleet_columns holds the columns)."""

from __future__ import annotations

from console.models import FleetSnapshot
from console.services.fleet_columns import unreachable_groups


def unreachable_lines(snapshot: FleetSnapshot) -> list[str]:
    """One sentence per zone (or group of zones failing alike) that did not answer."""
    return [
        f"zone {where} unreachable: {failure.reason} {failure.remedy}"
        for where, failure in unreachable_groups(snapshot)
    ]
