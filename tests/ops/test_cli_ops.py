"""Scripting: every command's --help has its exit codes; config show, user webhook and alert test print documented JSON."""

from __future__ import annotations

import base64
import json
import os

import pytest
import typer.main
from typer.testing import CliRunner

from bkup.cli import main
from bkup.errors import BkupError
from bkup.settings import SettingsError, load_settings

main._register()
runner = CliRunner()


def _commands() -> list[tuple[str, ...]]:
    """Every command that does something: leaves, and groups that run without a subcommand (`bkup agent`)."""
    out: list[tuple[str, ...]] = []

    def walk(cmd, path):
        subs = getattr(cmd, "commands", None)
        if not subs or getattr(cmd, "invoke_without_command", False):
            out.append(path)
        for name, sub in (subs or {}).items():
            walk(sub, (*path, name))

    walk(typer.main.get_command(main.app), ())
    return [p for p in out if p]




@pytest.mark.parametrize(
    "command",
    _commands(),
    ids=" ".join,
)
def test_every_command_help_states_its_exit_codes(command):
    result = runner.invoke(main.app, [*command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "Exit codes" in result.output and "0 " in result.output.split("Exit codes", 1)[1]


def test_top_level_help_names_the_exit_codes_and_completion():
    result = runner.invoke(main.app, ["--help"], env={"COLUMNS": "200"})
    assert "Exit codes" in result.output and "--install-completion" in result.output


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("BKUP_")}
    e.update(BKUP_DATA_DIR=str(tmp_path / "data"), BKUP_CONFIG_DIR=str(tmp_path / "config"),
             BKUP_MASTER_KEY=base64.b64encode(os.urandom(32)).decode(), COLUMNS="200")
    return e


def invoke(env, *args, code: int = 0):
    """Run in-process; a BkupError counts with the exit code `main()` would give it."""
    result = runner.invoke(main.app, list(args), env=env)
    got = result.exception.exit_code if isinstance(result.exception, BkupError) else result.exit_code
    assert got == code, (result.output, result.exception)
    return result


def test_config_show_masks_secrets_and_says_where_each_value_came_from(tmp_path, env):
    cfg = tmp_path / "bkup.toml"
    cfg.write_text('port = 9100\nalert_webhooks = ["https://hooks.example/T0/secret-path"]\nalert_missed_margin = "2h"\n')
    env.update(BKUP_CONFIG=str(cfg), BKUP_DATABASE_URL="postgresql://bkup:hunter2@db:5432/bkup", BKUP_TOKEN="bkup_a_xyz",
               BKUP_LOG_JSON="yes")
    out = json.loads(invoke(env, "config", "show", "--json").stdout)
    assert out["config_file"] == str(cfg)
    s, src = out["settings"], out["sources"]
    assert s["port"] == 9100 and src["port"] == "file"
    assert s["alert_missed_margin"] == 7200
    assert s["database_url"] == "postgresql://bkup:***@db:5432/bkup" and src["database_url"] == "env"
    assert s["token"] == "***" and s["master_key"] == "***"
    assert s["alert_webhooks"] == ["https://hooks.example/***"]
    assert s["log_json"] is True and src["host"] == "default"
    assert s["storage_url"].startswith("file://")  # the effective value, not ""
    text = invoke(env, "config", "show").stdout
    assert "hunter2" not in text and "bkup_a_xyz" not in text and "secret-path" not in text
    assert "port" in text and "(file)" in text


def test_bad_settings_are_errors_naming_the_variable(env):
    with pytest.raises(SettingsError, match="BKUP_ALERT_MISSED_MARGIN"):
        load_settings(env={"BKUP_ALERT_MISSED_MARGIN": "soon"})
    with pytest.raises(SettingsError, match="BKUP_METRICS_ENABLED"):
        load_settings(env={"BKUP_METRICS_ENABLED": "maybe"})
    s = load_settings(env={"BKUP_ALERT_WEBHOOKS": "http://a/1, http://b/2,", "BKUP_GC_INTERVAL": "6h"})
    assert s.alert_webhooks == ("http://a/1", "http://b/2") and s.gc_interval == 21600
    env["BKUP_PORT"] = "eighty"
    result = runner.invoke(main.app, ["config", "show"], env=env)
    assert result.exit_code != 0 and isinstance(result.exception, SettingsError)


def test_user_webhook_and_alert_test_print_json(env, tmp_path):
    from ops_kit import Hook

    hook = Hook()
    try:
        result = runner.invoke(main.app, ["user", "add", "alice", "--password-stdin"], input="long-enough-pw\n", env=env)
        assert result.exit_code == 0, result.output
        assert json.loads(invoke(env, "user", "webhook", "alice", "--json").stdout) == {"user": "alice", "webhook": None}
        out = json.loads(invoke(env, "user", "webhook", "alice", hook.url, "--json").stdout)
        assert out == {"user": "alice", "webhook": hook.url}
        invoke(env, "user", "webhook", "alice", "ftp://nope", code=2)
        invoke(env, "alert", "test", code=1)  # nothing global, no --user
        results = json.loads(invoke(env, "alert", "test", "--user", "alice", "--json").stdout)
        assert results == [{"url": hook.url.rsplit("/", 1)[0] + "/***", "ok": True, "status": 200, "error": None}]
        assert hook.events("test")[0]["user"] == "alice"
        assert json.loads(invoke(env, "user", "webhook", "alice", "--clear", "--json").stdout)["webhook"] is None
    finally:
        hook.close()
