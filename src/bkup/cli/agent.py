"""`bkup agent`: keep this machine backed up (the service, docs/agent.md), or one run with --once; `bkup agent status`.

Exit codes: 0 backup ok (the service: stopped by SIGTERM/SIGINT), 1 error (run
failed, server unreachable, auth), 2 usage error (an unconfigured service with
the setup page off), 3 backup finished but some files could not be read (run
"partial").
"""

from __future__ import annotations

import sys
from typing import Annotated

import httpx
import msgspec
import typer

from bkup.agent.backup import BackupResult, run_backup
from bkup.agent.credentials import agent_api
from bkup.agent.progress import Progress, format_bytes, make_progress
from bkup.agent.state import StateCache
from bkup.cli.common import JsonFlag, print_json, read_password_stdin
from bkup.errors import UsageError
from bkup.logsetup import setup_logging
from bkup.settings import Settings, load_settings

EXIT_PARTIAL = 3

app = typer.Typer(
    # The help is the callback's docstring (it names the exit codes).
    invoke_without_command=True,
    no_args_is_help=False,
)


def agent_once(
    settings: Settings,
    paths: list[str],
    excludes: list[str],
    *,
    user: str | None = None,
    password: str | None = None,
    name: str | None = None,
    progress: Progress | None = None,
    transport: httpx.BaseTransport | None = None,
) -> BackupResult:
    """One backup run of `paths` (what `bkup agent --once` does); registers the machine first if needed."""
    if not paths:
        raise UsageError("nothing to back up: give at least one --path")
    api, identity = agent_api(
        settings, user=user, password=(lambda: password) if password is not None else None, name=name, transport=transport
    )
    with api, StateCache.open(settings.state_dir, server=identity.server, client_id=identity.client_id) as cache:
        return run_backup(api, paths, excludes, cache, trigger="once", progress=progress)


def result_json(result: BackupResult) -> dict:
    return {
        "run": result.run.seq,
        "run_id": result.run.id,
        "client_id": result.run.client_id,
        "status": result.run.status,
        **msgspec.to_builtins(result.stats),
        "warnings": result.warnings,
    }


def result_text(result: BackupResult) -> str:
    s = result.stats
    return (
        f"run {result.run.seq} {result.run.status}: {s.files_seen} files, {s.dirs_seen} dirs; "
        f"{s.files_changed} changed, {s.files_deleted} deleted; {format_bytes(s.bytes_scanned)} read, "
        f"{format_bytes(s.bytes_new)} new, {format_bytes(s.bytes_uploaded)} uploaded"
        + (f"; {s.errors} error(s)" if s.errors else "")
    )


@app.callback(invoke_without_command=True)
def agent(
    ctx: typer.Context,
    server: Annotated[str | None, typer.Option("--server", help="Server URL (env BKUP_SERVER).", show_default=False)] = None,
    token: Annotated[str | None, typer.Option("--token", help="This client's agent token (env BKUP_TOKEN).", show_default=False)] = None,
    user: Annotated[
        str | None, typer.Option("--user", help="Register this machine as a client of this user (with --password-stdin).", show_default=False)
    ] = None,
    password_stdin: Annotated[bool, typer.Option("--password-stdin", help="Read the user's password from standard input.")] = False,
    name: Annotated[
        str | None, typer.Option("--name", help="Client name when registering (env BKUP_CLIENT_NAME; default: the host name).", show_default=False)
    ] = None,
    path: Annotated[list[str] | None, typer.Option("--path", help="A directory or file to back up (repeatable; env BKUP_PATHS).", show_default=False)] = None,
    exclude: Annotated[
        list[str] | None, typer.Option("--exclude", help="gitignore-style pattern to leave out (repeatable; env BKUP_EXCLUDE).", show_default=False)
    ] = None,
    once: Annotated[bool, typer.Option("--once", help="Run one backup and exit.")] = False,
    json_: JsonFlag = False,
    state_dir: Annotated[str | None, typer.Option("--state-dir", help="Agent state folder (env BKUP_STATE_DIR).", show_default=False)] = None,
    setup_ui: Annotated[
        bool | None,
        typer.Option(
            "--setup-ui/--no-setup-ui",
            help="Serve the setup/status page even when configured / never (default: only while unconfigured; env BKUP_SETUP_UI).",
            show_default=False,
        ),
    ] = None,
    setup_ui_listen: Annotated[
        str | None, typer.Option("--setup-ui-listen", help="HOST:PORT of the setup page (env BKUP_SETUP_UI_LISTEN; default 127.0.0.1:8080).", show_default=False)
    ] = None,
    no_server_commands: Annotated[
        bool, typer.Option("--no-server-commands", help="Refuse the pre-backup commands the server hands out (env BKUP_NO_SERVER_COMMANDS).")
    ] = False,
) -> None:
    """Keep this machine backed up, steered by the server; or one run with --once.

    Without --once the agent runs until SIGTERM/SIGINT: a full scan at once and
    on the schedule, small runs for the files that change, "backup now" from the
    server (docs/agent.md). --path/--exclude are used while the server's
    configuration names no paths. The agent token is stored in the state dir
    (agent.json, mode 0600), so later starts need neither --token nor a
    password. Exit codes: 0 ok, 1 error, 2 usage error (or not configured), 3
    (--once) finished with files that could not be read.
    """
    if ctx.invoked_subcommand is not None:
        return
    settings = load_settings(
        server=server, token=token, state_dir=state_dir, user=user, client_name=name,
        paths=tuple(path) if path else None, exclude=tuple(exclude) if exclude else None,
        setup_ui_listen=setup_ui_listen, no_server_commands=True if no_server_commands else None,
    )
    if user is not None and not password_stdin and not settings.password:
        raise UsageError("--user needs --password-stdin (or BKUP_PASSWORD)")
    password = read_password_stdin() if password_stdin else (settings.password or None)
    if not once:
        from bkup.agent.service import Service

        setup_logging(json=settings.log_json, level=settings.log_level)
        code = Service(settings, user=settings.user or None, password=password, name=name, setup_ui=setup_ui).run()
        raise typer.Exit(code)
    result = agent_once(
        settings, list(settings.paths), list(settings.exclude), user=settings.user or None, password=password,
        name=settings.client_name or None, progress=make_progress(stream=sys.stderr),
    )
    if json_:
        print_json(result_json(result))
    else:
        typer.echo(result_text(result))
    for warning in result.warnings:
        typer.echo(f"warning: {warning}", err=True)
    if result.run.status == "partial":
        raise typer.Exit(EXIT_PARTIAL)


@app.command("status")
def status(
    json_: JsonFlag = False,
    state_dir: Annotated[str | None, typer.Option("--state-dir", help="Agent state folder (env BKUP_STATE_DIR).", show_default=False)] = None,
) -> None:
    """What the agent using this state dir is doing: state, current and last run, last error.

    Exit codes: 0 the agent is running, 1 it is not (or never ran here).
    """
    from bkup.agent.status import describe, read_status

    settings = load_settings(state_dir=state_dir)
    found = read_status(settings.state_dir)
    if found is None:
        if json_:
            print_json({"running": False, "state": None})
        else:
            typer.echo(f"no agent has run with the state dir {settings.state_dir}")
        raise typer.Exit(1)
    if json_:
        print_json(found)
    else:
        typer.echo(describe(found))
    if not found.get("running"):
        raise typer.Exit(1)
