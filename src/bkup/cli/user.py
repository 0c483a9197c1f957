"""`bkup user …`: manage users on the server's own database (same settings as `bkup serve`)."""

from __future__ import annotations

import sys

import msgspec
import typer

from bkup.cli.common import ConfigFile, DatabaseUrl, DataDir, JsonFlag, StorageUrl, print_json, read_password_stdin, server_settings

app = typer.Typer(help="Manage users (acts on the server's database directly).", no_args_is_help=True)


@app.command("add")
def add(
    name: str = typer.Argument(..., help="User name."),
    admin: bool = typer.Option(False, "--admin", help="Make the user an admin."),
    password_stdin: bool = typer.Option(False, "--password-stdin", help="Read the password from standard input."),
    json_: JsonFlag = False,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    storage_url: StorageUrl = None,
    config: ConfigFile = None,
) -> None:
    """Create a user. Without --password-stdin, asks on a terminal or generates a password and prints it once.

    Exit codes: 0 ok, 1 error (e.g. name taken), 2 usage error.
    """
    from bkup.server import accounts
    from bkup.server.context import open_context
    from bkup.server.security import new_password

    generated = False
    if password_stdin:
        password = read_password_stdin()
    elif sys.stdin.isatty():
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    else:
        password, generated = new_password(), True
    ctx = open_context(server_settings(config, data_dir=data_dir, database_url=database_url, storage_url=storage_url))
    try:
        user = accounts.create_user(ctx, name, password, is_admin=admin)
    finally:
        ctx.close()
    if json_:
        out = msgspec.to_builtins(accounts.user_info(user))
        if generated:
            out["password"] = password
        print_json(out)
    else:
        typer.echo(f"created {'admin' if admin else 'user'} {name}")
        if generated:
            typer.echo(f"password: {password}  (shown once)")


@app.command("list")
def list_(
    json_: JsonFlag = False,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    storage_url: StorageUrl = None,
    config: ConfigFile = None,
) -> None:
    """List users.

    Exit codes: 0 ok, 1 error.
    """
    from bkup.server import accounts
    from bkup.server.context import open_context

    ctx = open_context(server_settings(config, data_dir=data_dir, database_url=database_url, storage_url=storage_url))
    try:
        infos = [accounts.user_info(u) for u in accounts.list_users(ctx)]
    finally:
        ctx.close()
    if json_:
        print_json(infos)
        return
    for u in infos:
        typer.echo(f"{u.name}\t{'admin' if u.is_admin else 'user'}\t{u.created_at}")



@app.command("webhook")
def webhook(
    name: str = typer.Argument(..., help="User name."),
    url: str | None = typer.Argument(None, help="http(s) URL to send this user's alerts to; omit to show the current one.", show_default=False),
    clear: bool = typer.Option(False, "--clear", help="Remove the user's webhook."),
    json_: JsonFlag = False,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    storage_url: StorageUrl = None,
    config: ConfigFile = None,
) -> None:
    """Show, set or clear the user's own alert webhook (besides the global alert_webhooks; docs/alerts.md).

    --json prints {"user": NAME, "webhook": URL|null}.

    Exit codes: 0 ok, 1 error (no such user), 2 usage error (bad URL, URL with --clear).
    """
    from bkup.errors import UsageError
    from bkup.server import alerts
    from bkup.server.accounts import get_user
    from bkup.server.context import open_context

    if clear and url:
        raise UsageError("give a URL or --clear, not both")
    ctx = open_context(server_settings(config, data_dir=data_dir, database_url=database_url, storage_url=storage_url))
    try:
        with ctx.catalog.session() as s:
            user_id = get_user(s, name).id
        current = alerts.set_user_webhook(ctx, user_id, url) if (url or clear) else alerts.get_user_webhook(ctx, user_id)
    finally:
        ctx.close()
    if json_:
        print_json({"user": name, "webhook": current})
    else:
        typer.echo(current or "(no webhook)")
