"""`bkup agent`: back up this machine to a bkup server (one run with --once; continuous mode comes later).

Exit codes: 0 backup ok, 1 error (run failed, server unreachable, auth), 2 usage
error, 3 backup finished but some files could not be read (run "partial").
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
from bkup.settings import Settings, load_settings

EXIT_PARTIAL = 3

app = typer.Typer(
    help="Back up this machine to a bkup server.",
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
    name: Annotated[str | None, typer.Option("--name", help="Client name when registering (default: the host name).", show_default=False)] = None,
    path: Annotated[list[str] | None, typer.Option("--path", help="A directory or file to back up (repeatable).", show_default=False)] = None,
    exclude: Annotated[
        list[str] | None, typer.Option("--exclude", help="gitignore-style pattern to leave out (repeatable).", show_default=False)
    ] = None,
    once: Annotated[bool, typer.Option("--once", help="Run one backup and exit.")] = False,
    json_: JsonFlag = False,
    state_dir: Annotated[str | None, typer.Option("--state-dir", help="Agent state folder (env BKUP_STATE_DIR).", show_default=False)] = None,
) -> None:
    """Back up this machine: one run with --once.

    The agent token is stored in the state dir (agent.json, mode 0600), so
    later runs need neither --token nor a password. Exit codes: 0 ok, 1 error,
    2 usage error, 3 finished with files that could not be read.
    """
    if ctx.invoked_subcommand is not None:
        return
    if not once:
        raise UsageError("continuous mode is not available yet: pass --once to run one backup and exit")
    if user is not None and not password_stdin:
        raise UsageError("--user needs --password-stdin")
    settings = load_settings(server=server, token=token, state_dir=state_dir)
    password = read_password_stdin() if password_stdin else None
    result = agent_once(
        settings, path or [], exclude or [], user=user, password=password, name=name, progress=make_progress(stream=sys.stderr)
    )
    if json_:
        print_json(result_json(result))
    else:
        typer.echo(result_text(result))
    for warning in result.warnings:
        typer.echo(f"warning: {warning}", err=True)
    if result.run.status == "partial":
        raise typer.Exit(EXIT_PARTIAL)
