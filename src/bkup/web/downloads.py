"""Downloads from the file browser: one file version, or a directory as a tar stream — both streamed, never whole in memory.

A file's bytes come chunk by chunk: its chunk ids from the catalog, a few at
a time through `reads.read_chunks` (the same authorised pack reads as the
API's `POST /chunks/read`), each frame decoded and checked (BLAKE3, length)
before it is sent. A tar is built as it goes: POSIX pax headers made by
`tarfile.TarInfo.tobuf`, the file's chunks, padding; nothing but the chunks
in flight is held.
"""

from __future__ import annotations

import os
import tarfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import quote

from bkup import protocol
from bkup.core import paths
from bkup.core.frames import Frame, FrameParser, decode_frame
from bkup.errors import IntegrityError, NotFound, UsageError
from bkup.server import browse, reads
from bkup.server.context import ServerContext
from bkup.server.principal import Principal

BATCH = 16  # chunk ids per read request: at most 64 MiB of chunks in flight (4 MiB max chunk), ~16 MiB usually
PAGE = 1000  # versions listed per catalog query while building a tar
BLOCK = tarfile.BLOCKSIZE
RECORD = tarfile.RECORDSIZE


@dataclass(frozen=True)
class Download:
    filename: str
    size: int | None  # known for a single file (Content-Length)
    body: Iterator[bytes]
    media_type: str


def content_disposition(filename: str) -> str:
    """`attachment` with an ASCII fallback name and the exact name in RFC 5987 form."""
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\;' else "_" for c in filename) or "download"
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


def _frames(pieces: Iterator[bytes]) -> Iterator[Frame]:
    parser = FrameParser()
    for piece in pieces:
        yield from parser.feed(piece)
    parser.close()


def iter_content(ctx: ServerContext, principal: Principal, client_id: int, chunk_ids: list[str]) -> Iterator[bytes]:
    """The plaintext of a content, chunk by chunk, in order."""
    for i in range(0, len(chunk_ids), BATCH):
        part = chunk_ids[i : i + BATCH]
        repeated = {c for c, n in Counter(part).items() if n > 1}
        kept: dict[str, bytes] = {}  # only chunks that come again later in this batch
        # read_chunks sends each distinct id once, in order of first appearance.
        frames = _frames(reads.read_chunks(ctx, principal, client_id, part))
        for cid in part:
            if cid in kept:
                yield kept[cid]
                continue
            frame = next(frames, None)
            if frame is None or frame.id != cid:
                raise IntegrityError(f"chunk {cid}: the read stream sent {frame.id if frame else 'nothing'} instead")
            raw = decode_frame(frame)
            if cid in repeated:
                kept[cid] = raw
            yield raw
        for _ in frames:  # drain to the end marker (checks the stream is whole)
            pass


def _checked(body: Iterator[bytes], size: int, path: str) -> Iterator[bytes]:
    sent = 0
    for piece in body:
        sent += len(piece)
        yield piece
    if sent != size:
        raise IntegrityError(f"{path}: the catalog says {size} bytes but its chunks hold {sent}")


def _file_version(ctx: ServerContext, principal: Principal, client_id: int, path: str, run: int | None) -> protocol.VersionInfo:
    page = browse.files(ctx, principal, client_id, path, run, None, None, 1, True)
    found = page.entries[0] if page.entries and page.entries[0].path == paths.normalize(path) else None
    if found is None:
        raise NotFound(f"no {path} in this backup" + (f" (run {page.run})" if page.run else ""))
    if found.kind != "file":
        raise UsageError(f"{path} is a {found.kind}, not a file" + ("; download it as a tar" if found.kind == "dir" else ""))
    return found


def display_name(wire_name: str) -> str:
    """A name as the file system had it (undecodable bytes kept as surrogates, written back by tar and downloads)."""
    return os.fsdecode(paths.wire_to_fs(wire_name))


def file_download(ctx: ServerContext, principal: Principal, client_id: int, path: str, run: int | None) -> Download:
    """One version of a file: the one visible as of run `run` (default: the latest run)."""
    v = _file_version(ctx, principal, client_id, path, run)
    body = _checked(iter_content(ctx, principal, client_id, v.chunks or []), v.size, v.path)
    name = display_name(v.name).encode("utf-8", "replace").decode("utf-8")
    return Download(filename=name, size=v.size, body=body, media_type="application/octet-stream")


# --- tar -------------------------------------------------------------------------------------------------


def _tarinfo(v: protocol.VersionInfo, name: str) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.mode = v.mode & 0o7777
    ti.uid, ti.gid = v.uid, v.gid
    ti.mtime = v.mtime_ns // 1_000_000_000 if v.mtime_ns % 1_000_000_000 == 0 else v.mtime_ns / 1e9
    if v.kind == "dir":
        ti.type = tarfile.DIRTYPE
    elif v.kind == "symlink":
        ti.type = tarfile.SYMTYPE
        ti.linkname = os.fsdecode(paths.wire_to_fs(v.link_target or ""))
    else:
        ti.type = tarfile.REGTYPE
        ti.size = v.size
    return ti


def _member_name(root: str, base: str, path: str) -> str:
    rel = path[len(root) :].lstrip("/") if root != paths.ROOT else path.lstrip("/")
    fs = os.fsdecode(paths.wire_to_fs(rel)) if rel else ""
    if not base:
        return fs
    return base + ("/" + fs if fs else "")


def iter_tar(ctx: ServerContext, principal: Principal, client_id: int, root: str, seq: int) -> Iterator[bytes]:
    """A POSIX (pax) tar of everything at or under `root` as of run `seq`, member names relative to root's parent."""
    base = "" if root == paths.ROOT else display_name(paths.name_of(root))
    written = 0
    after: str | None = None
    while True:
        page = browse.files(ctx, principal, client_id, root, seq, None, after, PAGE, True)
        for v in page.entries:
            name = _member_name(root, base, v.path)
            if not name:
                continue  # the root directory itself when tarring "/"
            header = _tarinfo(v, name).tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
            yield header
            written += len(header)
            if v.kind == "file":
                yield from _checked(iter_content(ctx, principal, client_id, v.chunks or []), v.size, v.path)
                written += v.size
                if v.size % BLOCK:
                    pad = BLOCK - v.size % BLOCK
                    yield b"\0" * pad
                    written += pad
        if page.next_after is None:
            break
        after = page.next_after
    end = b"\0" * (2 * BLOCK)
    written += len(end)
    if written % RECORD:
        end += b"\0" * (RECORD - written % RECORD)
    yield end


def tar_download(ctx: ServerContext, principal: Principal, client_id: int, client_name: str, path: str, run: int | None) -> Download:
    """A directory (or "/") as of run `run` as a tar; checks access and the directory before streaming starts."""
    root = paths.normalize(path)
    tree = browse.tree(ctx, principal, client_id, root, run, None)  # ownership, run resolution
    if tree.run is None:
        raise NotFound("this client has no backups yet")
    if root != paths.ROOT:
        head = browse.files(ctx, principal, client_id, root, tree.run, None, None, 1, False)
        if not head.entries or head.entries[0].path != root:
            raise NotFound(f"no {root} in run {tree.run}")
        if head.entries[0].kind != "dir":
            raise UsageError(f"{root} is not a directory")
    label = "root" if root == paths.ROOT else display_name(paths.name_of(root))
    filename = f"{client_name}-{label}-run{tree.run}.tar".encode("utf-8", "replace").decode("utf-8")
    return Download(filename=filename, size=None, body=iter_tar(ctx, principal, client_id, root, tree.run), media_type="application/x-tar")
