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


def _folder_with_links(tmp_path: Path) -> Path:
    """A plugin folder as people have them: links to a shared file and folder, a stale link,
    a link back up the tree."""
    outside = tmp_path / "shared"
    (outside / "lib").mkdir(parents=True)
    (outside / "secret.cfg").write_text("key = 1\n")
    (outside / "lib" / "helper.py").write_text("HELP = True\n")
    root = tmp_path / "plugins"
    (root / "sub").mkdir(parents=True)
    (root / "main.py").write_text("print('main')\n")
    (root / "config.cfg").symlink_to(outside / "secret.cfg")
    (root / "lib").symlink_to(outside / "lib")
    (root / "gone.py").symlink_to(tmp_path / "nowhere.py")
    (root / "sub" / "up").symlink_to("..")
    return root


@pytest.mark.parametrize("method", ["tar", "sftp"])
async def test_a_symlink_is_sent_as_what_it_points_to_never_as_a_link(
    remote: RemoteService, tmp_path: Path, method: str
) -> None:
    root = _folder_with_links(tmp_path)
    node = await remote.fleet.find_node("demo-v4-8")
    # What an older upload may have left there: a link on the worker, to a file of the worker's.
    await worker_output(
        remote, node, "mkdir -p work/p && echo mine > victim && ln -sfn ~/victim work/p/config.cfg"
    )
    (outcome,) = await Shipper(remote).upload(node, "all", root, "work/p", method=method)
    assert sorted(outcome.sent) == ["config.cfg", "lib/helper.py", "main.py"]
    assert outcome.refused == (
        f"gone.py: a link to {tmp_path / 'nowhere.py'}, which does not exist",
        "sub/up: a link to .., a folder it is in (a loop)",
    )
    assert "2 not sent: gone.py: a link to" in outcome.describe() and outcome.failed
    # Folders go with their files (`sub` holds none that can be sent).
    _, tree = await worker_output(remote, node, "cd work/p && find . -printf '%y %p\\n' | sort")
    assert tree.splitlines() == [
        "d .",
        "d ./lib",
        "f ./config.cfg",
        "f ./lib/helper.py",
        "f ./main.py",
    ]
    assert await _cat(remote, node, "work/p/config.cfg", 0) == "key = 1"
    assert await _cat(remote, node, "victim", 0) == "mine"  # not written through the old link


async def test_an_absolute_folder_lands_in_the_same_place_by_tar_and_by_sftp(
    remote: RemoteService, tmp_path: Path
) -> None:
    """On a VM `/abs` is /abs for its shell, tar and sftp-server alike; a sandbox worker's
    shell sees this machine's /abs, so SFTP must put files there too, not under its HOME."""
    root = _plugin(tmp_path)
    node = await remote.fleet.find_node("demo-v4-8")
    landed = {}
    for method in ("tar", "sftp"):
        where = tmp_path / f"landing-{method}"
        [outcome] = await Shipper(remote).upload(node, "0", root, str(where), method=method)
        assert outcome.method == method and not outcome.failed, outcome.describe()
        landed[method] = await _cat(remote, node, f"{where}/tunix.py", 0)
        assert (where / "tunix.py").read_text() == "STEPS = 10\n"
        home = (await worker_output(remote, node, 'echo "$HOME"'))[1]
        assert not Path(home, str(where).lstrip("/")).exists()
    assert landed == {"tar": "STEPS = 10", "sftp": "STEPS = 10"}
