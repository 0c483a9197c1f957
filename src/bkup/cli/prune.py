"""`bkup prune`: apply the retention policies on the server's own database and storage, then collect garbage.

Prints what it removes and why, and how many bytes that frees; `--dry-run`
prints exactly the plan a real run would execute and changes nothing.
Exit codes: 0 ok, 1 error (unknown user or client: nothing is touched), 2 usage error.
"""

from __future__ import annotations

from typing import Annotated

import typer

from bkup.agent.progress import format_bytes
from bkup.cli.common import ConfigFile, DatabaseUrl, DataDir, JsonFlag, StorageUrl, print_json, server_settings
from bkup.settings import Settings


def run_prune(settings: Settings, *, user: str | None = None, client: str | None = None, dry_run: bool = False):
    """What `bkup prune` does; returns a `bkup.server.prune.PruneResult`."""
    from bkup.server import maintenance, prune
    from bkup.server.context import open_context

    ctx = open_context(settings)
    try:
        if dry_run:
            return prune.prune(ctx, user=user, client=client, dry_run=True)
        return maintenance.recorded(ctx, "prune", "cli", lambda: prune.prune(ctx, user=user, client=client))
    finally:
        ctx.close()


def _run_range(valid_from: int, valid_to: int | None) -> str:
    return f"runs {valid_from}-{valid_to - 1}" if valid_to and valid_to - 1 > valid_from else f"run {valid_from}"


def render(result) -> list[str]:
    """The text report of a prune (or of its plan, for a dry run)."""
    plan = result.plan
    lines: list[str] = []
    for c in plan.clients:
        lines.append(f"client {c.client_name} (user {c.user_name}): {c.policy.describe()}")
        for r in c.removals:
            size = f", {format_bytes(r.size)}" if r.kind == "file" else ""
            lines.append(f"  remove {r.path} [{r.kind}, {_run_range(r.valid_from, r.valid_to)}{size}]: {'; '.join(r.reasons)}")
        lines.append(f"  {c.examined} version(s) examined: keep {c.examined - len(c.removals)}, remove {len(c.removals)}")
    freed = plan.freed
    verb = "would remove" if result.dry_run else "removed"
    n = plan.removal_count if result.dry_run else result.removed
    total = f"{verb} {n} version(s)"
    if freed is not None:
        total += (
            f"; {'would free' if result.dry_run else 'freed'} {freed.chunks} chunk(s) no version references any more: "
            f"{format_bytes(freed.raw_bytes)} raw, {format_bytes(freed.stored_bytes)} stored"
        )
    lines.append(total)
    if result.dry_run:
        lines.append("dry run: nothing was changed")
    elif result.gc is not None:
        lines.append(f"garbage collection: {result.gc.summary()}")
        lines.extend(f"  error: {e}" for e in result.gc.errors)
    return lines


def prune(
    user: Annotated[str | None, typer.Option("--user", help="Only this user's clients.", show_default=False)] = None,
    client: Annotated[str | None, typer.Option("--client", help="Only this client.", show_default=False)] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan and change nothing.")] = False,
    json_: JsonFlag = False,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    storage_url: StorageUrl = None,
    config: ConfigFile = None,
) -> None:
    """Remove the versions the retention policies no longer keep, then collect garbage.

    Exit codes: 0 ok, 1 error (unknown user or client: nothing is touched), 2 usage error.
    """
    settings = server_settings(config, data_dir=data_dir, database_url=database_url, storage_url=storage_url)
    result = run_prune(settings, user=user, client=client, dry_run=dry_run)
    if json_:
        print_json(result.to_dict())
        return
    for line in render(result):
        typer.echo(line)
