"""Project and zones come from flags, CLOUDSDK_*, gcloud's active configuration, then ours."""

from __future__ import annotations

from pathlib import Path

import pytest

from console.models import FleetError
from console.services.settings import resolve_settings


def _gcloud(tmp_path: Path, name: str, project: str, zone: str, active: bool = True) -> dict:
    base = tmp_path / "gcloud"
    (base / "configurations").mkdir(parents=True, exist_ok=True)
    (base / "configurations" / f"config_{name}").write_text(
        f"[core]\nproject = {project}\n\n[compute]\nzone = {zone}\n"
    )
    if active:
        (base / "active_config").write_text(name)
    return {"CLOUDSDK_CONFIG": str(base)}


def _ours(tmp_path: Path, text: str) -> dict:
    path = tmp_path / "xdg" / "tpuconsole" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return {"XDG_CONFIG_HOME": str(tmp_path / "xdg")}


def test_no_project_anywhere_means_the_sandbox(tmp_path: Path) -> None:
    s = resolve_settings(env={"TPUCONSOLE_HOME": str(tmp_path / "h")}, user_home=tmp_path)
    assert s.sandbox and s.project == ""
    assert s.home == tmp_path / "h"


def test_active_gcloud_configuration_supplies_project_and_zone(tmp_path: Path) -> None:
    _gcloud(tmp_path, "default", "other", "us-east1-d", active=False)
    env = _gcloud(tmp_path, "tpu", "my-proj", "us-central2-b")
    s = resolve_settings(env=env, user_home=tmp_path)
    assert (s.project, s.zones, s.sandbox) == ("my-proj", ("us-central2-b",), False)
    assert s.project_source == "gcloud configuration 'tpu'"


def test_environment_beats_gcloud_and_flags_beat_environment(tmp_path: Path) -> None:
    env = _gcloud(tmp_path, "default", "from-gcloud", "zone-g")
    env |= {"CLOUDSDK_CORE_PROJECT": "from-env", "CLOUDSDK_COMPUTE_ZONE": "zone-e"}
    s = resolve_settings(env=env, user_home=tmp_path)
    assert (s.project, s.zones) == ("from-env", ("zone-e",))
    s = resolve_settings(project="from-flag", zones=["z1", "z2"], env=env, user_home=tmp_path)
    assert (s.project, s.zones, s.project_source) == ("from-flag", ("z1", "z2"), "--project")


def test_our_config_file_is_the_last_resort_and_sets_the_refresh(tmp_path: Path) -> None:
    env = _ours(tmp_path, 'project = "toml-proj"\nzones = ["a-1", "b-2"]\nrefresh_interval = 3\n')
    s = resolve_settings(env=env, user_home=tmp_path)
    assert (s.project, s.zones, s.refresh_s) == ("toml-proj", ("a-1", "b-2"), 3.0)
    env |= _gcloud(tmp_path, "default", "gcloud-proj", "")
    assert resolve_settings(env=env, user_home=tmp_path).project == "gcloud-proj"


def test_sandbox_flag_wins_over_a_configured_project(tmp_path: Path) -> None:
    s = resolve_settings(sandbox=True, env={"CLOUDSDK_CORE_PROJECT": "p"}, user_home=tmp_path)
    assert s.sandbox


def test_a_broken_config_file_says_which_file_and_what_to_do(tmp_path: Path) -> None:
    env = _ours(tmp_path, "project = \n")
    with pytest.raises(FleetError) as err:
        resolve_settings(env=env, user_home=tmp_path)
    assert "config.toml" in err.value.reason and "TOML" in err.value.remedy


def test_ssh_is_reached_as_configured_under_ssh(tmp_path: Path) -> None:
    env = _ours(
        tmp_path,
        '[ssh]\nport = 2222\ntunnel_through_iap = true\nos_login = true\nuser = "me"\n',
    )
    s = resolve_settings(env=env, user_home=tmp_path)
    assert (s.ssh_port, s.tunnel_through_iap, s.os_login, s.ssh_user) == (2222, True, "true", "me")
    plain = resolve_settings(env={}, user_home=tmp_path / "elsewhere")
    assert (plain.ssh_port, plain.tunnel_through_iap, plain.os_login) == (0, False, "auto")


@pytest.mark.parametrize("line", ['port = "ssh"', "port = 70000", 'os_login = "maybe"'])
def test_a_bad_ssh_setting_is_refused_with_the_fix(tmp_path: Path, line: str) -> None:
    env = _ours(tmp_path, f"[ssh]\n{line}\n")
    with pytest.raises(FleetError) as err:
        resolve_settings(env=env, user_home=tmp_path)
    assert "ssh." in err.value.reason and "[ssh]" in err.value.remedy


def test_the_os_login_account_is_gclouds_core_account(tmp_path: Path) -> None:
    env = _gcloud(tmp_path, "default", "p", "z")
    path = tmp_path / "gcloud" / "configurations" / "config_default"
    path.write_text(path.read_text().replace("[core]\n", "[core]\naccount = bob@example.com\n"))
    assert resolve_settings(env=env, user_home=tmp_path).account == "bob@example.com"
    env |= {"CLOUDSDK_CORE_ACCOUNT": "carol@example.com"}
    assert resolve_settings(env=env, user_home=tmp_path).account == "carol@example.com"


def test_stuck_after_is_read_from_our_config_and_checked(tmp_path: Path) -> None:
    assert resolve_settings(env={}, user_home=tmp_path).stuck_after_s == 600.0
    env = _ours(tmp_path, "stuck_after = 90\n")
    assert resolve_settings(env=env, user_home=tmp_path).stuck_after_s == 90.0
    env = _ours(tmp_path, 'stuck_after = "soon"\n')
    with pytest.raises(FleetError, match="stuck_after in .* must be a positive number"):
        resolve_settings(env=env, user_home=tmp_path)
