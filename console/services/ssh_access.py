"""Your key where the VM looks for it: the node's `ssh-keys` metadata, or your OS Login profile.

gcloud's `AddSSHKeyIfNeeded` and its OS Login path (tpu_vm/ssh.py, util/ssh/ssh.py). One
difference, on purpose: gcloud first reads the project's metadata from Compute Engine, which the
TPU API does not serve; rather than depend on the Compute API for that, the console takes a
refused key as the sign that the key is in neither place, and adds it to the node's metadata.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from console.adapters.os_login import OsLoginApi
from console.adapters.ssh_pool import SshPool, SshTarget
from console.models import FleetError, Node, SshAuthError, SshError
from console.services.fleet import FleetService

SSH_KEYS = "ssh-keys"
ENABLE_OSLOGIN = "enable-oslogin"
RECENT_S = 300.0  # a key we added this long ago may still be on its way to the VM

Notice = Callable[[str], None]


def metadata_flag(metadata: dict[str, str], key: str) -> bool | None:
    """A metadata boolean as the guest agent reads it: true/false in any case, else unset."""
    value = metadata.get(key, "").strip().lower()
    if value in {"true", "1", "yes", "y"}:
        return True
    if value in {"false", "0", "no", "n"}:
        return False
    return None


def has_user_key(ssh_keys: str, user: str, public_key: str) -> bool:
    """Whether an `ssh-keys` value grants `public_key` ("type blob") to `user`."""
    blob = public_key.split()[1]
    for line in ssh_keys.splitlines():
        name, sep, rest = line.strip().partition(":")
        if sep and name == user and blob in rest.split():
            return True
    return False


def with_user_key(metadata: dict[str, str], entry: str) -> dict[str, str]:
    """The metadata with `entry` appended to `ssh-keys`; every other entry and key line kept."""
    existing = metadata.get(SSH_KEYS, "").rstrip("\n")
    return {**metadata, SSH_KEYS: f"{existing}\n{entry}" if existing else entry}


@dataclass
class SshAccess:
    """Decides the user for each node and puts the key where that node will accept it."""

    fleet: FleetService
    pool: SshPool
    user: str
    os_login: str = "auto"  # auto: as node metadata says; "true"/"false": as configured
    oslogin_api: Callable[[], OsLoginApi] | None = None
    account: str | Callable[[], str] = ""  # gcloud's [core] account, or how to find it
    notices: list[Notice] = field(default_factory=list)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    _added: dict[str, float] = field(default_factory=dict)
    _posix_user: str = ""
    _oslogin_client: OsLoginApi | None = None

    def __post_init__(self) -> None:
        self.pool.on_auth_failure = self.grant

    def say(self, text: str) -> None:
        for notice in self.notices:
            notice(text)

    def entry(self) -> str:
        """`USER:type blob USER`, the line gcloud writes into `ssh-keys`."""
        return f"{self.user}:{self.pool.public_key()} {self.user}"

    def uses_os_login(self, node: Node) -> bool:
        if self.os_login in {"true", "false"}:
            return self.os_login == "true"
        return bool(metadata_flag(node.metadata, ENABLE_OSLOGIN))

    async def close(self) -> None:
        if self._oslogin_client is not None:
            await self._oslogin_client.close()
            self._oslogin_client = None

    # ----- OS Login ----------------------------------------------------------------------------
    async def user_for(self, node: Node) -> str:
        """The user to log in as: the OS Login POSIX user on such nodes, else ours."""
        if not self.uses_os_login(node):
            return self.user
        if not self._posix_user:
            self._posix_user = await self._os_login_user(node.project)
        return self._posix_user

    async def _os_login_user(self, project: str) -> str:
        if callable(self.account):
            self.account = self.account()
        if self.oslogin_api is None or not self.account:
            raise FleetError(
                "OS Login is on for this node, and no account is known to log in with.",
                "Set one with `gcloud config set account you@example.com` (or use a service "
                "account's Application Default Credentials).",
                code="OS_LOGIN",
            )
        if self._oslogin_client is None:
            self._oslogin_client = self.oslogin_api()
        client = self._oslogin_client
        account = self.account
        public_key = self.pool.public_key()
        profile = await client.profile(account, project)
        if public_key.split()[1] not in profile.key_blobs or not profile.posix_user:
            self.say(f"importing your ssh key into the OS Login profile of {account}")
            profile = await client.import_key(account, project, public_key)
        if not profile.posix_user:
            raise FleetError(
                f"OS Login gave {account} no POSIX account in project {project}.",
                "Ask for roles/compute.osLogin on the project.",
                code="OS_LOGIN",
            )
        return profile.posix_user

    # ----- metadata keys -----------------------------------------------------------------------
    async def grant(self, target: SshTarget) -> bool:
        """The pool's hook on a refused key: add it to the node's metadata if it is not there."""
        try:
            return await self._grant(target)
        except SshError:
            raise
        except FleetError as exc:  # the pool reports ssh failures only, one per worker
            raise SshAuthError(
                f"{target.label}: the VM refused your key; {exc.reason}", exc.remedy
            ) from None

    async def _grant(self, target: SshTarget) -> bool:
        zone, _, name = target.node.partition("/")
        if not name:
            return False
        lock = self._locks.setdefault(target.node, asyncio.Lock())
        async with lock:
            node = await self.fleet.get_node(zone, name)
            if self.uses_os_login(node):
                return False  # the key was imported before dialling; a refusal is IAM's
            user = target.user or self.user
            ssh_keys = node.metadata.get(SSH_KEYS, "")
            if has_user_key(ssh_keys, user, self.pool.public_key()):
                added = self._added.get(target.node)
                if added is not None:
                    return time.monotonic() - added < RECENT_S
                # There, but not put there by us: another command running now (or a
                # teammate's gcloud) may have just added it, and the guest agent takes a while.
                # Waited for once, as for a key we added; refused after that, it is refused.
                self._added[target.node] = time.monotonic()
                return True
            self.say(f"adding your ssh key to {name}'s metadata")
            await self._add_key(node, target)
            self._added[target.node] = time.monotonic()
            return True

    async def _add_key(self, node: Node, target: SshTarget) -> None:
        api = self.fleet.api
        try:
            operation = await api.update_metadata(
                node.zone, node.name, with_user_key(node.metadata, self.entry())
            )
            await api.wait_operation(operation, timeout_s=120, poll_s=0.2)
        except FleetError as exc:
            if exc.code != "PERMISSION_DENIED":
                raise SshAuthError(
                    f"{target.label}: the VM refused your key, and adding it to {node.name}'s "
                    f"metadata failed: {exc.reason}",
                    exc.remedy,
                ) from None
            raise SshAuthError(
                f"{target.label}: the VM refused your key, and you may not add it to "
                f"{node.name}'s metadata (permission tpu.nodes.update denied).",
                "Ask for a role with tpu.nodes.update (roles/tpu.admin), or have someone add "
                f"`{self.entry()}` to the node's or the project's ssh-keys metadata.",
            ) from None
