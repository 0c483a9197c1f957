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
    log_json: bool | None = typer.Option(None, "--log-json/--log-text", help="Log JSON lines on stderr (env BKUP_LOG_JSON).", show_default=False),
    log_level: str | None = typer.Option(None, "--log-level", help="debug, info, warning or error (env BKUP_LOG_LEVEL; default info).", show_default=False),
) -> None:
    """Run the bkup server (API under /api/v1, OpenAPI at /schema, /healthz, /readyz, /metrics).

    Exit codes: 0 stopped cleanly, 1 error (bad settings, database or storage unreachable), 2 usage error.
    """
    import logging

    import uvicorn
    from sqlalchemy.exc import IntegrityError

    from bkup.logsetup import setup_logging
    from bkup.server.accounts import ensure_first_admin
    from bkup.server.app import create_app
    from bkup.server.context import open_context

    settings = server_settings(
        config, host=host, port=port, data_dir=data_dir, database_url=database_url, storage_url=storage_url,
        log_json=log_json, log_level=log_level,
    )
    setup_logging(json=settings.log_json, level=settings.log_level)
    log = logging.getLogger("bkup.serve")
    ctx = open_context(settings)
    for notice in ctx.notices:
        log.warning(notice)
    try:
        first = ensure_first_admin(ctx)
    except IntegrityError:  # replicas starting together on an empty database: another one created it
        first = None
    if first:
        # Printed, never logged: the one place a password is shown (once), so log filters do not eat it.
        typer.echo(f"Created the first admin user {first[0]!r} with password: {first[1]}", err=True)
        typer.echo("It is shown only this once; change it after logging in.", err=True)
    log.info("catalog: %s", _mask(settings.effective_database_url), extra={"catalog": ctx.catalog.kind})
    log.info("storage: %s", ctx.store.url)
    tls = tls_options(settings)
    scheme = "https" if tls else "http"
    log.info("listening on %s://%s:%s", scheme, settings.host, settings.port, extra={"replica": ctx.metrics.replica})
    app = create_app(settings, context=ctx)
    try:
        uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level.lower(), log_config=None,
                    access_log=False, timeout_graceful_shutdown=10, **tls)
    finally:
        ctx.close()


def tls_options(settings) -> dict[str, str]:
    """uvicorn's TLS arguments from `tls_cert`/`tls_key` ({} for plain HTTP); both or neither, both readable."""
    from pathlib import Path

    from bkup.errors import ConfigError

    if not settings.tls_cert and not settings.tls_key:
        return {}
    if not (settings.tls_cert and settings.tls_key):
        raise ConfigError("set both tls_cert and tls_key (BKUP_TLS_CERT, BKUP_TLS_KEY) to serve HTTPS, or neither")
    for name in ("tls_cert", "tls_key"):
        path = Path(getattr(settings, name))
        if not path.is_file():
            raise ConfigError(f"{name}: no such file: {path}")
    return {"ssl_certfile": settings.tls_cert, "ssl_keyfile": settings.tls_key}


def _mask(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url
