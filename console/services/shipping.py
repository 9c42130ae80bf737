"""Code shipping: a local folder to the same place on every chosen worker, changed files only.

Tar over the ssh channel (one round trip for the manifest, one for the files); SFTP when the
worker has no tar. The seeds' "sync the updated runner to every worker" step.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import shlex
import tarfile
from dataclasses import dataclass
from pathlib import Path

from console.adapters.ssh_pool import SshTarget
from console.models import FleetError, Node, SshError
from console.services.remote import RemoteService

SKIPPED_DIRS = {"__pycache__", ".git", ".venv", ".mypy_cache", ".pytest_cache", ".ruff_cache"}


@dataclass(frozen=True)
class UploadOutcome:
    worker: int
    sent: tuple[str, ...] = ()
    unchanged: int = 0
    bytes_sent: int = 0
    method: str = "tar"
    error: str = ""

    def describe(self) -> str:
        if self.error:
            return f"w{self.worker}: failed: {self.error}"
        return (
            f"w{self.worker}: {len(self.sent)} sent ({self.bytes_sent} bytes, {self.method}),"
            f" {self.unchanged} unchanged"
        )


def local_manifest(root: Path) -> dict[str, tuple[int, str]]:
    """relative path -> (size, sha256) for every regular file, caches and VCS folders skipped."""
    if not root.is_dir():
        raise FleetError(f"{root} is not a folder.", "Give the folder to upload.")
    out: dict[str, tuple[int, str]] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part in SKIPPED_DIRS for part in rel.parts) or not path.is_file():
            continue
        data = path.read_bytes()
        out[rel.as_posix()] = (len(data), hashlib.sha256(data).hexdigest())
    return out


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
        self, node: Node, selection: str, local_dir: Path, remote_dir: str, *, method: str = "auto"
    ) -> list[UploadOutcome]:
        targets = await self.remote.targets(node, selection)
        return await self.upload_to(targets, local_dir, remote_dir, method=method)

    async def upload_to(
        self, targets: list[SshTarget], local_dir: Path, remote_dir: str, *, method: str = "auto"
    ) -> list[UploadOutcome]:
        manifest = local_manifest(local_dir)
        return list(
            await asyncio.gather(
                *(self._one(t, local_dir, manifest, remote_dir, method) for t in targets)
            )
        )

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
        manifest: dict[str, tuple[int, str]],
        remote_dir: str,
        method: str,
    ) -> UploadOutcome:
        where = remote_path_shell(remote_dir)
        try:
            _, listing = await self._capture(
                target,
                f"cd {where} 2>/dev/null && find . -type f -exec sha256sum {{}} + "
                "2>/dev/null; true",
            )
            theirs = _parse_remote_manifest(listing)
            changed = [p for p, (_, digest) in manifest.items() if theirs.get(p) != digest]
            unchanged = len(manifest) - len(changed)
            if not changed:
                return UploadOutcome(target.worker, (), unchanged, 0, "none")
            size = sum(manifest[p][0] for p in changed)
            if method in {"auto", "tar"}:
                status, _ = await self._capture(target, "command -v tar >/dev/null")
                if status == 0:
                    await self._send_tar(target, root, changed, where)
                    return UploadOutcome(target.worker, tuple(changed), unchanged, size, "tar")
                if method == "tar":
                    raise FleetError("tar is missing on the worker.", "Use SFTP instead.")
            await self._send_sftp(target, root, changed, remote_dir)
            return UploadOutcome(target.worker, tuple(changed), unchanged, size, "sftp")
        except (SshError, FleetError, OSError) as exc:
            return UploadOutcome(target.worker, error=str(exc))

    async def _send_tar(self, target: SshTarget, root: Path, files: list[str], where: str) -> None:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for rel in files:
                tar.add(root / rel, arcname=rel)
        status, output = await self._capture(
            target, f"mkdir -p {where} && tar -xf - -C {where}", stdin=buffer.getvalue()
        )
        if status != 0:
            raise FleetError(f"tar on the worker failed (exit {status}): {output.strip()}")

    async def _send_sftp(
        self, target: SshTarget, root: Path, files: list[str], remote_dir: str
    ) -> None:
        base = remote_dir.removeprefix("~/")
        async with self.remote.pool.session(target) as conn, conn.start_sftp_client() as sftp:
            for rel in files:
                dest = f"{base.rstrip('/')}/{rel}" if base else rel
                parent = dest.rsplit("/", 1)[0] if "/" in dest else ""
                if parent:
                    await sftp.makedirs(parent, exist_ok=True)
                await sftp.put(str(root / rel), dest)
