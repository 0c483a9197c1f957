#!/usr/bin/env python3
"""The catalog's share of a first backup of a folder, in one process, one thread: CPU seconds per step (run by hand).

    python bench/catalog_work.py /work/bench-data/small [--rounds 3] [--database URL]

Walks the folder for its paths and sizes (nothing is read), gives every
non-empty file one random chunk id, and does on a fresh catalog (SQLite in a
temp dir unless `--database`) what the server does for a first backup of it:
per upload of 1,360 chunks the missing-query's touch and `record_pack`, per
commit batch of 2,000 entries `check_entries`, GC's touch, `commit_entries`
and the transaction's commit. Prints the process CPU time of each step, the
median of `--rounds` fresh catalogs.

In the real server these steps share two cores with HTTP, ingest and the
agent, and their times move with the machine's load by ±20 %; alone, they
repeat within a few percent, which is what an A/B of catalog code needs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bkup import protocol
from bkup.catalog import commits, garbage, queries
from bkup.catalog.db import Catalog
from bkup.catalog.models import Client, User
from bkup.core.pack import PackEntry

CHUNKS_PER_UPLOAD = 1_360  # "small": ~38 uploads of ~10 MiB for 51,000 files
REFRESH = timedelta(minutes=5)


def entries_of(folder: Path) -> list[protocol.Entry]:
    out = []
    for dirpath, dirs, files in os.walk(folder):
        dirs.sort()
        path = "/bench" + dirpath[len(str(folder)) :]
        out.append(protocol.Entry(path=path, kind="dir", mtime_ns=1, mode=0o755))
        for name in sorted(files):
            size = os.lstat(os.path.join(dirpath, name)).st_size
            chunks = [os.urandom(32).hex()] if size else []
            out.append(protocol.Entry(path=f"{path}/{name}", kind="file", size=size, mtime_ns=2, mode=0o644, chunks=chunks))
    return out


def one_round(url: str, entries: list[protocol.Entry]) -> dict[str, float]:
    times: dict[str, float] = defaultdict(float)
    catalog = Catalog(url)
    catalog.upgrade()
    with catalog.session() as s:
        user = User(name="bench", password_hash="-")
        s.add(user)
        s.commit()
        client = Client(name="bench", user_id=user.id)
        s.add(client)
        s.commit()
        user_id, client_id = user.id, client.id
        seq = queries.start_run(s, client_id, "manual", datetime.now(UTC)).seq
        s.commit()

    def timed(step: str, fn):
        start = time.process_time()
        result = fn()
        times[step] += time.process_time() - start
        return result

    def in_session(fn):
        with catalog.session() as s:
            result = fn(s)
            s.commit()
            return result

    chunks = [(e.chunks[0], e.size) for e in entries if e.chunks]
    for i in range(0, len(chunks), CHUNKS_PER_UPLOAD):
        piece = chunks[i : i + CHUNKS_PER_UPLOAD]
        ids = [c for c, _ in piece]
        timed("missing (touch)", lambda: in_session(lambda s: garbage.touch(s, user_id, chunk_ids=ids, now=datetime.now(UTC), refresh=REFRESH)))
        packed = [PackEntry(c, 0, n + 40, n, 1) for c, n in piece]
        timed("record_pack", lambda: in_session(lambda s: queries.record_pack(s, user_id, os.urandom(16).hex(), 1, packed)))
    for i in range(0, len(entries), protocol.MAX_ENTRIES_PER_BATCH):
        checked = timed("check_entries", lambda: commits.check_entries(entries[i : i + protocol.MAX_ENTRIES_PER_BATCH]))
        held = timed("commit touch", lambda: in_session(lambda s: garbage.touch(
            s, user_id, chunk_ids=checked.chunk_ids, content_ids=checked.content_ids, now=datetime.now(UTC), refresh=REFRESH)))
        with catalog.session() as s:
            timed("commit_entries", lambda: commits.commit_entries(
                s, client_id=client_id, user_id=user_id, run_seq=seq, entries=checked, raw_lens=held))
            timed("transaction commit", s.commit)
    catalog.engine.dispose()
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--database", help="a catalog URL (each round must start from an empty database)")
    a = ap.parse_args()
    entries = entries_of(a.folder)
    rounds = []
    for _ in range(a.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            rounds.append(one_round(a.database or f"sqlite:///{tmp}/catalog.db", entries))
    print(f"{a.folder}: {len(entries)} entries, CPU seconds (median of {a.rounds})")
    for step in rounds[0]:
        print(f"  {step:20} {statistics.median(r[step] for r in rounds):6.2f}")
    print(f"  {'total':20} {statistics.median(sum(r.values()) for r in rounds):6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
