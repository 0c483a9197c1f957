"""The typed HTTP client of the bkup API: one method per route of `bkup.protocol`, httpx errors turned into bkup's.

Agent, `ls`, `restore` and `login` all talk to the server through `ApiClient`.
JSON bodies are msgspec structs from `bkup.protocol`; chunk uploads and reads
are frame streams (`bkup.core.frames`), streamed both ways so that a batch is
never copied whole. Error mapping at this edge: 401 → AuthError, 403 →
Forbidden, 404 → NotFound, 409 → Conflict (MissingChunksError on a commit),
other 4xx → UsageError, 5xx and anything unreadable → ServerError, transport
failures → ServerError("cannot reach server …"). Calls that are safe to repeat
are retried with backoff on connection errors and 502/503/504.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TypeVar

import httpx
import msgspec

import bkup
from bkup import protocol
from bkup.core.frames import Frame, FrameBatch, FrameParser, coalesce, end_marker, stream_header
from bkup.errors import AuthError, BkupError, Conflict, Forbidden, NotFound, ServerError, UsageError

log = logging.getLogger("bkup.agent")

T = TypeVar("T")

RETRY_STATUS = frozenset({502, 503, 504})
DEFAULT_TIMEOUT = 120.0  # seconds without progress on one request (uploads of 32 MiB on slow links)
UPLOAD_PIECE = 256 * 1024  # an upload body goes to httpx in pieces of this size, not two per frame


class MissingChunksError(Conflict):
    """A commit was refused because the server lacks some chunks the entries name."""

    def __init__(self, detail: str, missing: list[str]) -> None:
        super().__init__(detail)
        self.missing = missing


def normalize_server(server: str) -> str:
    """`http(s)://host[:port][/prefix]` without a trailing slash; the key credentials are stored under."""
    url = server.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"server URL must start with http:// or https://, not {server!r}")
    return url


def check_plain_http(server: str, allow_insecure_http: bool) -> None:
    """Refuse http:// to anything but loopback: tokens and file data would cross the network in clear."""
    import ipaddress
    from urllib.parse import urlsplit

    parts = urlsplit(server)
    if parts.scheme != "http" or allow_insecure_http:
        return
    host = (parts.hostname or "").lower()
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost" or host.endswith(".localhost")
    if not loopback:
        raise UsageError(
            f"refusing plain http to {host}: tokens and backups would cross the network unencrypted. "
            "Use https:// (bkup serve with tls_cert/tls_key, or a TLS proxy), or set allow_insecure_http "
            "(BKUP_ALLOW_INSECURE_HTTP=1) if this network is trusted"
        )


