"""PackWriter and PackReader over every backend: streaming writes, range reads, the self-describing index."""

from __future__ import annotations

import random

import pytest

from bkup.core.frames import Frame, decode_frame, encode_chunk
from bkup.core.pack import PackError
from bkup.storage import packs as packs_module
from bkup.storage.objects import MemoryStore, ObjectStore
from bkup.storage.packs import PackInfo, PackReader, PackWriter, new_pack_id, pack_key, parse_pack_key

KEYS = {1: bytes(range(32)), 2: bytes(range(100, 132))}


def make_chunks(n: int, seed: int = 0) -> list[tuple[bytes, Frame]]:
    """n chunks of 1..40 KiB, half compressible (text), half random."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        size = rng.randint(1, 40_000)
        raw = rng.randbytes(size) if i % 2 else (b"line %d of chunk %d\n" % (rng.random(), i) * size)[:size]
        out.append((raw, encode_chunk(raw)))
    return out


def write_pack(store: ObjectStore, frames: list[Frame], user_id: int = 1) -> PackInfo:
    with PackWriter(store, user_id, KEYS[user_id]) as w:
        for f in frames:
            w.add(f.id, f.flags, f.raw_len, f.data)
        return w.finish()


def test_write_then_read_back_every_way(store: ObjectStore) -> None:
    chunks = make_chunks(50)
    assert {f.flags for _, f in chunks} == {0, 1}
    writer = PackWriter(store, 1, KEYS[1])
    assert writer.size == 0 and len(writer) == 0
    for _, f in chunks:
        writer.add(f.id, f.flags, f.raw_len, f.data)
        assert not store.exists(writer.object_key)  # invisible until finished
    assert len(writer) == 50 and chunks[3][1].id in writer
    info = writer.finish()

    assert info.key == pack_key(1, info.pack_id) == writer.object_key
    assert info.user_id == 1
    assert list(store.list("packs")) == [info.key]
    assert store.size(info.key) == info.size == writer.size
    assert list(info.entries) == writer.entries and len(info.entries) == 50

    reader = PackReader(store, KEYS.__getitem__)
    for (raw, frame), entry in zip(chunks, info.entries):
        stored = reader.read_stored(1, info.pack_id, entry)
        assert stored == frame.data
        assert decode_frame(Frame(entry.id, entry.flags, entry.raw_len, stored)) == raw
    got = list(reader.read_many(1, info.pack_id, info.entries))
    assert [e for e, _ in got] == list(info.entries)
    assert [d for _, d in got] == [f.data for _, f in chunks]
    assert reader.read_index(1, info.pack_id) == list(info.entries)


def test_a_multi_mib_pack_streams_through_storage(store: ObjectStore) -> None:
    rng = random.Random(5)
    raws = [rng.randbytes(2**20) for _ in range(10)]  # incompressible: 10 MiB, more than one S3 part
    frames = [encode_chunk(r) for r in raws]
    info = write_pack(store, frames)
    assert info.size > 10 * 2**20
    reader = PackReader(store, KEYS.__getitem__)
    assert [d for _, d in reader.read_many(1, info.pack_id, info.entries)] == raws
    assert reader.read_index(1, info.pack_id) == list(info.entries)


def test_abort_leaves_nothing(store: ObjectStore) -> None:
    frames = [f for _, f in make_chunks(5)]
    w = PackWriter(store, 1, KEYS[1])
    for f in frames:
        w.add(f.id, f.flags, f.raw_len, f.data)
    w.abort()
    w.abort()
    assert list(store.list()) == []
    with pytest.raises(RuntimeError):
        w.add(frames[0].id, frames[0].flags, frames[0].raw_len, frames[0].data)

    with pytest.raises(ZeroDivisionError):
        with PackWriter(store, 1, KEYS[1]) as w:
            w.add(frames[0].id, frames[0].flags, frames[0].raw_len, frames[0].data)
            1 / 0
    with PackWriter(store, 1, KEYS[1]) as w:  # left without finish
        w.add(frames[0].id, frames[0].flags, frames[0].raw_len, frames[0].data)
    assert list(store.list()) == []


def test_writer_refuses_bad_input_without_breaking(store: ObjectStore) -> None:
    (_, f), (_, g) = make_chunks(2)
    with PackWriter(store, 1, KEYS[1]) as w:
        w.add(f.id, f.flags, f.raw_len, f.data)
        with pytest.raises(ValueError):
            w.add(f.id, f.flags, f.raw_len, f.data)  # a pack holds each chunk once
        with pytest.raises(PackError):
            w.add("xyz", 0, 3, b"abc")
        w.add(g.id, g.flags, g.raw_len, g.data)
        info = w.finish()
    assert [e.id for e in PackReader(store, KEYS.__getitem__).read_index(1, info.pack_id)] == [f.id, g.id]


def test_empty_writer_writes_nothing_until_finish(store: ObjectStore) -> None:
    with PackWriter(store, 1, KEYS[1]):
        pass
    assert list(store.list()) == []
    info = PackWriter(store, 1, KEYS[1]).finish()
    assert info.entries == ()
    assert PackReader(store, KEYS.__getitem__).read_index(1, info.pack_id) == []


def test_flipped_byte_in_a_blob_names_the_chunk(store: ObjectStore) -> None:
    frames = [f for _, f in make_chunks(6)]
    info = write_pack(store, frames)
    victim = info.entries[3]
    _flip(store, info.key, victim.offset + victim.length // 2)
    reader = PackReader(store, KEYS.__getitem__)
    with pytest.raises(PackError, match=victim.id) as err:
        reader.read_stored(1, info.pack_id, victim)
    assert info.pack_id in str(err.value)
    assert reader.read_stored(1, info.pack_id, info.entries[2]) == frames[2].data
    results = reader.read_many(1, info.pack_id, info.entries)
    assert [e for e, _ in (next(results) for _ in range(3))] == list(info.entries[:3])
    with pytest.raises(PackError, match=victim.id):
        next(results)
    assert reader.read_index(1, info.pack_id) == list(info.entries)  # the index is intact


def test_damaged_index_or_trailer_is_a_pack_error(store: ObjectStore) -> None:
    info = write_pack(store, [f for _, f in make_chunks(4)])
    reader = PackReader(store, KEYS.__getitem__)
    end_of_blobs = info.entries[-1].offset + info.entries[-1].length
    _flip(store, info.key, end_of_blobs + 20)
    with pytest.raises(PackError, match="index"):
        reader.read_index(1, info.pack_id)
    info2 = write_pack(store, [f for _, f in make_chunks(4, seed=1)])
    _flip(store, info2.key, info2.size - 1)
    with pytest.raises(PackError, match="trailer"):
        reader.read_index(1, info2.pack_id)


def test_wrong_user_key_cannot_read(store: ObjectStore) -> None:
    info = write_pack(store, [f for _, f in make_chunks(3)])
    reader = PackReader(store, lambda user_id: KEYS[2])
    with pytest.raises(PackError):
        reader.read_stored(1, info.pack_id, info.entries[0])
    with pytest.raises(PackError):
        reader.read_index(1, info.pack_id)


# --- memory only: request counting and bounds ---------------------------------------------


class CountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__("counting")
        self.ranges: list[tuple[int, int]] = []

    def get_range(self, key: str, start: int, length: int) -> bytes:
        self.ranges.append((start, length))
        return super().get_range(key, start, length)


def test_read_many_merges_contiguous_blobs_and_keeps_order(monkeypatch) -> None:
    store = CountingStore()
    chunks = make_chunks(50)
    info = write_pack(store, [f for _, f in chunks])
    reader = PackReader(store, KEYS.__getitem__)

    store.ranges.clear()
    assert len(list(reader.read_many(1, info.pack_id, info.entries))) == 50
    assert len(store.ranges) == 1

    # Every other chunk: the gaps are small, still one request.
    store.ranges.clear()
    some = info.entries[::2]
    assert [e for e, _ in reader.read_many(1, info.pack_id, some)] == list(some)
    assert len(store.ranges) == 1

    # Asked in reverse: order is kept, so no merging.
    store.ranges.clear()
    backwards = list(reversed(info.entries[:5]))
    assert [d for _, d in reader.read_many(1, info.pack_id, backwards)] == [f.data for _, f in reversed(chunks[:5])]
    assert len(store.ranges) == 5

    # Bounded request size and gap.
    monkeypatch.setattr(packs_module, "MAX_REQUEST", 100_000)
    store.ranges.clear()
    assert [d for _, d in reader.read_many(1, info.pack_id, info.entries)] == [f.data for _, f in chunks]
    assert all(length <= 100_000 for _, length in store.ranges) and len(store.ranges) > 1
    monkeypatch.setattr(packs_module, "MERGE_GAP", 1)
    store.ranges.clear()
    list(reader.read_many(1, info.pack_id, info.entries[::2]))
    assert len(store.ranges) == 25


def test_read_index_fetches_a_large_index_separately(monkeypatch) -> None:
    store = CountingStore()
    info = write_pack(store, [f for _, f in make_chunks(30)])
    reader = PackReader(store, KEYS.__getitem__)
    store.ranges.clear()
    assert reader.read_index(1, info.pack_id) == list(info.entries)
    assert len(store.ranges) == 1
    monkeypatch.setattr(packs_module, "TAIL_READ", 100)
    store.ranges.clear()
    assert reader.read_index(1, info.pack_id) == list(info.entries)
    assert len(store.ranges) == 2


def test_truncated_pack_is_refused() -> None:
    store = MemoryStore()
    info = write_pack(store, [f for _, f in make_chunks(3)])
    store.put(info.key, store.get(info.key)[:-5])
    with pytest.raises(PackError):
        PackReader(store, KEYS.__getitem__).read_index(1, info.pack_id)
    store.put(info.key, b"BKPACK01")
    with pytest.raises(PackError, match="too short"):
        PackReader(store, KEYS.__getitem__).read_index(1, info.pack_id)


def test_pack_keys() -> None:
    pid = new_pack_id()
    assert len(pid) == 32 and pid != new_pack_id()
    assert pack_key(7, pid) == f"packs/7/{pid[:2]}/{pid}"
    assert parse_pack_key(pack_key(7, pid)) == (7, pid)
    for bad in ("../x", "ABCDEF" * 5 + "AB", "a" * 31, ""):
        with pytest.raises(ValueError):
            pack_key(1, bad)
    with pytest.raises(ValueError):
        pack_key(-1, pid)
    for bad in (f"packs/7/zz/{pid}", f"packs/x/{pid[:2]}/{pid}", "keys/7", f"packs/7/{pid[:2]}/{pid}/x"):
        with pytest.raises(ValueError):
            parse_pack_key(bad)


def _flip(store: ObjectStore, key: str, offset: int) -> None:
    data = bytearray(store.get(key))
    data[offset] ^= 0x40
    store.put(key, bytes(data))

