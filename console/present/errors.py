"""An error as the user reads it, in the CLI's last line and in a screen's notification alike."""

from __future__ import annotations

from console.models import ConsoleError, FleetError


def error_sentence(exc: ConsoleError) -> str:
    """The reason and the remedy, and the API's code when it has one."""
    code = getattr(exc, "code", "")
    said = str(exc)
    if isinstance(exc, FleetError) and code and code.isupper():
        stop = "." if said.endswith(".") else ""  # the code inside the sentence, before its stop
        said = f"{said.removesuffix('.')} [{code}]{stop}"
    return said