class ApiClient:
    """A sync client of one server with one token (or none, to log in)."""

    retry_log_level = logging.WARNING  # the agent service, which retries runs itself, logs each attempt at INFO

    def __init__(
        self,
        server: str,
        token: str | None = None,
        *,
        transport: httpx.BaseTransport | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = 3,
        backoff: float = 0.5,
        ca_bundle: str | None = None,
        allow_insecure_http: bool | None = None,
    ) -> None:
        self.server = normalize_server(server)
        self.retries = retries
        self.backoff = backoff
        verify: Any = True
        if transport is None:  # a real network (not an in-process app): TLS policy applies
            if ca_bundle is None or allow_insecure_http is None:
                from bkup.settings import load_settings  # the two settings have no flags: config file and env

                s = load_settings()
                ca_bundle = s.ca_bundle if ca_bundle is None else ca_bundle
                allow_insecure_http = s.allow_insecure_http if allow_insecure_http is None else allow_insecure_http
            check_plain_http(self.server, allow_insecure_http)
            if ca_bundle:
                try:
                    verify = ssl.create_default_context(cafile=ca_bundle)
                except (OSError, ssl.SSLError) as e:
                    raise UsageError(f"ca_bundle {ca_bundle!r} is not a readable PEM file of CA certificates: {e}") from None
            elif self.server.startswith("http://"):
                # No TLS is ever spoken (relative URLs only, no redirects followed): skip loading
                # the CA bundle, ~0.1 s of every command. Still verifying, so it could only fail closed.
                verify = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self._http = httpx.Client(
            base_url=self.server + protocol.API,
            transport=transport,
            verify=verify,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 15.0)),
            headers={"User-Agent": f"bkup/{bkup.__version__}"},
            follow_redirects=False,
        )
        self.token = token

    @property
    def token(self) -> str | None:
        return self._token

    @token.setter
    def token(self, value: str | None) -> None:
        self._token = value
        if value:
            self._http.headers["Authorization"] = f"Bearer {value}"
        else:
            self._http.headers.pop("Authorization", None)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:  # never shows the token
        return f"ApiClient({self.server!r})"

    # --- auth and users ------------------------------------------------------

    def login(self, user: str, password: str) -> protocol.LoginResponse:
        body = protocol.LoginRequest(user=user, password=password)
        return self._call("POST", "/auth/login", protocol.LoginResponse, json=body, idempotent=False)

    def list_users(self) -> list[protocol.UserInfo]:
        return self._call("GET", "/users", list[protocol.UserInfo])

    def create_user(self, name: str, password: str, *, is_admin: bool = False) -> protocol.UserInfo:
        body = protocol.UserCreate(name=name, password=password, is_admin=is_admin)
        return self._call("POST", "/users", protocol.UserInfo, json=body, idempotent=False)

    # --- clients ---------------------------------------------------------------

    def list_clients(self, name: str | None = None) -> list[protocol.ClientInfo]:
        params = {"name": name} if name is not None else None
        return self._call("GET", "/clients", list[protocol.ClientInfo], params=params)

    def create_client(self, name: str, user: str | None = None) -> protocol.ClientCreated:
        body = protocol.ClientCreate(name=name, user=user)
        return self._call("POST", "/clients", protocol.ClientCreated, json=body, idempotent=False)

    def rotate_token(self, client_id: int) -> protocol.ClientCreated:
        return self._call("POST", f"/clients/{client_id}/token", protocol.ClientCreated, idempotent=False)

    def get_client(self, client_id: int) -> protocol.ClientInfo:
        return self._call("GET", f"/clients/{client_id}", protocol.ClientInfo)

    def runs(self, client_id: int, limit: int | None = None) -> list[protocol.RunInfo]:
        params = {"limit": limit} if limit is not None else None
        return self._call("GET", f"/clients/{client_id}/runs", list[protocol.RunInfo], params=params)

    def me(self) -> protocol.ClientInfo:
        return self._call("GET", "/agent/me", protocol.ClientInfo)

    # --- runs ------------------------------------------------------------------------

    def start_run(self, trigger: protocol.Trigger = "manual") -> protocol.RunInfo:
        body = protocol.RunStart(trigger=trigger)
        return self._call("POST", "/runs", protocol.RunInfo, json=body, idempotent=False)

    def commit(self, run_id: int, entries: Sequence[protocol.Entry]) -> protocol.CommitResult:
        """Commit versions; an identical entry sent twice is "unchanged", so a retry is harmless."""
        body = protocol.VersionBatch(entries=list(entries))
        return self._call("POST", f"/runs/{run_id}/versions", protocol.CommitResult, json=body)

    def delete_paths(self, run_id: int, paths: Sequence[str]) -> protocol.DeleteResult:
        body = protocol.DeleteBatch(paths=list(paths))
        return self._call("POST", f"/runs/{run_id}/deletions", protocol.DeleteResult, json=body)

    def finish_run(self, run_id: int, finish: protocol.RunFinish) -> protocol.RunInfo:
        return self._call("POST", f"/runs/{run_id}/finish", protocol.RunInfo, json=finish)

    # --- chunks -----------------------------------------------------------------------

    def missing(self, ids: Sequence[str]) -> list[str]:
        """The ids among `ids` that the server lacks for this user (any number of ids)."""
        out: list[str] = []
        step = protocol.MAX_IDS_PER_QUERY
        for i in range(0, len(ids), step):
            body = protocol.ChunkQuery(ids=list(ids[i : i + step]))
            out += self._call("POST", "/chunks/missing", protocol.ChunkMissing, json=body).missing
        return out

    def upload(self, frames: Iterable[bytes | Frame]) -> protocol.UploadResult:
        """Send one frame stream; each item is one frame (its bytes, or a Frame to avoid a copy).

        The body is streamed. A list or tuple of frames is sent with a
        Content-Length, a `FrameBatch` (frames made while they are sent)
        chunked, and both are retried on connection errors (the server ignores
        chunks it already holds); any other iterable is sent once, chunked.
        """
        replayable = isinstance(frames, (Sequence, FrameBatch))

        def body() -> Iterator[bytes]:
            yield stream_header()
            count = 0
            for frame in frames:
                if isinstance(frame, Frame):
                    yield frame.header()
                    yield frame.data
                else:
                    yield frame
                count += 1
            yield end_marker(count)

        headers = {"Content-Type": protocol.FRAME_MEDIA_TYPE}
        if isinstance(frames, Sequence):
            size = len(stream_header()) + len(end_marker(0))
            size += sum(len(f.header()) + len(f.data) if isinstance(f, Frame) else len(f) for f in frames)
            headers["Content-Length"] = str(size)
        return self._call(
            "POST", "/chunks", protocol.UploadResult, content=lambda: coalesce(body(), UPLOAD_PIECE),
            headers=headers, idempotent=replayable,
        )

    def read_chunks(self, client_id: int, ids: Sequence[str]) -> Iterator[Frame]:
        """Stream the frames of these chunks (checked for format, not yet for content: use decode_frame).

        A generator: the request goes out on the first `next()`. A stream cut
        short raises (TruncatedStream, an IntegrityError) at its end.
        """
        body = protocol.encode(protocol.ChunkRead(client_id=client_id, ids=list(ids)))
        headers = {"Content-Type": "application/json", "Accept": protocol.FRAME_MEDIA_TYPE}
        resp = self._send("POST", "/chunks/read", content=lambda: body, headers=headers, stream=True)
        try:
            parser = FrameParser()
            for data in resp.iter_bytes():
                yield from parser.feed(data)
            parser.close()
        except httpx.TransportError as exc:
            raise ServerError(f"connection to {self.server} broke while reading chunks: {_cause(exc)}") from None
        finally:
            resp.close()

    # --- browsing --------------------------------------------------------------------------

    def tree(self, client_id: int, path: str = "/", *, run: int | None = None, at: str | None = None) -> protocol.Tree:
        params = _params(path=path, run=run, at=at)
        return self._call("GET", f"/clients/{client_id}/tree", protocol.Tree, params=params)

    def summary(self, client_id: int, path: str = "/", *, run: int | None = None, at: str | None = None) -> protocol.TreeSummary:
        params = _params(path=path, run=run, at=at)
        return self._call("GET", f"/clients/{client_id}/summary", protocol.TreeSummary, params=params)

    def files_page(
        self,
        client_id: int,
        path: str = "/",
        *,
        run: int | None = None,
        at: str | None = None,
        after: str | None = None,
        limit: int | None = None,
        chunks: bool = False,
    ) -> protocol.VersionPage:
        params = _params(path=path, run=run, at=at, after=after, limit=limit, chunks="true" if chunks else None)
        return self._call("GET", f"/clients/{client_id}/files", protocol.VersionPage, params=params)

    def files(
        self,
        client_id: int,
        path: str = "/",
        *,
        run: int | None = None,
        at: str | None = None,
        limit: int | None = None,
        chunks: bool = False,
    ) -> Iterator[protocol.VersionPage]:
        """Every page of versions under `path`, all as of the run the first page resolved to."""
        after: str | None = None
        while True:
            page = self.files_page(client_id, path, run=run, at=at, after=after, limit=limit, chunks=chunks)
            yield page
            if page.next_after is None or page.run is None:
                return
            # Pin the run: a backup finishing meanwhile must not change the listing under our feet.
            run, at, after = page.run, None, page.next_after

    def history(self, client_id: int, path: str) -> protocol.History:
        return self._call("GET", f"/clients/{client_id}/history", protocol.History, params={"path": path})

    # --- the agent as a service: configuration, heartbeats, signals, logs ---------------------

    def agent_config(self) -> protocol.ClientConfig:
        """This agent's configuration; fields a newer server added are ignored (the struct forbids them in requests)."""
        return _lenient(self._call("GET", "/agent/config", dict), protocol.ClientConfig, self.server)

    def heartbeat(self, beat: protocol.Heartbeat) -> protocol.AgentSignal:
        return self._call("POST", "/agent/heartbeat", protocol.AgentSignal, json=beat)

    def poll(self, version: int, timeout: float = 25) -> protocol.AgentSignal:
        """Wait (on the server) up to `timeout` s for "backup now" or a configuration newer than `version`."""
        return self._call("GET", "/agent/poll", protocol.AgentSignal, params={"version": version, "timeout": timeout})

    def send_logs(self, entries: Sequence[protocol.LogEntry]) -> int:
        body = protocol.LogBatch(entries=list(entries))
        return self._call("POST", "/agent/logs", dict, json=body).get("accepted", 0)

    def client_config(self, client_id: int) -> protocol.ClientConfig:
        return _lenient(self._call("GET", f"/clients/{client_id}/config", dict), protocol.ClientConfig, self.server)

    def put_client_config(self, client_id: int, config: protocol.ClientConfig) -> protocol.ClientConfig:
        """Replace a client's configuration (its owner or an admin: a user's token, not the agent's)."""
        answer = self._call("PUT", f"/clients/{client_id}/config", dict, json=config)
        return _lenient(answer, protocol.ClientConfig, self.server)

    def backup_now(self, client_id: int) -> None:
        self._send("POST", f"/clients/{client_id}/backup-now", idempotent=False).close()

    def client_logs(self, client_id: int, *, level: str | None = None, limit: int | None = None) -> list[protocol.LogEntry]:
        params = _params(level=level, limit=limit)
        rows = self._call("GET", f"/clients/{client_id}/logs", list, params=params)
        return [_lenient(row, protocol.LogEntry, self.server) for row in rows]

    def client_status(self, client_id: int) -> protocol.ClientStatus:
        return self._call("GET", f"/clients/{client_id}/status", protocol.ClientStatus)

    # --- plumbing -------------------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        type_: type[T],
        *,
        json: Any = None,
        content: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        idempotent: bool = True,
    ) -> T:
        if json is not None:
            data = protocol.encode(json)
            content = lambda: data  # noqa: E731 - a fresh body per attempt
            headers = {**(headers or {}), "Content-Type": "application/json"}
        resp = self._send(method, path, content=content, params=params, headers=headers, idempotent=idempotent)
        try:
            return msgspec.json.decode(resp.content, type=type_)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ServerError(f"unexpected answer from {self.server} to {method} {path}: {exc}") from None

    def _send(
        self,
        method: str,
        path: str,
        *,
        content: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        idempotent: bool = True,
        stream: bool = False,
    ) -> httpx.Response:
        """Send with retries; return a successful response (streamed if asked) or raise a BkupError.

        `content` is a callable giving a fresh body per attempt (bytes or an iterator).
        """
        attempts = 1 + (self.retries if idempotent else 0)
        for attempt in range(attempts):
            last = attempt == attempts - 1
            body = content() if content is not None else None
            request = self._http.build_request(method, path, content=body, params=params, headers=headers)
            try:
                resp = self._http.send(request, stream=stream)
            except httpx.TransportError as exc:
                if last:
                    raise ServerError(f"cannot reach server {self.server}: {_cause(exc)}") from None
                log.log(self.retry_log_level, "%s %s: %s; retrying", method, path, _cause(exc))
                self._pause(attempt, None)
                continue
            if resp.is_success:
                return resp
            try:
                resp.read()
            except httpx.TransportError as exc:
                raise ServerError(f"cannot reach server {self.server}: {_cause(exc)}") from None
            finally:
                resp.close()
            if resp.status_code in RETRY_STATUS and not last:
                log.log(self.retry_log_level, "%s %s: HTTP %d; retrying", method, path, resp.status_code)
                self._pause(attempt, resp.headers.get("Retry-After"))
                continue
            raise self._error(resp)
        raise AssertionError("unreachable")

    def _pause(self, attempt: int, retry_after: str | None) -> None:
        delay = self.backoff * (2**attempt)
        if retry_after and retry_after.isdigit():
            delay = max(delay, min(float(retry_after), 30.0))
        if delay > 0:
            time.sleep(delay)

    def _error(self, resp: httpx.Response) -> BkupError:
        status = resp.status_code
        body: Any = None
        try:
            body = msgspec.json.decode(resp.content)
        except msgspec.DecodeError:
            pass
        detail = body.get("detail") if isinstance(body, dict) else None
        if not isinstance(detail, str) or not detail:
            text = resp.text.strip()[:200]
            detail = f"HTTP {status} {resp.reason_phrase}" + (f": {text}" if text else "")
        if status == 409 and isinstance(body, dict):
            missing = body.get("missing")
            if missing is None and isinstance(body.get("extra"), dict):
                missing = body["extra"].get("missing")
            if isinstance(missing, list):
                return MissingChunksError(detail, [str(m) for m in missing])
        if status == 401:
            return AuthError(detail)
        if status == 403:
            return Forbidden(detail)
        if status == 404:
            return NotFound(detail)
        if status == 409:
            return Conflict(detail)
        if 400 <= status < 500:
            return UsageError(detail)
        return ServerError(f"server error ({status}): {detail}")


def _lenient(data: Any, type_: type[T], server: str) -> T:
    """`data` as a request struct (which forbids unknown fields), keeping only the fields it knows."""
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if k in type_.__struct_fields__}
    try:
        return msgspec.convert(data, type_)
    except msgspec.ValidationError as exc:
        raise ServerError(f"unexpected answer from {server}: {exc}") from None


def _params(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _cause(exc: Exception) -> str:
    text = str(exc)
    cause = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    if "CERTIFICATE_VERIFY_FAILED" in text:
        cause += (" — the server's TLS certificate is not trusted; if a private CA signed it, set ca_bundle"
                  " (BKUP_CA_BUNDLE) to that CA's PEM file")
    return cause
