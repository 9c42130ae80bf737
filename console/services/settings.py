"""Where the console's project, zones and data directory come from, in gcloud users' order.

Flags, then CLOUDSDK_* variables, then the active gcloud configuration, then our own config.toml;
with no project anywhere, the console opens on its sandbox.

Zones to list: `--zone`, CLOUDSDK_COMPUTE_ZONE, config.toml's `zones`, else every zone the TPU
API lists (discovery). The gcloud configuration's `[compute] zone` is usually set once for
Compute Engine and forgotten; it does not narrow the fleet (the console would silently show one
zone), it is the default zone for `create`, as it is for gcloud's single-zone commands.
"""

from __future__ import annotations

import configparser
import difflib
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

from console.models import ConfigError, FleetError

DEFAULT_REFRESH_S = 10.0
DEFAULT_STUCK_AFTER_S = 600.0  # silent this long, chips idle: "stuck?" (services/hangs.py)


@dataclass(frozen=True)
class Settings:
    """Everything resolved, with where each choice came from so the UI can say it."""

    project: str
    project_source: str
    zones: tuple[str, ...]
    zones_source: str  # "--zone", "CLOUDSDK_COMPUTE_ZONE", the config.toml path, or ""
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
    default_zone: str = ""  # where `create` goes without --zone
    default_zone_source: str = ""
    notify_command: str = ""  # [notify] command: run on job events, TPUCONSOLE_* in its env
    notify_webhook: str = ""  # [notify] webhook: POSTed {"text": ...} (Slack-compatible)
    log_bucket: str = ""  # [jobs] log_bucket: gs://… the workers copy their logs to


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
            raise ConfigError(
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


# config.toml's schema: every key the console reads, and the tables that hold more. A key not
# here is refused with its file and the nearest known key, so a typo (`projcet = "p"`) never
# quietly drops the user onto the sandbox. The README's "config.toml" sections list the same.
CONFIG_KEYS: dict[str, object] = {
    "project": str,
    "zones": list,
    "zone": str,
    "refresh_interval": float,
    "api_endpoint": str,
    "stuck_after": float,
    "ssh": {
        "user": str,
        "key": str,
        "port": int,
        "internal_ip": bool,
        "tunnel_through_iap": bool,
        "os_login": (bool, str),
        "jump_host": str,
        "proxy_command": str,
    },
    "notify": {"command": str, "webhook": str},
    "jobs": {"log_bucket": str},
}


def check_config_keys(doc: dict, path: Path, schema: dict | None = None, prefix: str = "") -> None:
    """Refuse a key the console does not know, naming the file and the closest known key."""
    schema = CONFIG_KEYS if schema is None else schema
    for key, value in doc.items():
        name = f"{prefix}{key}"
        if key not in schema:
            close = difflib.get_close_matches(key, list(schema), n=1, cutoff=0.6)
            hint = (
                f"Did you mean {prefix}{close[0]}?"
                if close
                else ("Known keys: " + ", ".join(f"{prefix}{k}" for k in schema) + ".")
            )
            raise ConfigError(f"Unknown key {name!r} in {path}.", hint, field=name)
        inner = schema[key]
        if isinstance(inner, dict):
            if not isinstance(value, dict):
                raise ConfigError(
                    f"{name} in {path} must be a table ([{name}]), not {value!r}.",
                    f"Write its keys under a [{name}] line.",
                    field=name,
                )
            check_config_keys(value, path, inner, prefix=f"{name}.")


def read_tpuconsole_config(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        doc = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"Cannot read {path}: {exc}.", "Fix the file (it is TOML) or move it away."
        ) from None
    check_config_keys(doc, path)
    return doc


def _zones_setting(ours: dict, path: Path) -> list[str]:
    """`zones = ["a", "b"]` (or `zone = "a"`); anything else says how it should look."""
    key = "zones" if "zones" in ours else "zone"
    value = ours.get(key, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(z, str) and z for z in value):
        raise ConfigError(
            f"{key} in {path} must be a list of zone names, not {value!r}.",
            'Write e.g. zones = ["us-central2-b", "europe-west4-a"].',
            field=key,
        )
    return value


def ensure_home(home: Path) -> Path:
    """The data directory, created if need be; one that cannot be made or written says so."""
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        why = "it is a file, not a folder" if isinstance(exc, FileExistsError) else exc.strerror
        raise FleetError(
            f"Cannot use {home} as the data directory: {why or exc}.",
            "Set TPUCONSOLE_HOME (or --home) to a folder you can create and write.",
        ) from None
    if not os.access(home, os.W_OK | os.X_OK):
        raise FleetError(
            f"Cannot write in the data directory {home}.",
            "Set TPUCONSOLE_HOME (or --home) to a folder you can create and write.",
        )
    return home


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

    toml_zones = _zones_setting(ours, toml_path)
    env_zones = tuple(z.strip() for z in env.get("CLOUDSDK_COMPUTE_ZONE", "").split(",") if z)
    zone_choices = [
        (tuple(zones), "--zone"),
        (env_zones, "CLOUDSDK_COMPUTE_ZONE"),
        (tuple(toml_zones), str(toml_path)),
    ]
    chosen_zones, zones_source = next(((z, s) for z, s in zone_choices if z), ((), ""))
    default_choices = [
        (chosen_zones[0] if chosen_zones else "", zones_source),
        (gcloud["zone"], f"gcloud configuration '{gcloud_name}' compute/zone"),
    ]
    default_zone, default_zone_source = next(((z, s) for z, s in default_choices if z), ("", ""))

    data_home = Path(home or env.get("TPUCONSOLE_HOME") or platformdirs.user_data_dir("tpuconsole"))
    use_sandbox = sandbox or not chosen_project
    refresh = ours.get("refresh_interval", DEFAULT_REFRESH_S)
    if not isinstance(refresh, (int, float)) or refresh <= 0:
        raise ConfigError(
            f"refresh_interval in {toml_path} must be a positive number of seconds.",
            "Set e.g. refresh_interval = 10.",
            field="refresh_interval",
        )
    stuck_after = ours.get("stuck_after", DEFAULT_STUCK_AFTER_S)
    if (
        not isinstance(stuck_after, (int, float))
        or isinstance(stuck_after, bool)
        or (stuck_after <= 0)
    ):
        raise ConfigError(
            f"stuck_after in {toml_path} must be a positive number of seconds.",
            "Set e.g. stuck_after = 600 (a job silent that long, its chips idle, is stuck?).",
            field="stuck_after",
        )
    ssh = ours.get("ssh", {}) if isinstance(ours.get("ssh", {}), dict) else {}
    port = ssh.get("port", 0)
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise ConfigError(
            f"ssh.port in {toml_path} must be a port number.",
            "Set e.g. port = 22 under [ssh].",
            field="ssh.port",
        )
    os_login = str(ssh.get("os_login", "auto")).lower()
    if os_login not in {"auto", "true", "false"}:
        raise ConfigError(
            f'ssh.os_login in {toml_path} must be true, false or "auto".',
            "Leave it out of [ssh] to follow each node's enable-oslogin metadata.",
            field="ssh.os_login",
        )
    notify = ours.get("notify", {})
    jobs = ours.get("jobs", {})
    for table, values in (("notify", notify), ("jobs", jobs)):
        for key, value in values.items():
            if not isinstance(value, str):
                raise ConfigError(
                    f"{table}.{key} in {toml_path} must be a string, not {value!r}.",
                    f'Write it as {key} = "…" under [{table}].',
                    field=f"{table}.{key}",
                )
    webhook = notify.get("webhook", "")
    if webhook and not webhook.startswith(("https://", "http://")):
        raise ConfigError(
            f"notify.webhook in {toml_path} must be an http(s) URL, not {webhook!r}.",
            'Write e.g. webhook = "https://hooks.slack.com/services/…" under [notify].',
            field="notify.webhook",
        )
    bucket = jobs.get("log_bucket", "")
    if bucket.startswith("/") and not use_sandbox:
        raise ConfigError(
            f"jobs.log_bucket in {toml_path} is a local folder ({bucket}); only the sandbox "
            "takes one, as its stand-in for a bucket: a VM's own disk goes with the VM.",
            'Write e.g. log_bucket = "gs://my-bucket/tpuconsole-logs" under [jobs].',
            field="jobs.log_bucket",
        )
    if bucket and not bucket.startswith(("gs://", "/")):
        raise ConfigError(
            f"jobs.log_bucket in {toml_path} must be a gs:// URL (or, on the sandbox, a local "
            f"folder standing in for one), not {bucket!r}.",
            'Write e.g. log_bucket = "gs://my-bucket/tpuconsole-logs" under [jobs].',
            field="jobs.log_bucket",
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
        default_zone=default_zone,
        default_zone_source=default_zone_source,
        ssh_port=port,
        tunnel_through_iap=bool(ssh.get("tunnel_through_iap", False)),
        os_login=os_login,
        account=env.get("CLOUDSDK_CORE_ACCOUNT", "") or gcloud["account"],
        notify_command=notify.get("command", ""),
        notify_webhook=webhook,
        log_bucket=bucket,
    )
