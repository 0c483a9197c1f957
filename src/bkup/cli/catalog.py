"""`bkup catalog rebuild`: recreate the catalog from storage and the master key, into an empty database.

Exit codes: 0 rebuilt, 1 error (database not empty, wrong master key, storage unreachable), 2 usage error.
"""

from __future__ import annotations

from typing import Annotated

import typer

from bkup.cli.common import ConfigFile, JsonFlag, print_json, server_settings
from bkup.settings import Settings

app = typer.Typer(help="Catalog maintenance (acts on a database and storage directly).", no_args_is_help=True)


def run_rebuild(settings: Settings, admins: list[str] | None = None):
    """What `bkup catalog rebuild` does; returns a `bkup.server.rebuild.RebuildReport`."""
    from bkup.server.context import open_context
    from bkup.server.rebuild import ensure_empty, rebuild

    ctx = open_context(settings)
    try:
        ensure_empty(ctx)
        return rebuild(ctx, admins=admins or ())
    finally:
        ctx.close()


@app.command("rebuild")
def rebuild_cmd(
    storage_url: Annotated[str, typer.Option("--storage-url", help="The storage to read: file:///… or s3://bucket/prefix.")] = ...,  # type: ignore[assignment]
    database_url: Annotated[str, typer.Option("--database-url", help="An empty database to fill: sqlite:///… or postgresql://…")] = ...,  # type: ignore[assignment]
    admin: Annotated[
        list[str] | None, typer.Option("--admin", help="Make this user an admin (repeatable; default: the user named admin).", show_default=False)
    ] = None,
    json_: JsonFlag = False,
    config: ConfigFile = None,
) -> None:
    """Rebuild users, packs, chunks, clients, runs and versions from storage into an empty database.

    The master key comes from the usual settings (BKUP_MASTER_KEY, or the key
    file). Passwords are not in storage: every user gets a new random password,
    printed once. Agent tokens are not either: issue new ones.
    Exit codes: 0 ok, 1 error, 2 usage error.
    """
    settings = server_settings(config, storage_url=storage_url, database_url=database_url)
    report = run_rebuild(settings, admin)
    if json_:
        print_json({"summary": report.summary(), "users": [{"name": n, "password": p, "is_admin": a} for n, p, a in report.users],
                    "warnings": report.warnings})
        return
    typer.echo(f"rebuilt: {report.summary()}")
    for name, password, is_admin in report.users:
        typer.echo(f"user {name}{' (admin)' if is_admin else ''}: new password {password}  (shown once)")
    typer.echo("agent tokens are not kept in storage: give each machine a new one (POST /api/v1/clients/{id}/token)")
    for warning in report.warnings:
        typer.echo(f"warning: {warning}", err=True)
