"""The `bkup` command: one typer app; each command group lives in its own module."""

from __future__ import annotations

import sys

import typer

from bkup.errors import BkupError

app = typer.Typer(
    name="bkup",
    help="Centrally managed, deduplicating, continuous backup.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    # Imported here so `bkup --help` stays one import deep per group.
    from bkup.cli import agent, client, login, ls, restore, serve, user

    app.command("serve")(serve.serve)
    app.add_typer(user.app, name="user")
    app.add_typer(client.app, name="client")
    app.add_typer(agent.app, name="agent")
    app.command("login")(login.login)
    app.command("ls")(ls.ls)
    app.command("restore")(restore.restore)


def main() -> None:
    _register()
    try:
        app()
    except BkupError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
