"""Garbage collection: delete the chunks and contents no version references, repack, delete retired packs.

It runs while backups run and never blocks them (docs/retention.md has the
protocol and why it is safe). In short: backups *touch* what they rely on
(`touch`) in a short transaction before relying on it; GC
deletes a row only if nobody touched it since its cutoff (now − `gc_grace`,
and never after the start of a running run of that user), re-checking that
in the DELETE itself; a pack is rewritten by writing the new pack first,
then pointing the chunk rows at it in one transaction, then retiring the old
one, which is deleted from storage only `gc_grace` later and only if no row
points into it any more.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta

from sqlmodel import select

from bkup.catalog import garbage
from bkup.catalog.models import User
from bkup.errors import BkupError
from bkup.server.context import ServerContext
from bkup.server.principal import Principal, require_admin

log = logging.getLogger("bkup.server.gc")

# A run that has been running for longer than this no longer holds back GC.
MAX_RUN_PROTECTION = timedelta(hours=24)
BATCH = 500


def _now() -> datetime:
    return datetime.now(UTC)


def _grace(ctx: ServerContext) -> timedelta:
    return timedelta(seconds=max(0, ctx.settings.gc_grace))


# --- the backup side of the protocol -----------------------------------------------------


def touch(ctx: ServerContext, user_id: int, *, chunk_ids: Sequence[str] = (), content_ids: Sequence[str] = ()) -> dict[str, int]:
    """Mark chunks and contents as in use now, in a transaction of their own (committed on return).

    Returns the raw length of each chunk the user holds (`garbage.touch`): a
    caller relies on exactly those, and needs no lookup of its own.
    """
    if not chunk_ids and not content_ids:
        return {}
    grace = _grace(ctx)
    refresh = min(grace / 4, timedelta(minutes=5))
    with ctx.catalog.session() as s:
        found = garbage.touch(s, user_id, chunk_ids=chunk_ids, content_ids=content_ids, now=_now(), refresh=refresh)
        s.commit()
    return found


# --- collecting ---------------------------------------------------------------------------


@dataclass
class GcReport:
    users: int = 0
    contents_deleted: int = 0
    chunks_deleted: int = 0
    chunk_raw_bytes: int = 0  # plaintext bytes of the chunks deleted
    chunk_stored_bytes: int = 0  # their blob bytes in packs
    packs_rewritten: int = 0
    packs_written: int = 0
    bytes_copied: int = 0
    packs_retired: int = 0
    packs_deleted: int = 0
    bytes_deleted: int = 0  # storage bytes given back (pack objects deleted)
    errors: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = (
            f"deleted {self.chunks_deleted} chunk(s) and {self.contents_deleted} content(s); "
            f"rewrote {self.packs_rewritten} pack(s) into {self.packs_written}; "
            f"retired {self.packs_retired}, deleted {self.packs_deleted} pack(s) ({self.bytes_deleted} bytes)"
        )
        return text + (f"; {len(self.errors)} error(s)" if self.errors else "")

    def to_dict(self) -> dict:
        return asdict(self)


def cutoff_for(ctx: ServerContext, user_id: int, now: datetime, grace: timedelta) -> datetime:
    """Rows touched at or after this stay: now − grace, or earlier while a run of the user is running."""
    cutoff = now - grace
    with ctx.catalog.session() as s:
        since = garbage.protected_since(s, user_id)
    if since is not None:
        cutoff = min(cutoff, max(since, now - MAX_RUN_PROTECTION))
    return cutoff


def collect(
    ctx: ServerContext, principal: Principal | None = None, *, user_ids: Sequence[int] | None = None,
    now: datetime | None = None, grace: timedelta | None = None,
) -> GcReport:
    """One garbage collection over these users (default: all)."""
    from bkup.server import repack

    if principal is not None:
        require_admin(principal)
    now = now or _now()
    grace = _grace(ctx) if grace is None else grace
    report = GcReport()
    if user_ids is None:
        with ctx.catalog.session() as s:
            user_ids = list(s.exec(select(User.id).order_by(User.id)))
    for user_id in user_ids:
        report.users += 1
        try:
            _collect_user(ctx, user_id, now, grace, report)
            repack.repack_user(ctx, user_id, now, grace, report)
        except BkupError as e:
            report.errors.append(f"user {user_id}: {e}")
            log.error("GC of user %s: %s", user_id, e)
    repack.delete_due_packs(ctx, now, report, user_ids)
    log.info("GC: %s", report.summary())
    if ctx.metrics is not None:
        ctx.metrics.observe_gc(report)
    return report


def _collect_user(ctx: ServerContext, user_id: int, now: datetime, grace: timedelta, report: GcReport) -> None:
    cutoff = cutoff_for(ctx, user_id, now, grace)
    while True:
        with ctx.catalog.session() as s:
            n = garbage.delete_unused_contents(s, user_id, cutoff)
            s.commit()
        report.contents_deleted += n
        if n == 0:
            break
    with ctx.catalog.session() as s:
        marked = garbage.referenced_chunk_ids(s, user_id)
        candidates = [c.hex() for c in garbage.stale_chunk_ids(s, user_id, cutoff) if c not in marked]
    del marked
    for i in range(0, len(candidates), BATCH):
        with ctx.catalog.session() as s:
            deleted = garbage.delete_chunks(s, user_id, candidates[i : i + BATCH], cutoff)
            s.commit()
        report.chunks_deleted += len(deleted)
        report.chunk_raw_bytes += sum(d.raw_len for d in deleted)
        report.chunk_stored_bytes += sum(d.length for d in deleted)

