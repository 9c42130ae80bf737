"""Fixtures that start the real sandbox: the TPU API emulator on gRPC and loopback ssh workers."""

from __future__ import annotations

import os

# Tests that use JAX in this process see four CPU devices, as a v4 host has four chips; set
# before anything starts a JAX backend.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from console.adapters.history_db import HistoryStore
from console.adapters.ssh_pool import SshOptions
from console.adapters.tpu_api import CallPolicy, TpuApi
from console.sandbox.fleet_state import SANDBOX_PROJECT, SandboxFleet, SandboxTiming
from console.sandbox.runtime import Sandbox
from console.services.fleet import FleetService
from console.services.jobs import JobService
from console.services.remote import RemoteService
from console.services.session import Services

# Transitions fast enough for tests, slow enough that CREATING is observable before READY.
FAST = SandboxTiming(
    create_s=0.6,
    start_s=0.4,
    stop_s=0.3,
    delete_s=0.3,
    key_propagation_s=0.15,
    queue_accept_s=0.3,
    queue_wait_s=0.5,
)
# The default fleet's nodes ("zone/name"), however many other issues add to it.
DEFAULT_NODES = tuple(sorted(SandboxFleet.default(None).nodes))
# Retries short enough that a test of "gave up" ends quickly.
QUICK_POLICY = CallPolicy(
    timeout_s=5,
    retry_initial_s=0.01,
    retry_max_s=0.05,
    retry_total_s=1.0,
    rate_initial_s=0.05,
    rate_max_s=0.2,
    rate_total_s=10.0,
)


@pytest.fixture(autouse=True)
def _isolated_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may read the developer's gcloud or tpuconsole configuration, nor write $HOME."""
    monkeypatch.setenv("TPUCONSOLE_HOME", str(tmp_path / "tpuconsole-home"))
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    for name in (
        "CLOUDSDK_CORE_PROJECT",
        "CLOUDSDK_COMPUTE_ZONE",
        "CLOUDSDK_ACTIVE_CONFIG_NAME",
        "CLOUDSDK_CORE_ACCOUNT",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    sb = Sandbox.start(tmp_path / "sandbox-home", timing=FAST)
    try:
        yield sb
    finally:
        sb.stop()


@pytest.fixture
async def api(sandbox: Sandbox) -> AsyncIterator[TpuApi]:
    client = TpuApi.for_sandbox(sandbox.api_address, SANDBOX_PROJECT, QUICK_POLICY)
    try:
        yield client
    finally:
        await client.close()


def fleet_for(sandbox: Sandbox, zones: tuple[str, ...] = ()) -> FleetService:
    return FleetService(
        lambda: TpuApi.for_sandbox(sandbox.api_address, SANDBOX_PROJECT, QUICK_POLICY),
        zones,
        label="SANDBOX",
    )


def ssh_options_for(sandbox: Sandbox, tmp_path: Path, **overrides) -> SshOptions:
    fields = {
        "user": "tester",
        "key_path": str(sandbox.user_key_path),
        "known_hosts_path": tmp_path / "known_hosts",
        "port": sandbox.ssh_port,  # the sandbox's one sshd port, as `[ssh] port` would say
        "connect_timeout_s": 5,
        "connect_attempts": 2,
        "retry_base_s": 0.05,
    } | overrides
    return SshOptions(**fields)


@pytest.fixture
async def remote(sandbox: Sandbox, tmp_path: Path) -> AsyncIterator[RemoteService]:
    service = RemoteService(fleet_for(sandbox), ssh_options_for(sandbox, tmp_path))
    try:
        yield service
    finally:
        await service.close()
        await service.fleet.close()


@pytest.fixture
def jobs(remote: RemoteService, tmp_path: Path) -> Iterator[JobService]:
    """Jobs on the sandbox's workers, with the history in tmp_path/history.db."""
    history = HistoryStore(tmp_path / "history.db")
    try:
        yield JobService(remote, history, tmp_path / "home")
    finally:
        history.close()


@pytest.fixture
def services(jobs: JobService) -> Services:
    """Every service the TUI holds, on the sandbox, around the `jobs` fixture's JobService (so
    a test's launches are the app's). A test that needs another one says so with
    `dataclasses.replace(services, fleet=…)`."""
    return Services.build(jobs)


@contextmanager
def services_on(sandbox: Sandbox, tmp_path: Path) -> Iterator[Services]:
    """The same, on a sandbox a test started itself (a fixed clock, a fleet of its own)."""
    history = HistoryStore(tmp_path / "own-history.db")
    remote = RemoteService(fleet_for(sandbox), ssh_options_for(sandbox, tmp_path))
    try:
        yield Services.build(JobService(remote, history, tmp_path / "own-home"))
    finally:
        history.close()


async def until(pilot, condition, limit: int = 1500) -> None:
    """Let a headless app run until `condition` holds: each turn yields to its event loop.

    A condition, not a sleep, is what the tests wait on; the limit (30 s) only turns a hang
    into a failure.
    """
    for _ in range(limit):
        if condition():
            return
        await pilot.pause(0.02)
    raise AssertionError("condition not reached")


async def worker_output(
    remote: RemoteService, node, command: str, worker: int = 0
) -> tuple[int, str]:
    """Run a shell command on one worker; its exit status and its stdout lines joined."""
    out: list[str] = []
    result = await remote.run(
        node,
        str(worker),
        command,
        lambda line: out.append(line.text) if line.stream == "out" else None,
    )
    return result.worst_status, "\n".join(out)


def screen_text(app) -> str:
    """What the terminal shows now, as plain text: every row of the active screen, toasts too."""
    return "\n".join(strip.text for strip in app.screen._compositor.render_strips())


async def grant_key(sandbox: Sandbox, api: TpuApi, zone: str, name: str, user: str) -> None:
    """Put the sandbox user's key in a node's `ssh-keys` through the API, as an earlier
    `gcloud compute tpus tpu-vm ssh` would have, and wait for its guest agent to install it.

    Only for tests that are not about propagation: those let the console do it.
    """
    import asyncio

    from console.services.ssh_access import with_user_key

    public = " ".join(Path(f"{sandbox.user_key_path}.pub").read_text().split()[:2])
    node = await api.get_node(zone, name)
    entry = f"{user}:{public} {user}"
    await api.wait_operation(
        await api.update_metadata(zone, name, with_user_key(node.metadata, entry)), poll_s=0.05
    )
    blob = public.split()[1]
    for _ in range(500):  # the guest agent's delay: a condition, not a sleep
        if sandbox.fleet.authorized(zone, name, user, blob):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"the key never reached {name}")


