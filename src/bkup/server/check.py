"""Integrity check: the catalog against storage, and with read-data every chunk's bytes; names the files affected.

Without read-data: every pack a chunk row points into exists, its index
(read and authenticated from the pack itself) lists each such chunk at the
catalog's offset, length, raw length and flags, and every chunk a version
references has a row. With read-data (all packs, or a random share of
them): each chunk is read, decrypted, decompressed and hashed (BLAKE3 must
equal its id). Damaged chunks are traced to the versions whose content uses
them: client, path and run range.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

from sqlalchemy import select

from bkup.catalog import garbage
from bkup.catalog.models import Chunk, Client, Content, User, Version
from bkup.core.frames import Frame, decode_frame
from bkup.core.pack import PackEntry
from bkup.errors import BkupError, UsageError
from bkup.server.context import ServerContext
from bkup.server.principal import Principal, require_admin
from bkup.storage.objects import ObjectNotFound
from bkup.storage.packs import pack_key


@dataclass
class Problem:
    kind: str  # missing_pack | bad_index | index_mismatch | damaged_chunk | missing_chunk
    user: str
    pack_id: str | None
    chunk_id: str | None
    detail: str


@dataclass
class AffectedFile:
    client: str
    client_id: int
    path: str
    valid_from: int
    valid_to: int | None


@dataclass
class CheckReport:
    read_data: bool = False
    packs_checked: int = 0
    packs_read: int = 0
    chunks_checked: int = 0
    chunks_read: int = 0
    bytes_read: int = 0
    problems: list[Problem] = field(default_factory=list)
    affected: list[AffectedFile] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        head = f"checked {self.chunks_checked} chunk(s) in {self.packs_checked} pack(s)"
        if self.read_data:
            head += f", read {self.chunks_read} chunk(s) from {self.packs_read} pack(s)"
        if self.ok:
            return head + ": no problems"
        return head + f": {len(self.problems)} problem(s), {len(self.affected)} file version(s) affected"

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def _rows_by_pack(ctx: ServerContext, user_id: int) -> Iterator[tuple[str, list[PackEntry]]]:
    cols = (Chunk.pack_id, Chunk.id, Chunk.offset, Chunk.length, Chunk.raw_len, Chunk.flags)
    q = select(*cols).where(Chunk.user_id == user_id).order_by(Chunk.pack_id, Chunk.offset)
    with ctx.catalog.session() as s:
        current, entries = None, []
        for pack_id, *rest in s.execute(q.execution_options(yield_per=5000)):
            if pack_id != current and entries:
                yield current, entries
                entries = []
            current = pack_id
            entries.append(PackEntry(*rest))
        if entries:
            yield current, entries


def _verify(ctx: ServerContext, user_id: int, pack_id: str, entries: list[PackEntry], report: CheckReport, user: str) -> set[str]:
    """Read and verify each chunk; returns the ids that failed."""
    bad: set[str] = set()
    report.packs_read += 1
    try:
        pairs = list(ctx.packs.read_many(user_id, pack_id, entries))
    except BkupError:
        pairs = []
        for e in entries:  # one by one, to tell the good from the bad
            try:
                pairs.append((e, ctx.packs.read_stored(user_id, pack_id, e)))
            except BkupError as err:
                bad.add(e.id)
                report.problems.append(Problem("damaged_chunk", user, pack_id, e.id, str(err)))
    for e, stored in pairs:
        report.chunks_read += 1
        report.bytes_read += e.length
        try:
            decode_frame(Frame(id=e.id, flags=e.flags, raw_len=e.raw_len, data=stored))
        except BkupError as err:
            bad.add(e.id)
            report.problems.append(Problem("damaged_chunk", user, pack_id, e.id, str(err)))
    return bad


def _check_user(ctx: ServerContext, user_id: int, user: str, sample: set[str] | None, read_data: bool, report: CheckReport) -> set[bytes]:
    damaged: set[str] = set()
    known: set[bytes] = set()
    for pack_id, entries in _rows_by_pack(ctx, user_id):
        report.packs_checked += 1
        report.chunks_checked += len(entries)
        known.update(bytes.fromhex(e.id) for e in entries)
        try:
            index = {e.id: e for e in ctx.packs.read_index(user_id, pack_id)}
        except ObjectNotFound:
            report.problems.append(Problem("missing_pack", user, pack_id, None, f"{pack_key(user_id, pack_id)} is not in storage ({len(entries)} chunk(s))"))
            damaged.update(e.id for e in entries)
            continue
        except BkupError as err:
            detail = str(err)
            if read_data:  # a cut pack may still hold good blobs before the cut: say how many
                bad = _verify(ctx, user_id, pack_id, entries, report, user)
                detail += f" ({len(entries) - len(bad)} of {len(entries)} chunk(s) still readable)"
            report.problems.append(Problem("bad_index", user, pack_id, None, detail))
            damaged.update(e.id for e in entries)  # at risk until the pack is repaired: name the files
            continue
        for e in entries:
            if index.get(e.id) != e:
                damaged.add(e.id)
                report.problems.append(Problem("index_mismatch", user, pack_id, e.id, f"the pack's index says {index.get(e.id)}, the catalog {e}"))
        if read_data and (sample is None or pack_id in sample):
            damaged |= _verify(ctx, user_id, pack_id, [e for e in entries if e.id not in damaged], report, user)
    with ctx.catalog.session() as s:
        missing = garbage.referenced_chunk_ids(s, user_id) - known
    for cid in sorted(missing):
        report.problems.append(Problem("missing_chunk", user, None, cid.hex(), "referenced by a version but the catalog has no such chunk"))
    return {bytes.fromhex(d) for d in damaged} | missing


def _affected(ctx: ServerContext, user_id: int, damaged: set[bytes]) -> list[AffectedFile]:
    if not damaged:
        return []
    hit: set[str] = set()
    with ctx.catalog.session() as s:
        q = select(Content.id, Content.chunk_ids).where(Content.user_id == user_id)
        for cid, blob in s.execute(q.execution_options(yield_per=2000)):
            blob = bytes(blob)
            if any(blob[i : i + 32] in damaged for i in range(0, len(blob), 32)):
                hit.add(cid)
        if not hit:
            return []
        q = (
            select(Client.name, Client.id, Version.path, Version.valid_from, Version.valid_to)
            .join(Client, Client.id == Version.client_id)
            .where(Client.user_id == user_id, Version.content_id.in_(sorted(hit)))  # type: ignore[union-attr]
            .order_by(Client.name, Version.path, Version.valid_from)
        )
        return [AffectedFile(*row) for row in s.execute(q)]


def check(
    ctx: ServerContext, principal: Principal | None = None, *, read_data: bool = False,
    subset_percent: float | None = None, seed: int | None = None,
) -> CheckReport:
    """Check every user's chunks and packs; `subset_percent` reads data from that share of packs only."""
    if principal is not None:
        require_admin(principal)
    if subset_percent is not None:
        if not 0 < subset_percent <= 100:
            raise UsageError(f"--read-data-subset must be a percentage in (0, 100], got {subset_percent}")
        read_data = True
    report = CheckReport(read_data=read_data)
    with ctx.catalog.session() as s:
        users = list(s.execute(select(User.id, User.name).order_by(User.name)))
        sample = None
        if subset_percent is not None and subset_percent < 100:
            packs = sorted(s.scalars(select(Chunk.pack_id).distinct()))
            k = math.ceil(len(packs) * subset_percent / 100)
            sample = set(random.Random(seed).sample(packs, k))
    for user_id, name in users:
        before = (len(report.problems), len(report.affected))
        damaged = _check_user(ctx, user_id, name, sample, read_data, report)
        report.affected.extend(_affected(ctx, user_id, damaged))
        if len(report.problems) > before[0]:
            _alert(ctx, user_id, name, report.problems[before[0]:], report.affected[before[1]:])
    return report


def _alert(ctx: ServerContext, user_id: int, user: str, problems: list[Problem], affected: list[AffectedFile]) -> None:
    """Raise `damage_found` for the user (their webhook and the global ones); never fails the check."""
    from bkup.server import alerts

    summary = f"bkup check found {len(problems)} problem(s) in the backups of {user}; {len(affected)} file version(s) affected"
    details = {"problems": [asdict(p) for p in problems[:20]], "affected": [asdict(f) for f in affected[:50]]}
    try:
        alerts.send_alert(ctx, alerts.damage_event(summary, user=user, details=details), user_id=user_id)
    except Exception:  # noqa: BLE001 - the report itself is what matters
        pass
