"""ApiClient at the edge: typed bodies, error mapping, retries, streamed frames both ways (httpx.MockTransport)."""

from __future__ import annotations

import json

import httpx
import msgspec
import pytest

from bkup import protocol
from bkup.agent.api import ApiClient, MissingChunksError
from bkup.core.frames import FrameBatch, FrameParser, TruncatedStream, encode_chunk, end_marker, stream_header
from bkup.errors import AuthError, Conflict, Forbidden, NotFound, ServerError, UsageError

RUN = {
    "id": 7, "client_id": 1, "seq": 2, "trigger": "once", "status": "running",
    "started_at": "2026-11-28T07:00:00+00:00", "finished_at": None, "stats": msgspec.to_builtins(protocol.RunStats()),
}


def client(handler, **kw) -> ApiClient:
    return ApiClient("http://bkup.test/", "tok-123", transport=httpx.MockTransport(handler), backoff=0, **kw)


def error(status: int, detail: str, **extra) -> httpx.Response:
    return httpx.Response(status, json={"status_code": status, "detail": detail, "extra": extra or None})


def test_requests_carry_the_token_and_typed_bodies():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json=RUN)

    run = client(handler).start_run("once")
    assert isinstance(run, protocol.RunInfo) and run.seq == 2
    (req,) = seen
    assert req.url == "http://bkup.test/api/v1/runs"
    assert req.headers["authorization"] == "Bearer tok-123"
    assert json.loads(req.content) == {"trigger": "once"}


def test_the_token_never_shows_in_repr():
    api = client(lambda r: httpx.Response(200))
    assert "tok-123" not in repr(api)


@pytest.mark.parametrize(
    "status, exc",
    [(401, AuthError), (403, Forbidden), (404, NotFound), (409, Conflict), (400, UsageError), (422, UsageError), (500, ServerError)],
)
def test_error_mapping_uses_the_server_detail(status, exc):
    api = client(lambda r: error(status, "the server says why"), retries=0)
    with pytest.raises(exc, match="the server says why"):
        api.get_client(1)


def test_a_forbidden_is_also_an_auth_error():
    with pytest.raises(AuthError):
        client(lambda r: error(403, "no"), retries=0).me()


def test_a_refused_commit_names_the_missing_chunks():
    missing = ["a" * 64]
    api = client(lambda r: error(409, "server lacks 1 chunk", missing=missing))
    with pytest.raises(MissingChunksError) as info:
        api.commit(7, [protocol.Entry(path="/f", kind="file", size=1, chunks=missing)])
    assert info.value.missing == missing and isinstance(info.value, Conflict)


def test_a_non_json_error_still_reads_well():
    api = client(lambda r: httpx.Response(502, text="<html>bad gateway</html>"), retries=0)
    with pytest.raises(ServerError, match="502"):
        api.me()


def test_unreachable_server_is_a_server_error_after_retries():
    attempts = []

    def handler(request):
        attempts.append(1)
        raise httpx.ConnectError("connection refused")

    with pytest.raises(ServerError, match=r"cannot reach server http://bkup.test: ConnectError: connection refused"):
        client(handler, retries=2).me()
    assert len(attempts) == 3


def test_idempotent_calls_are_retried_on_503_others_are_not():
    answers = iter([error(503, "busy"), httpx.Response(200, json={"missing": ["b" * 64]})])
    assert client(lambda r: next(answers)).missing(["b" * 64]) == ["b" * 64]

    calls = []

    def handler(request):
        calls.append(1)
        return error(503, "busy")

    with pytest.raises(ServerError):
        client(handler).start_run("once")
    assert len(calls) == 1


def test_missing_splits_large_queries():
    sizes = []

    def handler(request):
        ids = json.loads(request.content)["ids"]
        sizes.append(len(ids))
        return httpx.Response(200, json={"missing": ids[:1]})

    ids = [f"{i:064x}" for i in range(protocol.MAX_IDS_PER_QUERY + 10)]
    assert len(client(handler).missing(ids)) == 2
    assert sizes == [protocol.MAX_IDS_PER_QUERY, 10]


