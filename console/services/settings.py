"""Where the console's project, zones and data directory come from, in gcloud users' order.

Flags, then CLOUDSDK_* variables, then the active gcloud configuration, then our own config.toml;
with no project anywhere, the console opens on its sandbox.
"""

from __future__ import annotations

import configparser
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

from console.models import FleetError

DEFAULT_REFRESH_S = 10.0
DEFAULT_STUCK_AFTER_S = 600.0  # silent this long, chips idle: "stuck?" (services/hangs.py)


@dataclass(frozen=True)
class Settings:
    """Everything resolved, with where each choice came from so the UI can say it."""

    project: str
    project_source: str
    zones: tuple[str, ...]
    zones_source: str
    home: Path
    sandbox: bool
    refresh_s: float = DEFAULT_REFRESH_S
    stuck_after_s: float = DEFAULT_STUCK_AFTER_S
    api_endpoint: str = ""
    ssh_user: str = ""
    ssh_key: str = ""
    internal_ip: bool = False
    ssh_jump_host: str = ""
    ssh_proxy_command: str = ""
    ssh_port: int = 0  # 0: gcloud's 22 (the sandbox sets its own)
    tunnel_through_iap: bool = False
    os_login: str = "auto"  # auto: as each node's enable-oslogin says; "true" for project-wide
    account: str = ""  # gcloud's [core] account, for OS Login
    notes: tuple[str, ...] = field(default_factory=tuple)


def gcloud_config_dir(env: Mapping[str, str], user_home: Path) -> Path:
    return Path(env.get("CLOUDSDK_CONFIG") or user_home / ".config" / "gcloud")


def read_gcloud_configuration(env: Mapping[str, str], user_home: Path) -> tuple[str, dict]:
    """The active configuration's name and its [core]/[compute] values, as gcloud reads them."""
    base = gcloud_config_dir(env, user_home)
    name = env.get("CLOUDSDK_ACTIVE_CONFIG_NAME", "")
    if not name:
        active = base / "active_config"
        name = active.read_text().strip() if active.exists() else "default"
    path = base / "configurations" / f"config_{name}"
    parser = configparser.ConfigParser()
    if path.exists():
        try:
            parser.read(path)
        except configparser.Error as exc:
            raise FleetError(
                f"Cannot read gcloud configuration {path}: {exc}",
                f"Fix it with `gcloud config configurations describe {name}`.",
            ) from None
    values = {
        "project": parser.get("core", "project", fallback=""),
        "zone": parser.get("compute", "zone", fallback=""),
        "account": parser.get("core", "account", fallback=""),
    }
    return name, values


def tpuconsole_config_path(env: Mapping[str, str], user_home: Path) -> Path:
    base = env.get("XDG_CONFIG_HOME") or str(user_home / ".config")
    return Path(base) / "tpuconsole" / "config.toml"


def read_tpuconsole_config(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise FleetError(
            f"Cannot read {path}: {exc}.", "Fix the file (it is TOML) or move it away."
        ) from None


def resolve_settings(
    *,
    project: str = "",
    zones: Sequence[str] = (),
    sandbox: bool = False,
    home: str = "",
    endpoint: str = "",
    env: Mapping[str, str] | None = None,
    user_home: Path | None = None,
) -> Settings:
    env = os.environ if env is None else env
    user_home = user_home or Path.home()
    gcloud_name, gcloud = read_gcloud_configuration(env, user_home)
    toml_path = tpuconsole_config_path(env, user_home)
    ours = read_tpuconsole_config(toml_path)

    project_choices = [
        (project, "--project"),
        (env.get("CLOUDSDK_CORE_PROJECT", ""), "CLOUDSDK_CORE_PROJECT"),
        (gcloud["project"], f"gcloud configuration '{gcloud_name}'"),
        (str(ours.get("project", "")), str(toml_path)),
    ]
    chosen_project, project_source = next(((p, s) for p, s in project_choices if p), ("", ""))

    toml_zones = ours.get("zones", ours.get("zone", []))
    if isinstance(toml_zones, str):
        toml_zones = [toml_zones]
    zone_choices = [
        (tuple(zones), "--zone"),
        (
            tuple(z for z in env.get("CLOUDSDK_COMPUTE_ZONE", "").split(",") if z),
            "CLOUDSDK_COMPUTE_ZONE",
        ),
        ((gcloud["zone"],) if gcloud["zone"] else (), f"gcloud configuration '{gcloud_name}'"),
        (tuple(toml_zones), str(toml_path)),
    ]
    chosen_zones, zones_source = next(((z, s) for z, s in zone_choices if z), ((), ""))

    data_home = Path(home or env.get("TPUCONSOLE_HOME") or platformdirs.user_data_dir("tpuconsole"))
    use_sandbox = sandbox or not chosen_project
    refresh = ours.get("refresh_interval", DEFAULT_REFRESH_S)
    if not isinstance(refresh, (int, float)) or refresh <= 0:
        raise FleetError(
            f"refresh_interval in {toml_path} must be a positive number of seconds.",
            "Set e.g. refresh_interval = 10.",
        )
    stuck_after = ours.get("stuck_after", DEFAULT_STUCK_AFTER_S)
    if not isinstance(stuck_after, (int, float)) or isinstance(stuck_after, bool) or (
        stuck_after <= 0
    ):
        raise FleetError(
            f"stuck_after in {toml_path} must be a positive number of seconds.",
            "Set e.g. stuck_after = 600 (a job silent that long, its chips idle, is stuck?).",
        )
    ssh = ours.get("ssh", {}) if isinstance(ours.get("ssh", {}), dict) else {}
    port = ssh.get("port", 0)
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise FleetError(
            f"ssh.port in {toml_path} must be a port number.", "Set e.g. port = 22 under [ssh]."
        )
    os_login = str(ssh.get("os_login", "auto")).lower()
    if os_login not in {"auto", "true", "false"}:
        raise FleetError(
            f'ssh.os_login in {toml_path} must be true, false or "auto".',
            "Leave it out of [ssh] to follow each node's enable-oslogin metadata.",
        )
    return Settings(
        project=chosen_project,
        project_source=project_source,
        zones=chosen_zones,
        zones_source=zones_source,
        home=data_home,
        sandbox=use_sandbox,
        refresh_s=float(refresh),
        stuck_after_s=float(stuck_after),
        api_endpoint=endpoint or str(ours.get("api_endpoint", "")),
        ssh_user=str(ssh.get("user", "")),
        ssh_key=str(ssh.get("key", "")),
        internal_ip=bool(ssh.get("internal_ip", False)),
        ssh_jump_host=str(ssh.get("jump_host", "")),
        ssh_proxy_command=str(ssh.get("proxy_command", "")),
        ssh_port=port,
        tunnel_through_iap=bool(ssh.get("tunnel_through_iap", False)),
        os_login=os_login,
        account=env.get("CLOUDSDK_CORE_ACCOUNT", "") or gcloud["account"],
    )
