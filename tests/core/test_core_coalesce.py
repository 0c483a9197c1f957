"""Stream pieces: what an HTTP library or the web framework gets to send."""

from __future__ import annotations

from bkup.core.frames import coalesce


def test_coalesce_keeps_every_byte_in_order_in_few_large_pieces():
    pieces = [bytes([i % 251]) * (i % 7 + 1) for i in range(10_000)]
    out = list(coalesce(iter(pieces), size=1000))
    assert b"".join(out) == b"".join(pieces)
    assert all(len(p) >= 1000 for p in out[:-1])
    assert all(len(p) < 1000 + 7 for p in out)  # at most one piece over the size


def test_coalesce_of_nothing_and_of_one_large_piece():
    assert list(coalesce(iter([]))) == []
    big = b"x" * 5000
    assert list(coalesce(iter([big]), size=1000)) == [big]
    assert list(coalesce(iter([b"", b"a", b""]), size=10)) == [b"a"]
