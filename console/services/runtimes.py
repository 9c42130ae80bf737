"""Which TPU software version (runtime version) a new VM gets when the user names none.

Each generation boots its own base image; the table is Cloud TPU's documented one (see
shared/SEED-NOTES.md, "Runtime versions by generation"), SkyPilot picks the same defaults.
"""

from __future__ import annotations

from collections.abc import Sequence

from console.models import accelerator_shape

# Cloud TPU docs ("TPU software versions"): v2-v4 boot tpu-ubuntu2204-base; v5e, v5p and
# v6e have their own images. SkyPilot's "Missing runtime_version ..., using default
# (v2-alpha-tpuv5)" for v5p agrees.
RUNTIME_BY_GENERATION = {
    "v2": "tpu-ubuntu2204-base",
    "v3": "tpu-ubuntu2204-base",
    "v4": "tpu-ubuntu2204-base",
    "v5e": "v2-alpha-tpuv5-lite",
    "v5p": "v2-alpha-tpuv5",
    "v6e": "v2-alpha-tpuv6e",
}
FALLBACK_RUNTIME = "tpu-ubuntu2204-base"


def default_runtime(accelerator_type: str, offered: Sequence[str] = ()) -> str:
    """The generation's base image; among `offered` (the zone's ListRuntimeVersions) if given.

    When the zone lists versions but not the generation's base image, the zone's own choice
    for that generation wins (the first version naming it), else the table's: the API then
    says what is wrong, in its words.
    """
    version = accelerator_shape(accelerator_type).version
    wanted = RUNTIME_BY_GENERATION.get(version, FALLBACK_RUNTIME)
    if not offered or wanted in offered:
        return wanted
    marker = {"v5e": "tpuv5-lite", "v5p": "tpuv5", "v6e": "tpuv6e", "v4": "v4"}.get(version, "")
    named = [v for v in offered if marker and marker in v and (version != "v5p" or "lite" not in v)]
    return named[0] if named else wanted


def generation_label(accelerator_type: str) -> str:
    """ "v5e" for v5litepod-8: how the progress line says why a version was chosen."""
    return accelerator_shape(accelerator_type).version
