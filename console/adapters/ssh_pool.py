"""Pooled asyncssh connections to TPU VM workers, verified the way gcloud verifies them.

One connection per worker, at most `max_sessions` channels on it (OpenSSH allows 10), a bounded
number of connects in flight, retries with backoff, and host keys checked under `tpu.<id>-<w>`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh
from google.api_core.retry import exponential_sleep_generator

from console.models import (
    SshAuthError,
    SshError,
    SshHostKeyError,
    SshKeyError,
    SshLinkError,
    SshLost,
    SshRefused,
    SshTimeout,
)

Chunk = Callable[[bytes], None]
# Hardware AES first: a wide fan-out spends much of its CPU on per-packet crypto. Every OpenSSH
# since 6.2 offers these; the rest of asyncssh's defaults follow as fallbacks.
PREFERRED_CIPHERS = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes128-ctr",
    "aes192-ctr",
    "aes256-ctr",
)


def backoff(initial: float, maximum: float, multiplier: float = 2.0) -> Iterator[float]:
    """Waits between tries: google-api-core's truncated exponential backoff, the one the Google
    clients use, so no loop of ours grows its own delays.

    Its waits are jittered, uniform in [0, bound]; the bounds here are twice the delays asked
    for, so on average each wait is `initial`, `initial * multiplier`, … up to `maximum`, and a
    count of tries is as patient as its delays say.
    """
    return exponential_sleep_generator(initial * 2, maximum * 2, multiplier)


@dataclass(frozen=True)
class SshTarget:
    """One worker to dial: its address, the known-hosts alias and the keys its VM published."""

    alias: str
    host: str
    port: int
    worker: int
    label: str
    host_keys: tuple[str, ...] = ()  # "ssh-ed25519 AAAA…"; empty: trust on first use
    user: str = ""  # "" = SshOptions.user; an OS Login node has its POSIX user here
    proxy_command: tuple[str, ...] = ()  # argv whose stdin/stdout carry the connection (IAP)
    node: str = ""  # "zone/name" of its node, for the access hook


# Called when a worker refuses our key: True if the key was just put where the VM will find
# it (keep trying while it lands), False if nothing more can be done. It may raise SshError.
AccessHook = Callable[[SshTarget], Awaitable[bool]]


@dataclass(frozen=True)
class SshOptions:
    user: str
    key_path: str
    known_hosts_path: Path
    connect_timeout_s: float = 10.0
    keepalive_s: float = 30.0
    jump_host: str = ""
    port: int = 22  # what gcloud dials; `[ssh] port` (and the sandbox) may say otherwise
    max_sessions: int = 8
    max_connects: int = 32
    connect_attempts: int = 3
    retry_base_s: float = 0.2
    key_wait_s: float = 60.0  # how long a key just added may take to reach the VM (gcloud: 50)


@dataclass(frozen=True)
class RunResult:
    exit_status: int | None
    exit_signal: str | None


class KnownHosts:
    """Our own known-hosts file, one `alias keytype base64` line per key, like gcloud's.

    Read once and kept (read again only when the file changes under us), and written only
    when what it says changes: a fan-out to a 256-host slice dials 256 aliases, and reading
    or rewriting the whole file on each would cost O(N²).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._keys: dict[str, list[str]] = {}

    def _current(self) -> dict[str, list[str]]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._keys = None, {}
            return self._keys
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            keys: dict[str, list[str]] = {}
            for line in self.path.read_text().splitlines():
                parts = line.split()
                if len(parts) >= 3:
                    keys.setdefault(parts[0], []).append(f"{parts[1]} {parts[2]}")
            self._stamp, self._keys = stamp, keys
        return self._keys

    def keys_for(self, alias: str) -> list[str]:
        return list(self._current().get(alias, []))

    def record(self, alias: str, keys: list[str]) -> None:
        """Replace the alias's lines with `keys`: appended when the alias is new, the file
        rewritten only when its keys change, nothing when they are already there."""
        wanted = [" ".join(k.split()[:2]) for k in keys]
        current = self._current()
        if current.get(alias) == wanted:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if alias not in current:
            with open(self.path, "a+b") as fh:  # one write: whole lines, never interleaved
                text = "".join(f"{alias} {k}\n" for k in wanted).encode()
                if fh.tell() > 0:
                    fh.seek(-1, os.SEEK_END)
                    if fh.read(1) != b"\n":  # a file edited by hand, without its last newline
                        text = b"\n" + text
                fh.write(text)
        else:
            lines = []
            if self.path.exists():
                lines = [
                    ln for ln in self.path.read_text().splitlines() if ln.split()[:1] != [alias]
                ]
            lines += [f"{alias} {k}" for k in wanted]
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text("\n".join(lines) + "\n")
            os.replace(tmp, self.path)
        self._stamp = None  # read again next time (cheap: once per change)


