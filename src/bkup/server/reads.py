"""Chunk reads for restore and downloads: catalog locations, pack range reads, frames out."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

from bkup.catalog import queries
from bkup.core.frames import Frame, coalesce, end_marker, stream_header
from bkup.core.hashing import is_chunk_id
from bkup.core.pack import PackEntry
from bkup.errors import NotFound, UsageError
from bkup.protocol import MAX_IDS_PER_QUERY
from bkup.server.context import ServerContext
from bkup.server.principal import Principal, visible_client


def check_ids(ids: list[str]) -> list[str]:
    if len(ids) > MAX_IDS_PER_QUERY:
        raise UsageError(f"too many ids in one request: {len(ids)} > {MAX_IDS_PER_QUERY}")
    bad = [i for i in ids if not is_chunk_id(i)]
    if bad:
        raise UsageError(f"not a chunk id: {bad[0]!r} (expected 64 lowercase hex characters)")
    return list(dict.fromkeys(ids))


def read_chunks(ctx: ServerContext, principal: Principal, client_id: int, ids: list[str]) -> Iterator[bytes]:
    """Authorize and locate now (errors become 4xx); return the frame stream to send.

    Each distinct id comes once, in the order asked; runs of ids that sit in
    the same pack are read with as few range requests as possible.
    """
    ids = check_ids(ids)
    with ctx.catalog.session() as s:
        client = visible_client(s, principal, client_id)
        user_id = client.user_id
        locations = queries.chunk_locations(s, user_id, ids)
    absent = [i for i in ids if i not in locations]
    if absent:
        raise NotFound(f"{len(absent)} chunk(s) not stored for this client, e.g. {absent[0]}")

    def frames() -> Iterator[bytes]:
        yield stream_header()
        group: list[PackEntry] = []
        for cid in ids:
            loc = locations[cid]
            if group and locations[group[-1].id].pack_id != loc.pack_id:
                yield from _read_group(ctx, user_id, locations[group[0].id].pack_id, group)
                group = []
            group.append(PackEntry(id=cid, offset=loc.offset, length=loc.length, raw_len=loc.raw_len, flags=loc.flags))
        if group:
            yield from _read_group(ctx, user_id, locations[group[0].id].pack_id, group)
        yield end_marker(len(ids))

    # Read up to the first frame now: a store that cannot read at all is then a 503 with its
    # message, not a 200 whose stream breaks off (which the client could only see as a cut stream).
    stream = frames()
    head = [next(stream)]
    head.extend(itertools.islice(stream, 1))
    # Litestar iterates a sync iterator with one thread hand-off per item: hand it 1 MiB pieces.
    return coalesce(itertools.chain(head, stream))


def _read_group(ctx: ServerContext, user_id: int, pack_id: str, entries: list[PackEntry]) -> Iterator[bytes]:
    for entry, stored in ctx.packs.read_many(user_id, pack_id, entries):
        yield Frame(id=entry.id, flags=entry.flags, raw_len=entry.raw_len, data=stored).to_bytes()
