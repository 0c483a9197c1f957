"""`bkup check`: verify the catalog against storage and, with --read-data, every chunk's bytes.

Exit codes: 0 no problem found, 1 error (the check could not run), 2 usage
error, 3 damage found (the report names the affected files).
"""

from __future__ import annotations

from typing import Annotated

import typer

from bkup.cli.common import ConfigFile, DatabaseUrl, DataDir, JsonFlag, StorageUrl, print_json, server_settings
from bkup.errors import UsageError
from bkup.settings import Settings

EXIT_DAMAGE = 3


def run_check(settings: Settings, *, read_data: bool = False, subset: float | None = None):
    """What `bkup check` does; returns a `bkup.server.check.CheckReport`."""
    from bkup.server import maintenance
    from bkup.server.check import check
    from bkup.server.context import open_context

    ctx = open_context(settings)
    try:
        return maintenance.recorded(ctx, "check", "cli", lambda: check(ctx, read_data=read_data, subset_percent=subset))
    finally:
        ctx.close()


def render(report) -> list[str]:
    lines = [f"{p.kind}: user {p.user}" + (f", pack {p.pack_id}" if p.pack_id else "")
             + (f", chunk {p.chunk_id}" if p.chunk_id else "") + f": {p.detail}" for p in report.problems]
    if report.affected:
        lines.append("affected files:")
        for f in report.affected:
            runs = f"run {f.valid_from}-" + ("now" if f.valid_to is None else str(f.valid_to - 1))
            lines.append(f"  {f.client}:{f.path} ({runs})")
    lines.append(report.summary())
    return lines


def check(
    read_data: Annotated[bool, typer.Option("--read-data", help="Also read, decrypt and hash every chunk.")] = False,
    read_data_subset: Annotated[
        float | None, typer.Option("--read-data-subset", help="Read the data of this percentage of packs, chosen at random.", show_default=False)
    ] = None,
    json_: JsonFlag = False,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    storage_url: StorageUrl = None,
    config: ConfigFile = None,
) -> None:
    """Check that every chunk the catalog knows is in storage, intact (with --read-data), and where the catalog says.

    Exit codes: 0 clean, 1 error, 2 usage error, 3 damage found.
    """
    if read_data and read_data_subset is not None:
        raise UsageError("give --read-data or --read-data-subset, not both")
    settings = server_settings(config, data_dir=data_dir, database_url=database_url, storage_url=storage_url)
    report = run_check(settings, read_data=read_data, subset=read_data_subset)
    if json_:
        print_json(report.to_dict())
    else:
        for line in render(report):
            typer.echo(line)
    if not report.ok:
        raise typer.Exit(EXIT_DAMAGE)
