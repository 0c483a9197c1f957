"""Stream pieces: what an HTTP library or the web framework gets to send."""

from __future__ import annotations

from bkup.core.frames import HEADER_SIZE, Frame, FrameBatch, coalesce, encode_chunk


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


def test_a_large_piece_goes_on_as_it_is_after_what_was_held():
    big = b"x" * 5000
    out = list(coalesce(iter([b"ab", b"cd", big, b"e"]), size=1000))
    assert out == [b"abcd", big, b"e"]
    assert out[1] is big  # not copied


def test_frame_batch_stops_at_its_limit_and_the_next_takes_the_carry():
    frames = [encode_chunk(bytes([i]) * 2000, level=1) for i in range(5)]
    size = HEADER_SIZE + len(frames[0].data)
    made: list[Frame] = []

    def source():
        for f in frames:
            made.append(f)
            yield f

    it = source()
    first = FrameBatch(it, limit=2 * size)
    assert list(first) == frames[:2] and first.nbytes == 2 * size
    assert first.carry == frames[2] and not first.exhausted
    assert list(first) == frames[:2]  # a second pass (a retry) replays the same frames, and no more
    second = FrameBatch(it, limit=2 * size, carry=first.carry)
    assert list(second) == frames[2:4] and second.carry == frames[4]
    third = FrameBatch(it, limit=2 * size, carry=second.carry)
    assert list(third) == frames[4:] and third.exhausted and third.carry is None
    assert made == frames  # each frame made once


def test_a_frame_batch_takes_one_frame_over_its_limit_and_a_cut_pass_resumes():
    frames = [encode_chunk(bytes([i]) * 3000, level=1) for i in range(3)]
    batch = FrameBatch(iter(frames), limit=10)
    assert list(batch) == frames[:1] and batch.carry == frames[1]  # alone over the limit: still sent

    batch = FrameBatch(iter(frames), limit=1 << 20)
    pass1 = iter(batch)
    assert next(pass1) == frames[0]  # the connection drops here
    pass1.close()
    assert list(batch) == frames and batch.exhausted  # the retry replays the first, then goes on
