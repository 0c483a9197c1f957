"""`bkup alert test`: send a test event to the configured webhooks now and say what each answered."""

from __future__ import annotations

import typer

from bkup.cli.common import ConfigFile, DatabaseUrl, DataDir, JsonFlag, StorageUrl, print_json, server_settings

app = typer.Typer(help="Webhook alerts (docs/alerts.md).", no_args_is_help=True)


@app.command("test")
def test(
    user: str | None = typer.Option(None, "--user", help="Also send to this user's own webhook.", show_default=False),
    json_: JsonFlag = False,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    storage_url: StorageUrl = None,
    config: ConfigFile = None,
) -> None:
    """Send a "test" event to the global webhooks (alert_webhooks) and, with --user, that user's webhook.

    --json prints a list of {"url", "ok", "status", "error"} (URL paths hidden).

    Exit codes: 0 every webhook answered 2xx, 1 error (no webhook configured, or one failed), 2 usage error.
    """
    from bkup.errors import ConfigError
    from bkup.server import alerts
    from bkup.server.accounts import get_user
    from bkup.server.context import open_context

    ctx = open_context(server_settings(config, data_dir=data_dir, database_url=database_url, storage_url=storage_url))
    try:
        urls = list(ctx.settings.alert_webhooks)
        if user:
            with ctx.catalog.session() as s:
                own = get_user(s, user).alert_webhook
            if own:
                urls.append(own)
        event = alerts.AlertEvent(event="test", summary="test alert from bkup (bkup alert test)", user=user, server=ctx.metrics.replica)
        if not urls:
            raise ConfigError("no webhook configured: set alert_webhooks, or a user's webhook with 'bkup user webhook'")
        results = alerts.deliver_now(ctx, event, list(dict.fromkeys(urls)))
    finally:
        ctx.close()
    if json_:
        print_json(results)
    else:
        for r in results:
            typer.echo(f"{'ok    ' if r['ok'] else 'FAILED'} {r['url']}  {r['status'] or r['error']}")
    if not all(r["ok"] for r in results):
        raise typer.Exit(1)
