"""`bkup ls`: list a client's backed-up files, as of a run or a time.

Exit codes: 0 ok, 1 error (no such client or path, auth), 2 usage error.
"""

from __future__ import annotations

import stat
from datetime import UTC, datetime
from typing import Annotated, Any

import httpx
import typer

from bkup import protocol
from bkup.agent.credentials import client_api, find_client
from bkup.agent.progress import format_bytes
from bkup.agent.restore import list_entries, parse_at
from bkup.cli.common import JsonFlag, print_json
from bkup.errors import UsageError
from bkup.settings import Settings, load_settings

_TYPE_BITS = {"file": stat.S_IFREG, "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK}

Server = Annotated[str | None, typer.Option("--server", help="Server URL (env BKUP_SERVER).", show_default=False)]
Token = Annotated[
    str | None, typer.Option("--token", help="API or agent token (env BKUP_TOKEN; default: from 'bkup login').", show_default=False)
]
Client = Annotated[str, typer.Option("--client", help="Client (machine) name.")]
At = Annotated[
    str | None,
    typer.Option("--at", help="As of this ISO 8601 time (local unless an offset is given; a date means its end).", show_default=False),
]
Run = Annotated[int | None, typer.Option("--run", help="As of this run number.", min=1, show_default=False)]


def as_of(at: str | None, run: int | None) -> str | None:
    """Check --at/--run and turn --at into the API's form."""
    if at is not None and run is not None:
        raise UsageError("give --at or --run, not both")
    return parse_at(at) if at is not None else None


def list_path(
    settings: Settings, client: str, path: str = "/", *, at: str | None = None, run: int | None = None,
    transport: httpx.BaseTransport | None = None,
) -> protocol.Tree:
    """The entries `bkup ls` shows (`at` as the user typed it)."""
    at_utc = as_of(at, run)
    with client_api(settings, transport=transport) as api:
        info = find_client(api, client)
        return list_entries(api, info.id, path, run=run, at=at_utc)


def iso_ns(ns: int) -> str:
    """A nanosecond timestamp as ISO 8601 UTC, to the microsecond."""
    seconds, rest = divmod(ns, 1_000_000_000)
    return datetime.fromtimestamp(seconds, UTC).replace(microsecond=rest // 1000).isoformat()


def entry_json(v: protocol.VersionInfo) -> dict[str, Any]:
    return {
        "path": v.path,
        "name": v.name,
        "kind": v.kind,
        "size": v.size,
        "mtime": iso_ns(v.mtime_ns),
        "mtime_ns": v.mtime_ns,
        "mode": v.mode,
        "mode_text": stat.filemode(_TYPE_BITS[v.kind] | v.mode),
        "uid": v.uid,
        "gid": v.gid,
        "link_target": v.link_target,
        "content_id": v.content_id,
        "valid_from": v.valid_from,
        "valid_to": v.valid_to,
    }


def entry_line(v: protocol.VersionInfo) -> str:
    seconds = v.mtime_ns // 1_000_000_000
    when = datetime.fromtimestamp(seconds).strftime("%Y-%m-%d %H:%M")
    size = format_bytes(v.size) if v.kind == "file" else "-"
    name = v.name or v.path
    if v.kind == "dir":
        name += "/"
    elif v.kind == "symlink":
        name += f" -> {v.link_target}"
    return f"{stat.filemode(_TYPE_BITS[v.kind] | v.mode)} {v.uid:>6} {v.gid:>6} {size:>10}  {when}  {name}"


def ls(
    path: Annotated[str, typer.Argument(help="Directory (or file) on the client, e.g. /home/alice.")] = "/",
    server: Server = None,
    token: Token = None,
    client: Client = ...,  # type: ignore[assignment]
    at: At = None,
    run: Run = None,
    json_: JsonFlag = False,
) -> None:
    """List a client's backed-up files (latest run unless --at or --run).

    Exit codes: 0 ok, 1 error (no such client or path, auth), 2 usage error.
    """
    settings = load_settings(server=server, token=token)
    tree = list_path(settings, client, path, at=at, run=run)
    if json_:
        print_json([entry_json(v) for v in tree.entries])
        return
    typer.echo(f"{tree.path} as of run {tree.run}:", err=True)
    for v in tree.entries:
        typer.echo(entry_line(v))