class _Client(asyncssh.SSHClient):
    """Tells the pool when a connection dies and, for trust on first use, what key it saw."""

    def __init__(self, on_lost: Callable[[], None], accept_any: bool) -> None:
        self._on_lost = on_lost
        self._accept_any = accept_any
        self.seen_key: asyncssh.SSHKey | None = None

    def validate_host_public_key(
        self, host: str, addr: str, port: int, key: asyncssh.SSHKey
    ) -> bool:
        self.seen_key = key
        return self._accept_any

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_lost()


@dataclass
class _Pooled:
    conn: asyncssh.SSHClientConnection
    sessions: asyncio.Semaphore


def _key_text(key: asyncssh.SSHKey) -> str:
    return " ".join(key.export_public_key("openssh").decode().split()[:2])


@dataclass
class SshPool:
    options: SshOptions
    _pool: dict[str, _Pooled] = field(default_factory=dict)
    _connecting: dict[str, asyncio.Future] = field(default_factory=dict)
    _gate: asyncio.Semaphore | None = None
    _client_keys: list | None = None
    on_auth_failure: AccessHook | None = None
    connects: int = 0  # how many connections were opened, for tests and benchmarks

    def __post_init__(self) -> None:
        self.known_hosts = KnownHosts(self.options.known_hosts_path)

    # ----- keys --------------------------------------------------------------------------------
    def _load_client_keys(self) -> list | None:
        """The user's key, or None to let the agent offer it; a clear SshError otherwise."""
        if self._client_keys is not None:
            return self._client_keys
        path = Path(self.options.key_path).expanduser()
        if not path.exists():
            raise SshKeyError(
                f"No ssh key at {path}.",
                "Run `gcloud compute tpus tpu-vm ssh NODE --zone ZONE` once to create it, or set "
                "ssh.key in ~/.config/tpuconsole/config.toml.",
            )
        try:
            self._client_keys = [asyncssh.read_private_key(str(path))]
        except asyncssh.KeyEncryptionError:
            if not os.environ.get("SSH_AUTH_SOCK"):
                raise SshKeyError(
                    f"The ssh key {path} needs a passphrase and no ssh-agent is running.",
                    f"Run `eval $(ssh-agent)` and `ssh-add {path}`, then try again.",
                ) from None
            return None  # the agent holds it, or authentication will say it does not
        except (asyncssh.KeyImportError, OSError) as exc:
            raise SshKeyError(
                f"Cannot read the ssh key {path}: {exc}.",
                "Point ssh.key at an OpenSSH private key.",
            ) from None
        return self._client_keys

    def public_key(self) -> str:
        """`type blob` of the user's key: its .pub file beside it (as gcloud), else derived."""
        path = Path(self.options.key_path).expanduser()
        pub = path.with_name(path.name + ".pub")
        if pub.exists():
            parts = pub.read_text().split()
            if len(parts) >= 2:
                return f"{parts[0]} {parts[1]}"
        keys = self._load_client_keys()
        if not keys:
            raise SshKeyError(
                f"No public key beside {path} and the key itself is locked.",
                f"Write it with `ssh-keygen -y -f {path} > {pub}`.",
            )
        return _key_text(keys[0])

    # ----- connections -------------------------------------------------------------------------
    async def connection(self, target: SshTarget) -> _Pooled:
        pooled = self._pool.get(target.alias)
        if pooled is not None:
            return pooled
        pending = self._connecting.get(target.alias)
        if pending is not None:  # someone is already dialling this worker: share the result
            return await asyncio.shield(pending)
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._connecting[target.alias] = future
        try:
            pooled = await self._connect_with_retries(target)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved; waiters re-raise it
            raise
        finally:
            self._connecting.pop(target.alias, None)
        self._pool[target.alias] = pooled
        future.set_result(pooled)
        return pooled

    async def _connect_with_retries(self, target: SshTarget) -> _Pooled:
        """Link failures are retried a few times; a refused key once the hook has placed it
        is retried until `key_wait_s`, as gcloud retries while a new key propagates."""
        if self._gate is None:
            self._gate = asyncio.Semaphore(self.options.max_connects)
        # Google's truncated exponential backoff (google-api-core's, jittered), one schedule
        # for the link and one, gentler, while a just-added key reaches the VM.
        delays = backoff(self.options.retry_base_s, 5.0)
        key_delays = backoff(self.options.retry_base_s, 3.0, 1.5)
        attempt = 0
        key_deadline: float | None = None
        while True:
            attempt += 1
            try:
                async with self._gate:
                    return await self._connect(target)
            except SshError as exc:
                if isinstance(exc, SshAuthError) and self.on_auth_failure is not None:
                    if key_deadline is None:
                        if not await self.on_auth_failure(target):
                            raise
                        key_deadline = time.monotonic() + self.options.key_wait_s
                    elif time.monotonic() >= key_deadline:
                        raise SshAuthError(
                            f"{exc.reason} Still refused {self.options.key_wait_s:.0f} s after "
                            "the key was added.",
                            exc.remedy,
                        ) from None
                    await asyncio.sleep(next(key_delays))
                    continue
                if not isinstance(exc, SshLinkError) or (attempt >= self.options.connect_attempts):
                    raise
            await asyncio.sleep(next(delays))

    async def _connect(self, target: SshTarget) -> _Pooled:
        client_keys = self._load_client_keys()
        trusted = list(target.host_keys) or self.known_hosts.keys_for(target.alias)
        tofu = not trusted
        known: Any
        if trusted:
            known = asyncssh.import_known_hosts("".join(f"{target.alias} {k}\n" for k in trusted))
        else:
            known = ([], [], [])  # nothing trusted yet: the client callback sees the key
        holder: dict[str, Any] = {}  # "client": the _Client, "pooled": the _Pooled

        def factory() -> _Client:
            holder["client"] = _Client(lambda: self._forget(target.alias, holder), tofu)
            return holder["client"]

        kwargs: dict = {}
        if target.proxy_command:  # asyncssh runs the argv as given: no shell, no %h expansion
            kwargs["proxy_command"] = list(target.proxy_command)
        elif self.options.jump_host:
            kwargs["tunnel"] = self.options.jump_host
        user = target.user or self.options.user
        try:
            conn, _ = await asyncssh.create_connection(
                factory,
                target.host,
                target.port,
                username=user,
                client_keys=client_keys,
                known_hosts=known,
                host_key_alias=target.alias,
                connect_timeout=self.options.connect_timeout_s,
                keepalive_interval=self.options.keepalive_s,
                keepalive_count_max=3,
                encryption_algs=PREFERRED_CIPHERS,
                **kwargs,
            )
        except asyncssh.HostKeyNotVerifiable:
            raise self._host_key_error(target) from None
        except asyncssh.PermissionDenied:
            raise SshAuthError(
                f"{target.label}: the VM refused the key {self.options.key_path} for user "
                f"{user!r}.",
                "The key must be in the node's or the project's `ssh-keys` metadata as "
                f"`{user}:<public key> {user}` (the console adds it to the node's), or, with "
                "OS Login, in your OS Login profile with roles/compute.osLogin granted.",
            ) from None
        except TimeoutError:
            raise SshTimeout(
                f"{target.label}: no answer from {target.host}:{target.port} within "
                f"{self.options.connect_timeout_s:.0f} s.",
                "Is the VM READY and reachable (firewall, --internal-ip, IAP)?",
            ) from None
        except ConnectionRefusedError:
            raise SshRefused(
                f"{target.label}: connection refused by {target.host}:{target.port}.",
                "The VM may be booting, stopped or preempted; refresh its state.",
            ) from None
        except (OSError, asyncssh.Error) as exc:
            remedy = "Check the VM's state and the network."
            if target.proxy_command:
                remedy = f"The proxy command {shlex.join(target.proxy_command)!r} failed; " + remedy
            raise SshLost(f"{target.label}: {exc}.", remedy) from None
        self.connects += 1
        if tofu and holder["client"].seen_key is not None:
            self.known_hosts.record(target.alias, [_key_text(holder["client"].seen_key)])
        elif target.host_keys:
            self.known_hosts.record(target.alias, list(target.host_keys))
        holder["pooled"] = _Pooled(conn, asyncio.Semaphore(self.options.max_sessions))
        return holder["pooled"]

    def _host_key_error(self, target: SshTarget) -> SshError:
        where = (
            "the keys the VM published in its guest attributes"
            if target.host_keys
            else f"the key recorded in {self.known_hosts.path}"
        )
        return SshHostKeyError(
            f"{target.label}: the host key differs from {where} (alias {target.alias}).",
            "A recreated VM has a new node id and so a new alias; a changed key on the same VM "
            "may be an attack. If you trust the change, remove the lines for "
            f"{target.alias} from {self.known_hosts.path}.",
        )

    def _forget(self, alias: str, holder: dict) -> None:
        """A dead connection leaves the pool, unless a newer one already replaced it."""
        if alias in self._pool and self._pool[alias] is holder.get("pooled"):
            del self._pool[alias]

    def drop(self, target: SshTarget) -> None:
        pooled = self._pool.pop(target.alias, None)
        if pooled is not None:
            pooled.conn.close()

    async def close(self) -> None:
        pooled = list(self._pool.values())
        self._pool.clear()
        for p in pooled:
            p.conn.close()
        for p in pooled:
            with contextlib.suppress(Exception):
                await p.conn.wait_closed()

    # ----- sessions ----------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def session(self, target: SshTarget) -> AsyncIterator[asyncssh.SSHClientConnection]:
        pooled = await self.connection(target)
        async with pooled.sessions:
            yield pooled.conn

    async def run(
        self,
        target: SshTarget,
        command: str,
        *,
        on_stdout: Chunk | None = None,
        on_stderr: Chunk | None = None,
        stdin: bytes | AsyncIterator[bytes] | None = None,
    ) -> RunResult:
        """Run one shell command, streaming raw output chunks; SshError if the link fails.

        `stdin` is the command's input: all of it at once, or chunks as they come (what a
        pipe into `tpuconsole exec` gives), fed while the output is read.
        """
        try:
            async with self.session(target) as conn:
                if not isinstance(stdin, AsyncIterator):
                    status, signal = await _run_channel(conn, command, on_stdout, on_stderr, stdin)
                    if status is None and signal is None:
                        self.drop(target)
                        raise SshLost(
                            f"{target.label}: the connection closed mid-command.",
                            "It will be retried from where it stopped.",
                        )
                    return RunResult(status if signal is None else None, signal)
                process = await conn.create_process(
                    command,
                    encoding=None,
                    stdin=asyncssh.DEVNULL if stdin is None else asyncssh.PIPE,
                )
                async with process:
                    feeding = None
                    if isinstance(stdin, bytes):
                        process.stdin.write(stdin)
                        process.stdin.write_eof()
                    elif stdin is not None:
                        feeding = asyncio.ensure_future(_feed(process.stdin, stdin))
                    try:
                        await asyncio.gather(
                            _drain(process.stdout, on_stdout), _drain(process.stderr, on_stderr)
                        )
                        await process.wait()
                    finally:
                        if feeding is not None:  # the command is done: it reads no more
                            feeding.cancel()
                            with contextlib.suppress(asyncio.CancelledError):
                                await feeding
                if process.exit_status is None and process.exit_signal is None:
                    self.drop(target)
                    raise SshLost(
                        f"{target.label}: the connection closed mid-command.",
                        "It will be retried from where it stopped.",
                    )
                signal = process.exit_signal[0] if process.exit_signal else None
                return RunResult(process.exit_status if signal is None else None, signal)
        except SshError:
            raise
        except (asyncssh.Error, OSError) as exc:
            self.drop(target)
            raise SshLost(
                f"{target.label}: connection lost ({exc}).",
                "Check the VM's state; the console reconnects on the next try.",
            ) from None