def fleet_row_keys(app) -> list[str]:
    """The fleet table's rows, top to bottom, as node keys (zone/name)."""
    from textual.widgets import DataTable

    table = app.screen.query_one("#fleet", DataTable)
    return [row.key.value for row in table.ordered_rows]


def fleet_loaded(app) -> bool:
    """The fleet screen shows the default sandbox nodes."""
    try:
        return set(DEFAULT_NODES) <= set(fleet_row_keys(app))
    except Exception:  # another screen is on top, or the table is not mounted yet
        return False


async def cursor_to(pilot, key: str) -> None:
    """Move the fleet table's cursor onto a node by pressing up or down, as a user would."""
    rows = fleet_row_keys(pilot.app)
    here = rows.index(pilot.app.screen.cursor_node_key())
    there = rows.index(key)
    await pilot.press(*(["down"] * (there - here) or ["up"] * (here - there)))
    assert pilot.app.screen.cursor_node_key() == key


async def sshd_up(sandbox: Sandbox, zone: str, name: str, workers: tuple[int, ...] = (0,)) -> None:
    """Wait until the named workers' sshd answers: READY comes before it, as on Google Cloud,
    so a test that ssh-es right after a create waits on this condition (30 s turns a hang into
    a failure)."""
    import asyncio

    for _ in range(1500):
        if all(sandbox.worker_address(zone, name, w) is not None for w in workers):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"the sshd of {name} never answered")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The slow end-to-end runs go first, so that `make test`'s two xdist workers start them
    early and the short tests fill in around them, instead of one long run ending the suite
    alone (stable: the order within each kind is kept)."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
