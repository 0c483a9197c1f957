"""`bkup restore`: bring a client's files back into a target folder, as of a run or a time.

`/home/x/f` is restored as `TARGET/home/x/f`. Exit codes: 0 ok, 1 error (no such
client, run or path; target not empty), 2 usage error, 3 done, but some entries
could not be restored (damaged data, unsafe paths).
"""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import httpx
import typer

from bkup.agent.credentials import client_api, find_client
from bkup.agent.progress import Progress, format_bytes, make_progress
from bkup.agent.restore import RestoreResult, restore_tree
from bkup.cli.common import JsonFlag, print_json
from bkup.cli.ls import At, Client, Run, Server, Token, as_of
from bkup.settings import Settings, load_settings

EXIT_DAMAGE = 3


def restore_client(
    settings: Settings,
    client: str,
    target: Path | str,
    *,
    subpath: str = "/",
    at: str | None = None,
    run: int | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
    transport: httpx.BaseTransport | None = None,
) -> RestoreResult:
    """What `bkup restore` does (`at` as the user typed it)."""
    at_utc = as_of(at, run)
    with client_api(settings, transport=transport) as api:
        info = find_client(api, client)
        return restore_tree(api, info.id, Path(target), run=run, at=at_utc, subpath=subpath, overwrite=overwrite, progress=progress)


def restore(
    server: Server = None,
    token: Token = None,
    client: Client = ...,  # type: ignore[assignment]
    at: At = None,
    run: Run = None,
    path: Annotated[str, typer.Option("--path", help="Only this path (and what is under it).")] = "/",
    target: Annotated[Path, typer.Option("--target", help="Folder to restore into (created if missing; must be empty).")] = ...,  # type: ignore[assignment]
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Restore into a folder that is not empty, replacing files.")] = False,
    json_: JsonFlag = False,
) -> None:
    """Restore a client's files (latest run unless --at or --run) under --target.

    Exit codes: 0 ok, 1 error, 2 usage error, 3 some entries could not be restored.
    """
    settings = load_settings(server=server, token=token)
    result = restore_client(
        settings, client, target, subpath=path, at=at, run=run, overwrite=overwrite, progress=make_progress(stream=sys.stderr)
    )
    if json_:
        print_json({**asdict(result), "target": str(target)})
    else:
        typer.echo(
            f"restored run {result.run} into {target}: {result.files} files ({format_bytes(result.bytes)}), "
            f"{result.dirs} dirs, {result.symlinks} symlinks"
        )
    for message in result.errors:
        typer.echo(f"error: {message}", err=True)
    if result.errors:
        typer.echo(f"error: {len(result.errors)} entries could not be restored", err=True)
        raise typer.Exit(EXIT_DAMAGE)