class _RunSession(asyncssh.SSHClientSession):
    """One command's channel, its output handed to the sinks as each packet arrives.

    Why not `create_process`: its readers, writers and the tasks draining them cost more CPU
    than the command on a warm fan-out; at 256 workers that is the console's whole budget.
    The sinks are synchronous, so nothing is buffered here either way.
    """

    def __init__(self, on_stdout: Chunk | None, on_stderr: Chunk | None) -> None:
        self._sinks = {None: on_stdout, asyncssh.EXTENDED_DATA_STDERR: on_stderr}
        self.status: int | None = None
        self.signal: str | None = None
        self.closed: asyncio.Future = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes, datatype: int | None) -> None:
        sink = self._sinks.get(datatype)
        if sink is not None:
            sink(data)

    def exit_status_received(self, status: int) -> None:
        self.status = status

    def exit_signal_received(self, signal: str, core_dumped: bool, msg: str, lang: str) -> None:
        self.signal = signal

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(exc)


async def _run_channel(
    conn: asyncssh.SSHClientConnection,
    command: str,
    on_stdout: Chunk | None,
    on_stderr: Chunk | None,
    stdin: bytes | None,
) -> tuple[int | None, str | None]:
    """(exit status, signal) of one command run on its own channel; (None, None) if the
    channel closed without either (the link broke)."""
    holder: list[_RunSession] = []

    def factory() -> _RunSession:
        holder.append(_RunSession(on_stdout, on_stderr))
        return holder[0]

    channel, _ = await conn.create_session(factory, command, encoding=None)
    session = holder[0]
    try:
        if stdin:
            channel.write(stdin)
        channel.write_eof()
        exc = await session.closed
    finally:
        channel.close()
    if exc is not None and session.status is None and session.signal is None:
        raise exc
    return session.status, session.signal


async def _feed(writer: asyncssh.SSHWriter, chunks: AsyncIterator[bytes]) -> None:
    try:
        async for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
        writer.write_eof()
    except (asyncssh.Error, OSError):
        pass  # the command closed its input or ended: what it did not read is not wanted
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()


async def _drain(reader: asyncssh.SSHReader, sink: Chunk | None) -> None:
    while chunk := await reader.read(65536):
        if sink is not None:
            sink(chunk)
