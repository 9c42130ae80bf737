"""The notification pieces a user configures or sees: config keys, the terminal escape."""

from __future__ import annotations

from pathlib import Path

import pytest

from console.models import ConfigError
from console.services.notify import osc_notification
from console.services.settings import resolve_settings


def settings_with(tmp_path: Path, text: str, **kw):
    config = tmp_path / "xdg" / "tpuconsole" / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(text)
    env = {"XDG_CONFIG_HOME": str(tmp_path / "xdg"), "CLOUDSDK_CONFIG": str(tmp_path / "g")}
    return resolve_settings(env=env, user_home=tmp_path, **kw)


def test_notify_and_log_bucket_are_read_from_config_toml(tmp_path: Path) -> None:
    s = settings_with(
        tmp_path,
        '[notify]\ncommand = "notify-me"\nwebhook = "https://hooks.example/x"\n'
        '[jobs]\nlog_bucket = "gs://b/logs"\n',
        project="p",
    )
    assert (s.notify_command, s.notify_webhook, s.log_bucket) == (
        "notify-me",
        "https://hooks.example/x",
        "gs://b/logs",
    )


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('[notify]\nwebhook = "hooks.slack.com/x"\n', "notify.webhook"),
        ("[notify]\ncommand = 3\n", "notify.command"),
        ('[jobs]\nlog_bucket = "/tmp/bucket"\n', "jobs.log_bucket"),  # off the sandbox
        ('[notify]\ncomand = "x"\n', "notify.comand"),
    ],
)
def test_bad_notify_and_bucket_settings_are_refused_by_name(
    tmp_path: Path, text: str, field: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        settings_with(tmp_path, text, project="p")
    assert refused.value.field == field


def test_a_local_folder_stands_in_for_the_bucket_on_the_sandbox(tmp_path: Path) -> None:
    s = settings_with(tmp_path, '[jobs]\nlog_bucket = "/tmp/bucket"\n')
    assert s.sandbox and s.log_bucket == "/tmp/bucket"


def test_the_desktop_notification_carries_no_escape_from_a_job() -> None:
    hostile = "done\x1b]52;c;ZXZpbA==\x07; rm -rf ~\x07"
    nine = osc_notification("tpuconsole", hostile)
    assert nine.startswith("\x07\x1b]9;tpuconsole: done") and nine.endswith("\x07")
    assert nine.count("\x1b") == 1 and nine.count("\x07") == 2  # its own, nothing of the job's
    seven = osc_notification("t", "a;b", "WezTerm")
    assert seven == "\x07\x1b]777;notify;t;a,b\x07"
