"""The wire contract between agent (and CLI clients) and server: routes, bodies, errors.

Every JSON body on `/api/v1` is one of these msgspec structs. Binary bodies
(chunk upload, chunk read) are frame streams as specified in docs/format.md
and implemented in `bkup.core.frames`. Ids of chunks and contents are hex
strings; paths are in wire form (`bkup.core.paths`).

Routes (all under /api/v1; auth is `Authorization: Bearer TOKEN`, where the
token is a user's API token from /auth/login or a client's agent token):

    POST /auth/login                 LoginRequest -> LoginResponse        anyone
    GET  /users                      -> list[UserInfo]                    admin
    POST /users                      UserCreate -> UserInfo               admin
    GET  /clients[?name=N]           -> list[ClientInfo]                  user (own) / admin (all)
    POST /clients                    ClientCreate -> ClientCreated (201)  user / admin
    GET  /clients/{id}               -> ClientInfo                        owner / admin / its agent
    POST /clients/{id}/token         -> ClientCreated (new agent token)   owner / admin
    GET  /clients/{id}/runs          -> list[RunInfo]                     owner / admin / its agent
    GET  /clients/{id}/tree?path=&run=&at=            -> Tree            owner / admin / its agent
    GET  /clients/{id}/files?path=&run=&at=&after=&limit=&chunks=  -> VersionPage
    GET  /clients/{id}/history?path= -> History                          owner / admin / its agent
    GET  /clients/{id}/status        -> ClientStatus                      owner / admin / its agent
    GET  /clients/{id}/config        -> ClientConfig                      owner / admin / its agent
    PUT  /clients/{id}/config        ClientConfig -> ClientConfig         owner / admin
    POST /clients/{id}/backup-now    -> 202                               owner / admin
    GET  /clients/{id}/logs?level=&limit=  -> list[LogEntry]             owner / admin / its agent
    GET  /agent/me                   -> ClientInfo                        agent
    GET  /agent/config               -> ClientConfig                      agent
    POST /agent/heartbeat            Heartbeat -> AgentSignal             agent
    GET  /agent/poll?version=&timeout=     -> AgentSignal (long-poll)     agent
    POST /agent/logs                 LogBatch -> {"accepted": n}          agent
    POST /runs                       RunStart -> RunInfo (201)            agent
    POST /runs/{id}/versions         VersionBatch -> CommitResult | 409 (extra.missing)  agent
    POST /runs/{id}/deletions        DeleteBatch -> DeleteResult          agent
    POST /runs/{id}/finish           RunFinish -> RunInfo                 agent
    POST /chunks/missing             ChunkQuery -> ChunkMissing           agent
    POST /chunks                     frame stream -> UploadResult         agent
    POST /chunks/read                ChunkRead -> frame stream            owner / admin / its agent
    GET  /users/{id}/policy          -> PolicyInfo                        admin / that user
    PUT  /users/{id}/policy          {rule: int|null, ...} -> PolicyInfo  admin / that user
    GET  /clients/{id}/policy        -> PolicyInfo                        owner / admin
    PUT  /clients/{id}/policy        {rule: int|null, ...} -> PolicyInfo  owner / admin
    GET  /users/{id}/alerts          -> AlertSettings                     admin / that user
    PUT  /users/{id}/alerts          AlertSettings -> AlertSettings       admin / that user
    POST /alerts/test                -> list[AlertDelivery]               user (own webhook) / admin (+ global)

`at` is an ISO 8601 time (naive means UTC); `run` a run seq. Errors are
ErrorBody JSON with a 4xx status; a 409 on a commit lists the chunks the
server lacks in `extra.missing`.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

API = "/api/v1"
FRAME_MEDIA_TYPE = "application/x-bkup-frames"

# Upper bounds the server enforces and the agent respects.
MAX_UPLOAD_BYTES = 64 * 1024 * 1024  # one chunk-upload request
MAX_IDS_PER_QUERY = 4096  # chunk ids in one missing/read request
MAX_ENTRIES_PER_BATCH = 2000  # versions in one commit request
MAX_PATHS_PER_DELETE = 10000

# Integers a caller sends are bounded to what the catalog stores (64-bit signed columns): a bigger
# one is a 400 that names the field, never an overflow deep in the database driver.
I64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
Count = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
Id = Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]
U32 = Annotated[int, msgspec.Meta(ge=0, le=2**32 - 1)]

Kind = Literal["file", "dir", "symlink"]
RunStatus = Literal["running", "ok", "partial", "failed"]
Trigger = Literal["manual", "schedule", "watch", "once", "setup"]


class Struct(msgspec.Struct, omit_defaults=False):
    """Base of answers: a reader ignores fields it does not know, so a newer server can add some."""


class Request(Struct, forbid_unknown_fields=True):
    """Base of bodies a caller sends: an unknown field is an error (a typo is never silently dropped)."""


# --- errors -------------------------------------------------------------


class ErrorBody(Struct):
    """Every 4xx/5xx from /api/v1: a message a user can act on."""

    status_code: int
    detail: str
    extra: dict | None = None


# --- auth and users -----------------------------------------------------------


class LoginRequest(Request):
    user: str
    password: str


class LoginResponse(Struct):
    token: str
    user: str
    is_admin: bool


class UserCreate(Request):
    name: str
    password: str
    is_admin: bool = False


class UserInfo(Struct):
    id: int
    name: str
    is_admin: bool
    created_at: str


# --- clients -------------------------------------------------------------------


class ClientCreate(Request):
    name: str
    user: str | None = None  # admins may create clients for another user


class ClientCreated(Struct):
    id: int
    name: str
    user: str
    token: str  # the agent token, shown once


class ClientInfo(Struct):
    id: int
    name: str
    user: str
    created_at: str
    last_seen: str | None = None
    last_run: RunInfo | None = None


# --- runs ----------------------------------------------------------------------


class RunStats(Request):
    files_seen: Count = 0
    files_changed: Count = 0
    files_deleted: Count = 0
    dirs_seen: Count = 0
    bytes_scanned: Count = 0
    bytes_new: Count = 0  # raw bytes of chunks the server did not have
    bytes_uploaded: Count = 0  # bytes sent on the wire (compressed frames)
    errors: Count = 0


class RunStart(Request):
    trigger: Trigger = "manual"


class RunFinish(Request):
    status: Literal["ok", "partial", "failed"]
    stats: RunStats
    error: str | None = None


class RunInfo(Struct):
    id: int
    client_id: int
    seq: int
    trigger: str
    status: RunStatus
    started_at: str
    finished_at: str | None
    stats: RunStats
    error: str | None = None


# --- chunks ----------------------------------------------------------------------


class ChunkQuery(Request):
    """POST /chunks/missing: which of these ids does the server lack for my user?"""

    ids: list[str]


class ChunkMissing(Struct):
    missing: list[str]


class UploadResult(Struct):
    """Answer to POST /chunks (body: a frame stream)."""

    received: int  # frames in the stream
    stored: int  # frames that were new and went into a pack
    duplicates: int  # frames the server already held
    bytes_stored: int  # encrypted bytes written to storage


class ChunkRead(Request):
    """POST /chunks/read: stream these chunks (frames) of this client's owner."""

    client_id: Id
    ids: list[str]


