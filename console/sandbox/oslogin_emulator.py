"""The sandbox's OS Login API (google.cloud.oslogin.v1.OsLoginService) for the real client.

Profiles live in the sandbox fleet's state; the workers' sshds consult the same state, as a TPU
VM's sshd asks OS Login for a POSIX user's keys.
"""

from __future__ import annotations

import hashlib
import zlib

import grpc
from google.cloud.oslogin_v1 import common
from google.cloud.oslogin_v1.types import oslogin
from google.protobuf import empty_pb2

from console.sandbox.fleet_state import SandboxFleet, posix_username

SERVICE = "google.cloud.oslogin.v1.OsLoginService"


class OsLoginError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _account(name: str) -> str:
    """`users/{user}` (or `users/{user}/sshPublicKeys/{fp}`) -> the account's email."""
    parts = name.split("/")
    if len(parts) < 2 or parts[0] != "users" or "@" not in parts[1]:
        raise OsLoginError(grpc.StatusCode.INVALID_ARGUMENT, f"Malformed name {name!r}.")
    return parts[1]


def fingerprint(public_key: str) -> str:
    """OS Login names a key by its SHA-256 fingerprint, in hex."""
    return hashlib.sha256(public_key.split()[1].encode()).hexdigest()


class OsLoginEmulator:
    def __init__(self, fleet: SandboxFleet) -> None:
        self.fleet = fleet

    def _profile(self, account: str, project: str) -> oslogin.LoginProfile:
        keys = self.fleet.oslogin_keys.get(account)
        profile = oslogin.LoginProfile(name=account)
        for key in keys or []:
            fp = fingerprint(key)
            profile.ssh_public_keys[fp] = common.SshPublicKey(
                key=key, fingerprint=fp, name=f"users/{account}/sshPublicKeys/{fp}"
            )
        if keys is not None and project:  # an import made the POSIX account for the project
            user = posix_username(account)
            uid = 1_000_000_000 + zlib.crc32(account.encode()) % 1_000_000_000
            profile.posix_accounts = [
                common.PosixAccount(
                    primary=True,
                    username=user,
                    uid=uid,
                    gid=uid,
                    home_directory=f"/home/{user}",
                    shell="/bin/bash",
                    gecos="",
                    system_id="",
                    account_id=project,
                    operating_system_type=common.OperatingSystemType.LINUX,
                    name=f"users/{account}/projects/{project}",
                )
            ]
        return profile

    def get_login_profile(self, req: oslogin.GetLoginProfileRequest) -> oslogin.LoginProfile:
        return self._profile(_account(req.name), req.project_id)

    def import_ssh_public_key(
        self, req: oslogin.ImportSshPublicKeyRequest
    ) -> oslogin.ImportSshPublicKeyResponse:
        account = _account(req.parent)
        parts = req.ssh_public_key.key.split()
        if len(parts) < 2 or not parts[0].startswith(("ssh-", "ecdsa-")):
            raise OsLoginError(grpc.StatusCode.INVALID_ARGUMENT, "Invalid SSH public key.")
        self.fleet.import_oslogin_key(account, f"{parts[0]} {parts[1]}")
        return oslogin.ImportSshPublicKeyResponse(
            login_profile=self._profile(account, req.project_id)
        )

    def get_ssh_public_key(self, req: oslogin.GetSshPublicKeyRequest) -> common.SshPublicKey:
        account = _account(req.name)
        for key in self.fleet.oslogin_keys.get(account, []):
            if req.name.endswith("/" + fingerprint(key)):
                return self._profile(account, "").ssh_public_keys[fingerprint(key)]
        raise OsLoginError(grpc.StatusCode.NOT_FOUND, f"{req.name} not found.")

    def delete_ssh_public_key(self, req: oslogin.DeleteSshPublicKeyRequest) -> empty_pb2.Empty:
        account = _account(req.name)
        for key in list(self.fleet.oslogin_keys.get(account, [])):
            if req.name.endswith("/" + fingerprint(key)):
                self.fleet.delete_oslogin_key(account, key)
                return empty_pb2.Empty()
        raise OsLoginError(grpc.StatusCode.NOT_FOUND, f"{req.name} not found.")

    def methods(self) -> dict[str, tuple]:
        """In TpuEmulator's form: (handler, request deserializer, response serializer, zone)."""

        def no_zone(_request: object) -> str:
            return ""

        return {
            "GetLoginProfile": (
                self.get_login_profile,
                oslogin.GetLoginProfileRequest.deserialize,
                oslogin.LoginProfile.serialize,
                no_zone,
            ),
            "ImportSshPublicKey": (
                self.import_ssh_public_key,
                oslogin.ImportSshPublicKeyRequest.deserialize,
                oslogin.ImportSshPublicKeyResponse.serialize,
                no_zone,
            ),
            "GetSshPublicKey": (
                self.get_ssh_public_key,
                oslogin.GetSshPublicKeyRequest.deserialize,
                common.SshPublicKey.serialize,
                no_zone,
            ),
            "DeleteSshPublicKey": (
                self.delete_ssh_public_key,
                oslogin.DeleteSshPublicKeyRequest.deserialize,
                empty_pb2.Empty.SerializeToString,
                no_zone,
            ),
        }
