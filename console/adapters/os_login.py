"""The OS Login API through google-cloud-os-login's async client: your POSIX user, your key.

gcloud's OS Login path (`command_lib/util/ssh/ssh.py` GetOsloginState): read the login profile,
import the public key when it is not there (or no POSIX account exists yet), ssh as the primary
POSIX account's user name.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.api_core import exceptions as gexc
from google.cloud import oslogin_v1
from google.cloud.oslogin_v1 import common
from google.cloud.oslogin_v1.services.os_login_service.transports import (
    OsLoginServiceGrpcAsyncIOTransport,
)

from console.adapters.tpu_api import CallPolicy, _retry
from console.models import FleetError


def adc_account() -> str:
    """The service account of Application Default Credentials, "" for a user's or none.

    gcloud logs in to OS Login as `[core] account`; a service account's key file or the
    metadata server's credentials name theirs here, a user's ADC file does not.
    """
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    try:
        credentials, _ = google.auth.default()
    except DefaultCredentialsError:
        return ""
    email = getattr(credentials, "service_account_email", "")
    if email == "default":
        # On a Compute Engine VM (a console run from a TPU VM) the metadata server's
        # credentials call their account "default" until refreshed; the refresh asks the
        # server's service-accounts/default entry, which names it.
        import google.auth.transport.requests
        from google.auth.exceptions import GoogleAuthError

        try:
            credentials.refresh(google.auth.transport.requests.Request())
        except GoogleAuthError:
            return ""
        email = getattr(credentials, "service_account_email", "")
    return email if isinstance(email, str) and "@" in email else ""


@dataclass(frozen=True)
class LoginProfile:
    account: str
    posix_user: str  # the primary POSIX account's user name, "" before any key import
    key_blobs: tuple[str, ...]  # the base64 blob of every key in the profile


def _profile(account: str, msg: oslogin_v1.LoginProfile) -> LoginProfile:
    user = ""
    for account_msg in msg.posix_accounts:  # gcloud: the primary one, else the first
        user = user or account_msg.username
        if account_msg.primary:
            user = account_msg.username
            break
    blobs = tuple(
        parts[1] for key in msg.ssh_public_keys.values() if len(parts := key.key.split()) >= 2
    )
    return LoginProfile(account, user, blobs)


class OsLoginApi:
    """One account's OS Login profile. Build with `for_sandbox` or `for_google`."""

    def __init__(
        self, client: oslogin_v1.OsLoginServiceAsyncClient, policy: CallPolicy | None = None
    ) -> None:
        self.client = client
        self.policy = policy or CallPolicy()
        self._read = _retry(self.policy, read=True)
        self._write = _retry(self.policy, read=False)

    @classmethod
    def for_sandbox(cls, address: str, policy: CallPolicy | None = None) -> OsLoginApi:
        from google.auth.credentials import AnonymousCredentials

        transport = OsLoginServiceGrpcAsyncIOTransport(
            channel=grpc.aio.insecure_channel(address), credentials=AnonymousCredentials()
        )
        return cls(oslogin_v1.OsLoginServiceAsyncClient(transport=transport), policy)

    @classmethod
    def for_google(cls, policy: CallPolicy | None = None) -> OsLoginApi:
        import google.auth

        credentials, _ = google.auth.default(
            scopes=["https://www.googleapis.com/auth/cloud-platform"]
        )
        return cls(oslogin_v1.OsLoginServiceAsyncClient(credentials=credentials), policy)

    async def close(self) -> None:
        await self.client.transport.close()

    def _error(self, exc: Exception, account: str, what: str) -> FleetError:
        if isinstance(exc, gexc.PermissionDenied):
            remedy = (
                f"{account} needs roles/compute.osLogin (or osAdminLogin) on the project, and "
                "the OS Login API enabled."
            )
        elif isinstance(exc, gexc.NotFound):
            remedy = f"Is {account} the right account? Set it with `gcloud config set account`."
        else:
            remedy = "Check your network and credentials, then try again."
        message = getattr(exc, "message", str(exc))
        return FleetError(f"OS Login: {what} for {account}: {message}", remedy, code="OS_LOGIN")

    async def profile(self, account: str, project: str) -> LoginProfile:
        try:
            msg = await self.client.get_login_profile(
                request=oslogin_v1.GetLoginProfileRequest(
                    name=f"users/{account}", project_id=project
                ),
                retry=self._read,
                timeout=self.policy.timeout_s,
            )
        except (gexc.GoogleAPICallError, gexc.RetryError) as exc:
            raise self._error(exc, account, "reading the login profile") from None
        return _profile(account, msg)

    async def import_key(self, account: str, project: str, public_key: str) -> LoginProfile:
        """ImportSshPublicKey: the key joins the profile, a POSIX account exists after it."""
        try:
            response = await self.client.import_ssh_public_key(
                request=oslogin_v1.ImportSshPublicKeyRequest(
                    parent=f"users/{account}",
                    ssh_public_key=common.SshPublicKey(key=public_key),
                    project_id=project,
                ),
                retry=self._write,
                timeout=self.policy.timeout_s,
            )
        except (gexc.GoogleAPICallError, gexc.RetryError) as exc:
            raise self._error(exc, account, "importing the ssh key") from None
        return _profile(account, response.login_profile)
