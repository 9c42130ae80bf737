"""The sandbox's stand-in for libtpu opening the chips: a JAX plugin that holds the devices.

On a TPU VM, libtpu opens every chip of the host (`/dev/accel*`, `/dev/vfio/*`) when JAX starts
its backends, or the ones `TPU_VISIBLE_CHIPS` names, and keeps them open until the process ends;
the probe and `lsof /dev/accel0` see it there. Sandbox workers have stand-in device files
(`TPUCONSOLE_DEVICES`) and run JAX on CPU; this module is on their PYTHONPATH, JAX imports
it while it discovers backends (`jax_plugins` namespace packages are imported and their
`initialize()` called, as jax._src.xla_bridge.discover_pjrt_plugins does), and it opens those
files the same way, so a JAX job in the sandbox holds its worker's "chips" as it would a TPU's.
It registers no backend and takes no lock: the sandbox's lockfile stays what tests put there.
"""

import contextlib
import glob
import os
import re

_HELD: list = []  # open for the life of the process, as libtpu keeps them


def _chip_index(path):
    match = re.search(r"(\d+)$", path)
    return int(match.group(1)) if match else -1


def initialize():
    pattern = os.environ.get("TPUCONSOLE_DEVICES", "")
    if not pattern or _HELD:
        return
    visible = os.environ.get("TPU_VISIBLE_CHIPS", "").strip()
    wanted = {int(x) for x in visible.split(",") if x.strip().isdigit()} if visible else None
    for path in sorted(glob.glob(pattern), key=_chip_index):
        if wanted is not None and _chip_index(path) not in wanted:
            continue
        with contextlib.suppress(OSError):
            _HELD.append(open(path, "rb"))  # noqa: SIM115 - held open on purpose