def test_upload_streams_one_frame_stream_with_its_length():
    frames = [encode_chunk(b"x" * 5000), encode_chunk(b"hello")]
    got = {}

    def handler(request: httpx.Request) -> httpx.Response:
        body = b"".join(request.stream)
        got["type"] = request.headers["content-type"]
        got["length"] = int(request.headers["content-length"])
        parser = FrameParser()
        got["frames"] = parser.feed(body)
        parser.close()
        got["size"] = len(body)
        return httpx.Response(200, json={"received": 2, "stored": 2, "duplicates": 0, "bytes_stored": 99})

    result = client(handler).upload([frames[0], frames[1].to_bytes()])
    assert result.stored == 2
    assert got["type"] == protocol.FRAME_MEDIA_TYPE and got["length"] == got["size"]
    assert got["frames"] == frames


def test_a_frame_batch_made_while_sent_is_replayed_whole_on_a_retry():
    frames = [encode_chunk(bytes([i]) * 300_000, level=1) for i in range(4)]
    pulled: list[int] = []

    def make():
        for i, f in enumerate(frames):
            pulled.append(i)
            yield f

    bodies = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert "content-length" not in request.headers  # its size is not known before it is sent
        if not bodies:
            next(iter(request.stream))  # the connection drops after the first piece
            bodies.append(None)
            raise httpx.WriteError("connection reset")
        body = b"".join(request.stream)
        parser = FrameParser()
        bodies.append(parser.feed(body))
        parser.close()
        return httpx.Response(200, json={"received": 4, "stored": 4, "duplicates": 0, "bytes_stored": 99})

    batch = FrameBatch(make(), limit=1 << 30)
    assert client(handler, retries=1).upload(batch).stored == 4
    assert bodies[1] == frames and batch.exhausted
    assert pulled == [0, 1, 2, 3]  # each chunk compressed once


def test_read_chunks_streams_frames_and_a_cut_stream_raises():
    frames = [encode_chunk(bytes([i]) * 1000) for i in range(3)]
    whole = stream_header() + b"".join(f.to_bytes() for f in frames) + end_marker(3)

    api = client(lambda r: httpx.Response(200, content=whole))
    assert list(api.read_chunks(1, [f.id for f in frames])) == frames

    cut = client(lambda r: httpx.Response(200, content=whole[:-41]))
    with pytest.raises(TruncatedStream):
        list(cut.read_chunks(1, [f.id for f in frames]))


def test_files_iterates_pages_pinned_to_the_first_run():
    queries = []

    def entry(path):
        return {"path": path, "name": path[1:], "kind": "file", "size": 0, "mtime_ns": 0, "mode": 0, "uid": 0, "gid": 0,
                "valid_from": 1, "valid_to": None}

    def handler(request):
        q = dict(request.url.params)
        queries.append(q)
        if "after" not in q:
            return httpx.Response(200, json={"run": 5, "entries": [entry("/a")], "next_after": "/a"})
        return httpx.Response(200, json={"run": 5, "entries": [entry("/b")], "next_after": None})

    pages = list(client(handler).files(1, "/", at="2026-11-28T00:00:00", chunks=True))
    assert [e.path for p in pages for e in p.entries] == ["/a", "/b"]
    assert queries[0] == {"path": "/", "at": "2026-11-28T00:00:00", "chunks": "true"}
    assert queries[1] == {"path": "/", "run": "5", "after": "/a", "chunks": "true"}


def test_an_unexpected_answer_is_a_server_error():
    with pytest.raises(ServerError, match="unexpected answer"):
        client(lambda r: httpx.Response(200, json={"nope": 1})).me()


def test_server_url_must_be_http():
    with pytest.raises(UsageError, match="http"):
        ApiClient("bkup.example.com")
