"""Uploading a folder to every worker: tar first, SFTP as the fallback, changed files only."""

from __future__ import annotations

from pathlib import Path

import pytest

from console.services.remote import RemoteService
from console.services.shipping import Shipper
from tests.conftest import worker_output


def _plugin(tmp_path: Path) -> Path:
    root = tmp_path / "plugins"
    (root / "sglang_jax").mkdir(parents=True)
    (root / "sglang_jax" / "run_multi_engine_threads.py").write_text("print('v1')\n")
    (root / "tunix.py").write_text("STEPS = 10\n")
    (root / "__pycache__").mkdir()
    (root / "__pycache__" / "junk.pyc").write_bytes(b"\0")
    return root


async def _cat(remote: RemoteService, node, path: str, worker: int) -> str:
    return (await worker_output(remote, node, f"cat {path} 2>&1", worker))[1]


@pytest.mark.parametrize("method", ["tar", "sftp"])
async def test_upload_reaches_every_worker_and_then_sends_only_changes(
    remote: RemoteService, tmp_path: Path, method: str
) -> None:
    root = _plugin(tmp_path)
    node = await remote.fleet.find_node("demo-v4-16")
    shipper = Shipper(remote)
    first = await shipper.upload(node, "all", root, "work/plugins", method=method)
    assert [(o.worker, sorted(o.sent), o.method) for o in first] == [
        (w, ["sglang_jax/run_multi_engine_threads.py", "tunix.py"], method) for w in (0, 1)
    ]
    for w in (0, 1):
        assert await _cat(remote, node, "work/plugins/tunix.py", w) == "STEPS = 10"
        junk = await _cat(remote, node, "work/plugins/__pycache__/junk.pyc", w)
        assert "No such file" in junk

    (root / "tunix.py").write_text("STEPS = 20\n")
    second = await shipper.upload(node, "all", root, "work/plugins", method=method)
    assert [(o.sent, o.unchanged) for o in second] == [(("tunix.py",), 1)] * 2
    assert await _cat(remote, node, "work/plugins/tunix.py", 1) == "STEPS = 20"
    third = await shipper.upload(node, "all", root, "work/plugins", method=method)
    assert all(o.sent == () and o.method == "none" for o in third)


async def test_a_missing_local_folder_is_a_clear_error(
    remote: RemoteService, tmp_path: Path
) -> None:
    from console.models import FleetError

    node = await remote.fleet.find_node("demo-v4-8")
    with pytest.raises(FleetError, match="is not a folder"):
        await Shipper(remote).upload(node, "all", tmp_path / "nope", "x")
