"""Pack maintenance for GC: choose packs to retire or rewrite, copy their live blobs, delete retired packs.

Write ordering instead of locks: the new pack is written and sealed in
storage first; then, in one transaction, it is recorded and the chunk rows
are pointed at it (each only if it still points at the old pack); then the
old pack is retired with `delete_after = now + grace`. The object is deleted
only after that time, and only if no chunk row points into it, and the
catalog row goes last. Readers that located a chunk before the move keep
reading the old object until they finish.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta

from bkup.catalog import garbage
from bkup.core.pack import HEADER, MIN_INDEX_LENGTH, TRAILER_SIZE, PackEntry
from bkup.errors import BkupError
from bkup.server.context import ServerContext
from bkup.server.gc import GcReport
from bkup.storage.objects import ObjectNotFound
from bkup.storage.packs import PackWriter, pack_key

log = logging.getLogger("bkup.server.gc")

SMALL_PACK = 4 * 2**20  # packs below this are merged together
TARGET_PACK = 16 * 2**20  # GC writes packs of about this size
INDEX_ENTRY = 49


def needed_bytes(live_chunks: int, live_bytes: int) -> int:
    """The size of a pack holding exactly these blobs."""
    return len(HEADER) + live_bytes + MIN_INDEX_LENGTH + INDEX_ENTRY * live_chunks + TRAILER_SIZE


def select_packs(usages: Sequence[garbage.PackUsage], threshold_percent: int) -> tuple[list[str], list[garbage.PackUsage]]:
    """(packs to retire: nothing live in them; packs to rewrite: dead share >= threshold, or small ones, two or more)."""
    retire: list[str] = []
    rewrite: list[garbage.PackUsage] = []
    small: list[garbage.PackUsage] = []
    for u in usages:
        if u.live_chunks == 0:
            retire.append(u.id)
            continue
        dead = u.size - needed_bytes(u.live_chunks, u.live_bytes)
        if dead > 0 and dead * 100 >= threshold_percent * u.size:
            rewrite.append(u)
        elif u.size < SMALL_PACK:
            small.append(u)
    if len(small) + sum(1 for u in rewrite if needed_bytes(u.live_chunks, u.live_bytes) < SMALL_PACK) >= 2:
        rewrite.extend(small)
    return retire, rewrite


def repack_user(ctx: ServerContext, user_id: int, now: datetime, grace: timedelta, report: GcReport) -> None:
    with ctx.catalog.session() as s:
        usages = garbage.pack_usage(s, user_id)
    retire, rewrite = select_packs(usages, ctx.settings.gc_repack_threshold)
    delete_after = now + grace
    if retire:
        with ctx.catalog.session() as s:
            report.packs_retired += len(garbage.retire_packs(s, retire, delete_after))
            s.commit()
    if rewrite:
        _rewrite(ctx, user_id, rewrite, now, delete_after, report)


class _Copier:
    """Copies blobs into new packs of about TARGET_PACK bytes and repoints their chunk rows."""

    def __init__(self, ctx: ServerContext, user_id: int, now: datetime, report: GcReport) -> None:
        self.ctx, self.user_id, self.now, self.report = ctx, user_id, now, report
        self.writer: PackWriter | None = None
        self.moves: list[tuple[str, str]] = []  # (chunk id, old pack id)

    def add(self, old_pack: str, entry: PackEntry, stored: bytes) -> None:
        if self.writer is None:
            self.writer = PackWriter(self.ctx.store, self.user_id, self.ctx.keys.user_key(self.user_id))
        if entry.id in self.writer:
            return
        # Re-sealed under a fresh nonce: the blob's AAD is the chunk id and flags, not its place.
        self.writer.add(entry.id, entry.flags, entry.raw_len, stored)
        self.moves.append((entry.id, old_pack))
        if self.writer.size >= TARGET_PACK:
            self.flush()

    def flush(self) -> None:
        writer, self.writer = self.writer, None
        if writer is None or not len(writer):
            if writer is not None:
                writer.abort()
            return
        moves, self.moves = self.moves, []
        try:
            info = writer.finish()  # sealed and in storage before the catalog learns of it
        except BkupError as e:
            writer.abort()
            self.report.errors.append(f"could not write a repacked pack: {e}")
            return
        where = {e.id: e for e in info.entries}
        with self.ctx.catalog.session() as s:
            garbage.add_pack(s, self.user_id, info.pack_id, info.size, len(info.entries), self.now)
            garbage.repoint(s, self.user_id, [(c, old, where[c].offset, where[c].length) for c, old in moves], info.pack_id)
            s.commit()
        self.report.packs_written += 1
        self.report.bytes_copied += info.size

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()
            self.writer = None


def _rewrite(ctx: ServerContext, user_id: int, packs: list[garbage.PackUsage], now: datetime, delete_after: datetime, report: GcReport) -> None:
    copier = _Copier(ctx, user_id, now, report)
    sources: list[str] = []
    try:
        for usage in packs:
            with ctx.catalog.session() as s:
                rows = garbage.chunks_in_pack(s, user_id, usage.id)
            entries = [PackEntry(r.id, r.offset, r.length, r.raw_len, r.flags) for r in rows]
            try:
                for entry, stored in ctx.packs.read_many(user_id, usage.id, entries):
                    copier.add(usage.id, entry, stored)
            except BkupError as e:
                # What was copied moves; the rest stays, so the pack stays live. `bkup check` reports it.
                report.errors.append(f"pack {usage.id}: cannot read it to repack ({e})")
                log.error("GC: pack %s of user %s: %s", usage.id, user_id, e)
            sources.append(usage.id)
        copier.flush()
    finally:
        copier.abort()
    with ctx.catalog.session() as s:
        retired = garbage.retire_packs(s, sources, delete_after)
        s.commit()
    report.packs_rewritten += len(retired)
    report.packs_retired += len(retired)


def delete_due_packs(ctx: ServerContext, now: datetime, report: GcReport, user_ids: Sequence[int] | None = None) -> None:
    """Delete retired packs whose time has come: object first, row last, both only if nothing points into it."""
    with ctx.catalog.session() as s:
        due = [p for uid in user_ids for p in garbage.due_packs(s, now, uid)] if user_ids is not None else garbage.due_packs(s, now)
    for user_id, pack_id, size in due:
        with ctx.catalog.session() as s:
            if garbage.still_referenced(s, pack_id):
                garbage.revive_pack(s, pack_id)
                s.commit()
                report.errors.append(f"pack {pack_id} was retired but chunks point into it: kept")
                continue
        try:
            ctx.store.delete(pack_key(user_id, pack_id))
        except ObjectNotFound:
            pass
        except BkupError as e:
            report.errors.append(f"pack {pack_id}: cannot delete it from storage ({e})")
            continue
        with ctx.catalog.session() as s:
            if garbage.forget_pack(s, pack_id):
                report.packs_deleted += 1
                report.bytes_deleted += size
            s.commit()
