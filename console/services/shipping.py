"""Code shipping: a local folder to the same place on every chosen worker, changed files only.

Tar over the ssh channel (one round trip for the manifest, one for the files); SFTP when the
worker has no tar. The seeds' "sync the updated runner to every worker" step. A symlink is
sent as what it points to (a file's bytes, a folder's files), never as a link to a path on
this machine; one that points nowhere, or into a loop, is not sent and the outcome says why.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import shlex
import stat
import tarfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from console.adapters.ssh_pool import SshTarget
from console.models import FleetError, Node, SshError, UploadOutcome
from console.services.fanout_progress import FanoutProgress, ProgressSink
from console.services.remote import RemoteService

SKIPPED_DIRS = {"__pycache__", ".git", ".venv", ".mypy_cache", ".pytest_cache", ".ruff_cache"}


@dataclass(frozen=True)
class Manifest:
    """What a folder sends: relative path -> (size, sha256), the file whose bytes those are
    (a link's target), and what is not sent with the reason."""

    files: dict[str, tuple[int, str]] = field(default_factory=dict)
    sources: dict[str, Path] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)


def local_manifest(root: Path) -> Manifest:
    """Every file of the folder as the workers get it, caches and VCS folders skipped.

    Links are followed to what they point to (inside the folder or not); a folder reached
    again through a link below itself is a loop and not followed.
    """
    if not root.is_dir():
        raise FleetError(f"{root} is not a folder.", "Give the folder to upload.")
    manifest = Manifest()
    _walk(root, "", (root.resolve(),), manifest)
    return manifest


def _walk(folder: Path, prefix: str, above: tuple[Path, ...], manifest: Manifest) -> None:
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        rel = prefix + entry.name
        if entry.name in SKIPPED_DIRS:
            continue
        path = Path(entry.path)
        link = entry.is_symlink()
        try:
            real = path.resolve(strict=True) if link else path
            mode = os.stat(real).st_mode
        except FileNotFoundError:
            target = os.readlink(path) if link else "?"
            manifest.refused[rel] = f"a link to {target}, which does not exist"
            continue
        except RuntimeError:  # Python 3.11-3.12 report a loop of links this way
            manifest.refused[rel] = f"a link to {os.readlink(path)}, a loop of links"
            continue
        except OSError as exc:
            manifest.refused[rel] = f"cannot be read ({exc.strerror})"
            continue
        if stat.S_ISDIR(mode):
            if real.resolve() in above:
                manifest.refused[rel] = f"a link to {os.readlink(path)}, a folder it is in (a loop)"
                continue
            _walk(path, rel + "/", (*above, real.resolve()), manifest)
        elif stat.S_ISREG(mode):
            data = real.read_bytes()
            manifest.files[rel] = (len(data), hashlib.sha256(data).hexdigest())
            manifest.sources[rel] = real
        else:
            manifest.refused[rel] = "not a regular file" + (f" (a link to {real})" if link else "")


def remote_path_shell(remote_dir: str) -> str:
    """Shell text for the remote folder: `~/x` and relative paths live under $HOME there."""
    path = remote_dir.removeprefix("~/") if remote_dir.startswith("~/") else remote_dir
    if path.startswith("/"):
        return shlex.quote(path)
    return '"$HOME"/' + shlex.quote(path or ".")


