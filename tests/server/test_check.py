"""`check`: a flipped byte, a truncated pack and a deleted pack are found and traced to the files they hold."""

from __future__ import annotations

import pytest
from litestar.testing import TestClient
from retention_kit import chunks_of, fast_passwords, make_agent, make_ctx, make_settings, open_test_store, rand  # noqa: F401 - fast_passwords is a fixture
from sqlalchemy import select, update

from bkup.catalog.models import Chunk
from bkup.core.hashing import chunk_id
from bkup.errors import UsageError
from bkup.server.app import create_app
from bkup.server.check import check
from bkup.storage.packs import pack_key

pytestmark = pytest.mark.usefixtures("fast_passwords")


@pytest.fixture
def world(request, tmp_path):
    ctx = make_ctx(make_settings(tmp_path), store=open_test_store(getattr(request, "param", "memory"), request))
    with TestClient(app=create_app(ctx.settings, context=ctx)) as http:
        alice = make_agent(ctx, http, "alice")
        files = {f"/home/{name}": rand(300_000 + i, i) for i, name in enumerate(["flipped", "truncated", "deleted", "fine"])}
        alice.backup(files, pack_per_file=True)
        alice.backup({**files, "/home/later": b"unrelated"})
        yield ctx, alice, files
    ctx.close()


def pack_of(ctx, data: bytes) -> tuple[int, str, int]:
    with ctx.catalog.session() as s:
        c = s.scalars(select(Chunk).where(Chunk.id == chunk_id(chunks_of(data)[0]))).one()
        return c.user_id, c.pack_id, c.offset


def damage(ctx, files):
    uid, flipped, offset = pack_of(ctx, files["/home/flipped"])
    key = pack_key(uid, flipped)
    data = bytearray(ctx.store.get(key))
    data[offset + 40] ^= 0x01  # inside the first blob's ciphertext
    ctx.store.put(key, bytes(data))
    uid, truncated, _ = pack_of(ctx, files["/home/truncated"])
    key = pack_key(uid, truncated)
    ctx.store.put(key, ctx.store.get(key)[: ctx.store.size(key) // 2])
    uid, deleted, _ = pack_of(ctx, files["/home/deleted"])
    ctx.store.delete(pack_key(uid, deleted))
    return flipped, truncated, deleted


def test_a_clean_store_checks_clean(world):
    ctx, _, _ = world
    for report in (check(ctx), check(ctx, read_data=True), check(ctx, subset_percent=50, seed=1)):
        assert report.ok and report.problems == [] and report.chunks_checked >= 5, report.summary()
    assert check(ctx, read_data=True).chunks_read == check(ctx).chunks_checked
    with pytest.raises(UsageError):
        check(ctx, subset_percent=0)


@pytest.mark.parametrize("world", ["memory", "file"], indirect=True)
def test_read_data_finds_all_three_and_names_the_files(world):
    ctx, _, files = world
    flipped, truncated, deleted = damage(ctx, files)
    report = check(ctx, read_data=True)
    assert not report.ok
    kinds = {(p.kind, p.pack_id) for p in report.problems}
    assert ("damaged_chunk", flipped) in kinds
    assert ("bad_index", truncated) in kinds
    assert ("missing_pack", deleted) in kinds
    affected = {(f.client, f.path, f.valid_from, f.valid_to) for f in report.affected}
    assert affected == {("alice-pc", f"/home/{n}", 1, None) for n in ("flipped", "truncated", "deleted")}
    assert "3 file version(s) affected" in report.summary()


def test_without_read_data_the_missing_pack_is_found(world):
    ctx, _, files = world
    flipped, truncated, deleted = damage(ctx, files)
    report = check(ctx)
    packs = {p.pack_id for p in report.problems}
    assert deleted in packs and truncated in packs  # the index of a cut pack no longer authenticates
    assert flipped not in packs  # a flipped data byte needs --read-data
    assert ("alice-pc", "/home/deleted") in {(f.client, f.path) for f in report.affected}


def test_catalog_rows_that_disagree_with_the_index_and_missing_chunk_rows(world):
    ctx, _, files = world
    first = chunk_id(chunks_of(files["/home/fine"])[0])
    with ctx.catalog.session() as s:
        s.execute(update(Chunk).where(Chunk.id == first).values(raw_len=Chunk.raw_len + 1))
        s.commit()
    report = check(ctx)
    assert [(p.kind, p.chunk_id) for p in report.problems] == [("index_mismatch", first)]
    with ctx.catalog.session() as s:
        s.execute(Chunk.__table__.delete().where(Chunk.id == first))
        s.commit()
    report = check(ctx)
    assert [(p.kind, p.chunk_id) for p in report.problems] == [("missing_chunk", first)]
    assert [f.path for f in report.affected] == ["/home/fine"]

