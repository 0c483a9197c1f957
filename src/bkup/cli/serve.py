"""`bkup serve`: open the catalog and storage, say what the operator must know, run the HTTP server."""

from __future__ import annotations

import typer

from bkup.cli.common import ConfigFile, DatabaseUrl, DataDir, StorageUrl, server_settings


def serve(
    host: str | None = typer.Option(None, "--host", help="Address to listen on (env BKUP_HOST; default 127.0.0.1).", show_default=False),
    port: int | None = typer.Option(None, "--port", help="Port (env BKUP_PORT; default 8200).", show_default=False),
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    storage_url: StorageUrl = None,
    config: ConfigFile = None,
) -> None:
    """Run the bkup server (API under /api/v1, OpenAPI at /schema).

    Exit codes: 0 stopped cleanly, 1 error (bad settings, database or storage unreachable), 2 usage error.
    """
    import uvicorn

    from bkup.server.accounts import ensure_first_admin
    from bkup.server.app import create_app
    from bkup.server.context import open_context

    settings = server_settings(config, host=host, port=port, data_dir=data_dir, database_url=database_url, storage_url=storage_url)
    ctx = open_context(settings)
    for notice in ctx.notices:
        typer.echo(notice, err=True)
    first = ensure_first_admin(ctx)
    if first:
        typer.echo(f"Created the first admin user {first[0]!r} with password: {first[1]}", err=True)
        typer.echo("It is shown only this once; change it after logging in.", err=True)
    typer.echo(f"catalog: {_mask(settings.effective_database_url)}", err=True)
    typer.echo(f"storage: {ctx.store.url}", err=True)
    typer.echo(f"listening on http://{settings.host}:{settings.port}", err=True)
    app = create_app(settings, context=ctx)
    try:
        uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning", timeout_graceful_shutdown=10)
    finally:
        ctx.close()


def _mask(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url