# --- versions --------------------------------------------------------------------


class Entry(Request):
    """One file system entry as the agent saw it (a version to commit)."""

    path: str
    kind: Kind
    size: Count = 0
    mtime_ns: I64 = 0
    mode: U32 = 0
    uid: U32 = 0
    gid: U32 = 0
    chunks: list[str] | None = None  # files: the content as chunk ids, in order
    link_target: str | None = None  # symlinks: the target, wire form


class VersionBatch(Request):
    entries: list[Entry]


class CommitResult(Struct):
    committed: int  # new versions opened
    unchanged: int  # entries identical to the current version


class DeleteBatch(Request):
    paths: list[str]


class DeleteResult(Struct):
    closed: int


class VersionInfo(Struct):
    """A version as listed by tree, files and history."""

    path: str
    name: str
    kind: Kind
    size: int
    mtime_ns: int
    mode: int
    uid: int
    gid: int
    valid_from: int
    valid_to: int | None
    content_id: str | None = None
    link_target: str | None = None
    chunks: list[str] | None = None  # only when asked for (restore)


class VersionPage(Struct):
    """GET /clients/{id}/files: one page of versions under a path."""

    run: int | None  # the run seq the listing is "as of" (None: no runs yet)
    entries: list[VersionInfo]
    next_after: str | None = None  # pass as `after` for the next page


