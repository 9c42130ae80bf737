"""Project and zones come from flags, CLOUDSDK_*, gcloud's active configuration, then ours."""

from __future__ import annotations

from pathlib import Path

import pytest

from console.models import ConsoleError
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


def test_active_gcloud_configuration_supplies_project_and_the_create_zone(
    tmp_path: Path,
) -> None:
    _gcloud(tmp_path, "default", "other", "us-east1-d", active=False)
    env = _gcloud(tmp_path, "tpu", "my-proj", "us-central2-b")
    s = resolve_settings(env=env, user_home=tmp_path)
    assert (s.project, s.sandbox) == ("my-proj", False)
    assert s.project_source == "gcloud configuration 'tpu'"
    # [compute] zone is Compute Engine's default: it does not narrow the fleet to one zone...
    assert (s.zones, s.zones_source) == ((), "")
    # ...it is where `create` goes without --zone, as for gcloud's single-zone commands.
    assert s.default_zone == "us-central2-b"
    assert s.default_zone_source == "gcloud configuration 'tpu' compute/zone"


def test_environment_beats_gcloud_and_flags_beat_environment(tmp_path: Path) -> None:
    env = _gcloud(tmp_path, "default", "from-gcloud", "zone-g")
    env |= {"CLOUDSDK_CORE_PROJECT": "from-env", "CLOUDSDK_COMPUTE_ZONE": "zone-e"}
    s = resolve_settings(env=env, user_home=tmp_path)
    assert (s.project, s.zones, s.zones_source) == (
        "from-env",
        ("zone-e",),
        "CLOUDSDK_COMPUTE_ZONE",
    )
    assert s.default_zone == "zone-e"
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
    with pytest.raises(ConsoleError) as err:
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
    with pytest.raises(ConsoleError) as err:
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
    with pytest.raises(ConsoleError, match="stuck_after in .* must be a positive number"):
        resolve_settings(env=env, user_home=tmp_path)


def test_a_misspelt_key_is_refused_with_its_file_and_the_key_meant(tmp_path: Path) -> None:
    """`projcet = "p"` used to be ignored: the console opened on the sandbox as if unset."""
    env = _ours(tmp_path, 'projcet = "p"\n')
    with pytest.raises(ConsoleError) as err:
        resolve_settings(env=env, user_home=tmp_path)
    assert "'projcet'" in err.value.reason and "config.toml" in err.value.reason
    assert err.value.remedy == "Did you mean project?"
    assert err.value.field == "projcet"


def test_a_misspelt_key_under_ssh_names_its_table(tmp_path: Path) -> None:
    env = _ours(tmp_path, '[ssh]\nproxy_comand = "x"\n')
    with pytest.raises(ConsoleError) as err:
        resolve_settings(env=env, user_home=tmp_path)
    assert "'ssh.proxy_comand'" in err.value.reason
    assert err.value.remedy == "Did you mean ssh.proxy_command?"


def test_every_key_the_readme_shows_is_in_the_schema(tmp_path: Path) -> None:
    """The README's example config.toml passes the schema as it is written there."""
    readme = (Path(__file__).parents[3] / "README.md").read_text()
    blocks = [b.split("```", 1)[0] for b in readme.split("```toml\n")[1:]]
    assert blocks, "the README shows config.toml"
    for block in blocks:
        env = _ours(tmp_path, block)
        resolve_settings(env=env, user_home=tmp_path)