def _parse_remote_manifest(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        digest, _, name = line.partition("  ")
        if digest and name:
            out[name.removeprefix("./")] = digest
    return out


class Shipper:
    def __init__(self, remote: RemoteService) -> None:
        self.remote = remote

    async def upload(
        self,
        node: Node,
        selection: str,
        local_dir: Path,
        remote_dir: str,
        *,
        method: str = "auto",
        on_progress: ProgressSink | None = None,
    ) -> list[UploadOutcome]:
        targets = await self.remote.targets(node, selection)
        return await self.upload_to(
            targets, local_dir, remote_dir, method=method, on_progress=on_progress
        )

    async def upload_to(
        self,
        targets: list[SshTarget],
        local_dir: Path,
        remote_dir: str,
        *,
        method: str = "auto",
        on_progress: ProgressSink | None = None,
    ) -> list[UploadOutcome]:
        manifest = await asyncio.to_thread(local_manifest, local_dir)
        progress = FanoutProgress(len(targets))

        async def one(target: SshTarget) -> UploadOutcome:
            progress.start(target.worker)
            outcome = await self._one(target, local_dir, manifest, remote_dir, method)
            progress.finish(target.worker, "failed" if outcome.failed else "")
            if on_progress is not None:
                on_progress(progress)
            return outcome

        if on_progress is not None:
            on_progress(progress)
        return list(await asyncio.gather(*(one(t) for t in targets)))

    async def _capture(
        self, target: SshTarget, command: str, stdin: bytes | None = None
    ) -> tuple[int | None, str]:
        out: list[bytes] = []
        result = await self.remote.pool.run(
            target, command, on_stdout=out.append, on_stderr=out.append, stdin=stdin
        )
        return result.exit_status, b"".join(out).decode(errors="replace")

    async def _one(
        self,
        target: SshTarget,
        root: Path,
        manifest: Manifest,
        remote_dir: str,
        method: str,
    ) -> UploadOutcome:
        outcome = await self._send(target, manifest, remote_dir, method)
        refused = tuple(f"{path}: {why}" for path, why in sorted(manifest.refused.items()))
        return replace(outcome, refused=refused) if not outcome.error else outcome

    async def _send(
        self, target: SshTarget, manifest: Manifest, remote_dir: str, method: str
    ) -> UploadOutcome:
        where = remote_path_shell(remote_dir)
        files = manifest.files
        try:
            _, listing = await self._capture(
                target,
                f"cd {where} 2>/dev/null && find . -type f -exec sha256sum {{}} + "
                "2>/dev/null; true",
            )
            theirs = _parse_remote_manifest(listing)
            changed = [p for p, (_, digest) in files.items() if theirs.get(p) != digest]
            unchanged = len(files) - len(changed)
            if not changed:
                return UploadOutcome(target.worker, (), unchanged, 0, "none")
            size = sum(files[p][0] for p in changed)
            if method in {"auto", "tar"}:
                status, _ = await self._capture(target, "command -v tar >/dev/null")
                if status == 0:
                    await self._send_tar(target, manifest, changed, where)
                    return UploadOutcome(target.worker, tuple(changed), unchanged, size, "tar")
                if method == "tar":
                    raise FleetError("tar is missing on the worker.", "Use SFTP instead.")
            await self._send_sftp(target, manifest, changed, remote_dir)
            return UploadOutcome(target.worker, tuple(changed), unchanged, size, "sftp")
        except (SshError, FleetError, OSError) as exc:
            return UploadOutcome(target.worker, error=str(exc))

    async def _send_tar(
        self, target: SshTarget, manifest: Manifest, files: list[str], where: str
    ) -> None:
        buffer = io.BytesIO()
        # dereference: a link goes as the file it points to (GNU tar then replaces a link
        # left on the worker by the file, as the SFTP path does).
        with tarfile.open(fileobj=buffer, mode="w", dereference=True) as tar:
            for rel in files:
                tar.add(manifest.sources[rel], arcname=rel, recursive=False)
        status, output = await self._capture(
            target, f"mkdir -p {where} && tar -xf - -C {where}", stdin=buffer.getvalue()
        )
        if status != 0:
            raise FleetError(f"tar on the worker failed (exit {status}): {output.strip()}")

    async def _send_sftp(
        self, target: SshTarget, manifest: Manifest, files: list[str], remote_dir: str
    ) -> None:
        base = remote_dir.removeprefix("~/")
        async with self.remote.pool.session(target) as conn, conn.start_sftp_client() as sftp:
            for rel in files:
                dest = f"{base.rstrip('/')}/{rel}" if base else rel
                parent = dest.rsplit("/", 1)[0] if "/" in dest else ""
                if parent:
                    await sftp.makedirs(parent, exist_ok=True)
                if await sftp.islink(dest):
                    await sftp.remove(dest)  # written through, it would land where it points
                await sftp.put(str(manifest.sources[rel]), dest)