class TreeSummary(Struct):
    """GET /clients/{id}/summary: what is at or under a path as of a run (a restore's totals)."""

    run: int | None  # the run seq it is "as of" (None: no runs yet)
    path: str
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    bytes: int = 0  # of the files


class Tree(Struct):
    """GET /clients/{id}/tree: the children of one directory as of a run."""

    run: int | None
    path: str
    entries: list[VersionInfo]


class History(Struct):
    path: str
    versions: list[VersionInfo]


def encode(obj: object) -> bytes:
    return msgspec.json.encode(obj)


def decode(data: bytes, type_: type) -> object:
    return msgspec.json.decode(data, type=type_)


# --- central configuration, heartbeats, logs (the agent as a service) -------------


class PreCommand(Request):
    """A pre-backup command: run before each scheduled or manual run, never through a shell unless asked."""

    command: str
    timeout_s: int = 600
    shell: bool = False


class ClientConfig(Request):
    """What an agent backs up and when; kept on the server, fetched by the agent before each run."""

    paths: list[str] = []
    include: list[str] = []  # gitignore-style patterns that re-include (applied after exclude)
    exclude: list[str] = []  # gitignore-style patterns
    schedule: str = "every 6h"  # "every 30m" / "every 6h" / "every 1d", or a 5-field cron expression
    watch: bool = True  # continuous backup from file events
    commands: list[PreCommand] = []
    bandwidth_limit_kbps: int | None = None
    version: Count = 0  # bumped by the server on every change; read-only for callers


class Heartbeat(Request):
    agent_version: str
    hostname: str
    os: str
    state: Literal["idle", "running", "error"]
    detail: str | None = None


class AgentSignal(Struct):
    """Answer to a heartbeat or a poll: what the server wants from the agent now."""

    config_version: int
    backup_now: bool


class LogEntry(Request):
    ts: str
    level: Literal["debug", "info", "warning", "error"]
    message: str
    run_seq: Id | None = None


class LogBatch(Request):
    entries: list[LogEntry]


class ClientStatus(Struct):
    """A client at a glance, as the dashboard shows it."""

    state: Literal["ok", "running", "failing", "stale", "offline", "never"]
    online: bool
    last_seen: str | None
    last_ok_at: str | None
    last_run: RunInfo | None
    agent_state: str | None = None
    hostname: str | None = None
    agent_version: str | None = None


# --- retention ------------------------------------------------------------------------


class PolicyInfo(Struct):
    """A retention policy (docs/retention.md). PUT takes the `policy` object itself: rule -> count or null.

    Rules: keep_versions, keep_days, keep_daily, keep_weekly, keep_monthly,
    keep_deleted_days (whole numbers >= 0). A client's policy overrides its
    user's rule by rule; `effective` is what applies.
    """

    policy: dict[str, int]  # the rules set here ({}: none)
    effective: dict[str, int]  # what prune applies (for a user: the same as policy)
    description: str  # `effective` in words


# --- alerts (docs/alerts.md) ----------------------------------------------------------


class AlertSettings(Struct):
    """A user's own alert webhook (http/https URL), besides the server's global ones; null: none."""

    webhook: str | None = None


class AlertDelivery(Struct):
    """One test delivery: the webhook (path hidden), whether it answered 2xx, its status or the error."""

    url: str
    ok: bool
    status: int | None = None
    error: str | None = None
