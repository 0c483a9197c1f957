"""`bkup client …`: manage clients on the server's own database (same settings as `bkup serve`)."""

from __future__ import annotations

import msgspec
import typer

from bkup.cli.common import ConfigFile, DatabaseUrl, DataDir, JsonFlag, StorageUrl, print_json, server_settings

app = typer.Typer(help="Manage clients (acts on the server's database directly).", no_args_is_help=True)


@app.command("add")
def add(
    name: str = typer.Argument(..., help="Client (machine) name, unique on the server."),
    user: str = typer.Option(..., "--user", help="The user who owns the client."),
    server: str | None = typer.Option(None, "--server", help="Server URL to put in the printed agent command (env BKUP_SERVER)."),
    json_: JsonFlag = False,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    storage_url: StorageUrl = None,
    config: ConfigFile = None,
) -> None:
    """Create a client and print its agent token (shown once only).

    Exit codes: 0 ok, 1 error (unknown user, name taken), 2 usage error.
    """
    from bkup.server import accounts
    from bkup.server.context import open_context

    settings = server_settings(config, data_dir=data_dir, database_url=database_url, storage_url=storage_url, server=server)
    ctx = open_context(settings)
    try:
        created = accounts.create_client(ctx, accounts.admin_principal(ctx, user), name)
    finally:
        ctx.close()
    url = settings.server or f"http://{settings.host}:{settings.port}"
    if json_:
        print_json({**msgspec.to_builtins(created), "command": _command(url, created.token)})
        return
    typer.echo(f"created client {created.name} (id {created.id}) for user {created.user}")
    typer.echo(f"agent token (shown once): {created.token}")
    typer.echo(f"run on the machine:  {_command(url, created.token)}")


def _command(url: str, token: str) -> str:
    return f"bkup agent --server {url} --token {token} --path /path/to/back/up"
