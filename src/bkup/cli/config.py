"""`bkup config show`: the effective settings (defaults < config file < environment), secrets masked."""

from __future__ import annotations

from typing import Any

import typer

from bkup.cli.common import ConfigFile, JsonFlag, print_json

app = typer.Typer(help="Inspect bkup's settings.", no_args_is_help=True)

# Shown as the value they resolve to when left empty.
EFFECTIVE = {
    "database_url": "effective_database_url",
    "storage_url": "effective_storage_url",
    "master_key_file": "effective_master_key_file",
}


def effective_settings(config: str | None = None, env: dict[str, str] | None = None) -> dict[str, Any]:
    """{"config_file", "settings" (masked), "sources"}: what `config show --json` prints."""
    from bkup.settings import Settings, collect_settings, mask_url

    values, sources, path = collect_settings(config, env)
    settings = Settings(**values)
    shown = settings.masked()
    for name, prop in EFFECTIVE.items():
        if not getattr(settings, name):
            shown[name] = str(getattr(settings, prop))
    if shown["database_url"]:
        shown["database_url"] = mask_url(shown["database_url"])
    return {
        "config_file": path,
        "settings": shown,
        "sources": {name: sources.get(name, "default") for name in shown},
    }


@app.command("show")
def show(json_: JsonFlag = False, config: ConfigFile = None) -> None:
    """Print every setting's effective value and where it came from (default, file, env); secrets show as ***.

    --json prints {"config_file": PATH|null, "settings": {name: value}, "sources": {name: "default"|"file"|"env"}}.

    Exit codes: 0 ok, 1 error (unreadable or invalid config file, bad value in the environment), 2 usage error.
    """
    out = effective_settings(config)
    if json_:
        print_json(out)
        return
    typer.echo(f"# config file: {out['config_file'] or '(none)'}")
    width = max(map(len, out["settings"]))
    for name, value in out["settings"].items():
        shown = ",".join(value) if isinstance(value, list) else ("" if value is None else value)
        if isinstance(value, bool):
            shown = "true" if value else "false"
        typer.echo(f"{name:<{width}} = {shown}  ({out['sources'][name]})")
