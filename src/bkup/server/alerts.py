"""Webhook alerts: the events (run_failed, schedule_missed, damage_found), who gets them, and their delivery.

Vocabulary (docs/alerts.md has the payload):

- an **event** (`AlertEvent`) is one JSON document; its `id` stays the same on
  every retry, so a receiver can drop duplicates;
- its **targets** are the global webhooks (`alert_webhooks`) plus the webhook
  of the user the event concerns (`users.alert_webhook`);
- the **sender** (`AlertSender`) delivers off the request path: `send_alert`
  only puts the event on a bounded queue; one background thread POSTs it and
  retries with exponential backoff. A full queue drops the event (logged and
  counted); an unreachable webhook never slows or breaks a backup.

Who raises what: `runs.finish_run` (and the stale-run sweep) → `run_failed`;
the periodic `check_missed_schedules` job → `schedule_missed`; `bkup check` →
`damage_found` through `send_alert(ctx, damage_event(...))`.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import itertools
import logging
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
import msgspec
from sqlalchemy import or_, update
from sqlmodel import select

import bkup
from bkup import protocol
from bkup.catalog.models import Client, Run, User
from bkup.core.schedule import Schedule
from bkup.errors import UsageError
from bkup.settings import mask_url

if TYPE_CHECKING:
    from bkup.server.context import ServerContext
    from bkup.server.metrics import ServerMetrics
    from bkup.server.principal import Principal

log = logging.getLogger("bkup.server.alerts")

EVENTS = ("run_failed", "schedule_missed", "damage_found", "test")
PAYLOAD_VERSION = 1
MAX_URL = 2000


class AlertEvent(msgspec.Struct, kw_only=True):
    """The webhook body (docs/alerts.md)."""

    event: str
    summary: str  # one sentence for humans (chat messages, mail subjects)
    id: str = msgspec.field(default_factory=lambda: uuid.uuid4().hex)
    time: str = msgspec.field(default_factory=lambda: datetime.now(UTC).isoformat())
    version: int = PAYLOAD_VERSION
    server: str = ""  # the replica that raised it
    user: str | None = None
    client: str | None = None
    client_id: int | None = None
    run: protocol.RunInfo | None = None
    details: dict[str, Any] = msgspec.field(default_factory=dict)


def check_webhook_url(url: str) -> str:
    """Refuse anything but an absolute http(s) URL, where it is entered."""
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or len(url) > MAX_URL:
        raise UsageError(f"webhook {mask_url(url, keep_path=False)!r}: use an http:// or https:// URL (at most {MAX_URL} characters)")
    return url


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


# --- delivery -------------------------------------------------------------------------------


@dataclass(order=True)
class _Delivery:
    due: float
    seq: int
    url: str = field(compare=False)
    event: AlertEvent = field(compare=False)
    body: bytes = field(compare=False)
    attempt: int = field(default=0, compare=False)


class AlertSender:
    """One background thread POSTing events to webhooks, with retries and a bound on what waits.

    `attempts` tries per webhook, `backoff` seconds before the second, doubling
    up to `max_delay`. 2xx is delivered; 408, 429, 5xx and network errors are
    retried; other 4xx answers are final (the receiver refused the payload).
    """

    def __init__(
        self,
        *,
        secret: str = "",
        metrics: ServerMetrics | None = None,
        max_pending: int = 1000,
        attempts: int = 6,
        backoff: float = 2.0,
        max_delay: float = 300.0,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.secret = secret
        self.metrics = metrics
        self.max_pending = max_pending
        self.attempts = attempts
        self.backoff = backoff
        self.max_delay = max_delay
        self.timeout = timeout
        self.transport = transport
        self._inbox: queue.Queue[_Delivery | None] = queue.Queue(maxsize=max_pending)
        self._retries: list[_Delivery] = []
        self._seq = itertools.count()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._pending = 0  # deliveries queued or waiting for a retry
        self._done = threading.Condition()

    # -- producer side (any thread, never blocks)

    def submit(self, url: str, event: AlertEvent) -> bool:
        """Queue one delivery; False when the queue is full or the sender closed (the event is dropped)."""
        body = msgspec.json.encode(event)
        if self._closing:
            self._count(event.event, "dropped")
            return False
        self._ensure_thread()
        with self._done:
            self._pending += 1
        try:
            self._inbox.put_nowait(_Delivery(time.monotonic(), next(self._seq), url, event, body))
        except queue.Full:
            log.warning("alert %s to %s dropped: %d deliveries already waiting", event.event, mask_url(url, keep_path=False), self.max_pending)
            self._finish(event.event, "dropped")
            return False
        return True

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="bkup-alerts", daemon=True)
                self._thread.start()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued delivery was delivered or given up (tests, and `close`)."""
        with self._done:
            return self._done.wait_for(lambda: self._pending == 0, timeout)

    def close(self, wait: float = 5.0) -> None:
        """Stop taking events; try what is queued once more for up to `wait` seconds, then stop."""
        self._closing = True
        with self._lock:
            thread = self._thread
        if thread is None:
            return
        self._inbox.put(None)
        thread.join(wait)

    # -- the thread

    def _count(self, event: str, result: str) -> None:
        if self.metrics is not None:
            self.metrics.observe_alert(event, result)

    def _finish(self, event: str, result: str) -> None:
        self._count(event, result)
        with self._done:
            self._pending -= 1
            self._done.notify_all()

    def _run(self) -> None:
        with httpx.Client(timeout=self.timeout, transport=self.transport, headers={"User-Agent": f"bkup/{bkup.__version__}"}) as http:
            while True:
                wait = max(0.0, self._retries[0].due - time.monotonic()) if self._retries else None
                try:
                    item: _Delivery | None | bool = self._inbox.get(timeout=wait)
                except queue.Empty:
                    item = False
                if item is None:  # close(): one last try for everything waiting, then stop
                    self._drain(http)
                    return
                if item is not False:
                    heapq.heappush(self._retries, item)
                now = time.monotonic()
                while self._retries and self._retries[0].due <= now:
                    self._attempt(http, heapq.heappop(self._retries))

    def _drain(self, http: httpx.Client) -> None:
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                heapq.heappush(self._retries, item)
        while self._retries:
            d = heapq.heappop(self._retries)
            d.attempt = max(d.attempt, self.attempts - 1)  # one last try each
            self._attempt(http, d)

    def _attempt(self, http: httpx.Client, d: _Delivery) -> None:
        d.attempt += 1
        headers = {
            "Content-Type": "application/json",
            "X-Bkup-Event": d.event.event,
            "X-Bkup-Delivery": d.event.id,
        }
        if self.secret:
            headers["X-Bkup-Signature"] = sign(self.secret, d.body)
        where = mask_url(d.url, keep_path=False)
        try:
            r = http.post(d.url, content=d.body, headers=headers)
            if 200 <= r.status_code < 300:
                log.info("alert %s delivered to %s", d.event.event, where, extra={"event": d.event.event, "delivery": d.event.id})
                self._finish(d.event.event, "delivered")
                return
            retry = r.status_code in (408, 425, 429) or r.status_code >= 500
            reason = f"HTTP {r.status_code}"
        except httpx.HTTPError as e:
            retry, reason = True, f"{type(e).__name__}"
        if retry and d.attempt < self.attempts:  # when closing, the drain gives it its last try
            d.due = time.monotonic() + min(self.max_delay, self.backoff * 2 ** (d.attempt - 1))
            heapq.heappush(self._retries, d)
            log.info("alert %s to %s: %s; retry %d of %d", d.event.event, where, reason, d.attempt, self.attempts - 1)
            return
        log.warning("alert %s to %s failed after %d attempt(s): %s", d.event.event, where, d.attempt, reason,
                    extra={"event": d.event.event, "delivery": d.event.id})
        self._finish(d.event.event, "failed")


# --- raising events ---------------------------------------------------------------------------


def targets(ctx: ServerContext, user_id: int | None) -> list[str]:
    """The global webhooks, then the user's own (each once)."""
    urls = list(ctx.settings.alert_webhooks)
    if user_id is not None:
        with ctx.catalog.session() as s:
            user = s.get(User, user_id)
            if user is not None and user.alert_webhook:
                urls.append(user.alert_webhook)
    return list(dict.fromkeys(urls))


def send_alert(ctx: ServerContext, event: AlertEvent, *, user_id: int | None = None) -> int:
    """Queue `event` for every target (global webhooks, and the user's if `user_id`); returns how many were queued.

    Never raises for delivery problems and never blocks on the network: call
    it from anywhere, including request handlers and the check command.
    """
    if event.event not in EVENTS:
        raise ValueError(f"unknown alert event {event.event!r}")
    if not event.server:
        event = msgspec.structs.replace(event, server=ctx.metrics.replica if ctx.metrics else "")
    try:
        urls = targets(ctx, user_id)
    except Exception:
        log.exception("alert %s: could not look up its webhooks", event.event)
        urls = list(ctx.settings.alert_webhooks)
    if not urls:
        log.info("alert %s (no webhook configured): %s", event.event, event.summary)
        return 0
    log.info("alert %s: %s", event.event, event.summary, extra={"event": event.event, "delivery": event.id})
    return sum(ctx.alerts.submit(url, event) for url in urls)


def run_failed(ctx: ServerContext, run_id: int) -> None:
    """Raise `run_failed` for a run that just ended failed (by its agent or by the stale-run sweep)."""
    from bkup.server.runs import run_info

    try:
        with ctx.catalog.session() as s:
            row = s.exec(
                select(Run, Client, User).join(Client, Client.id == Run.client_id).join(User, User.id == Client.user_id).where(Run.id == run_id)
            ).first()
        if row is None:
            return
        run, client, user = row
        send_alert(
            ctx,
            AlertEvent(
                event="run_failed",
                summary=f"backup run {run.seq} of {client.name} ({user.name}) failed: {run.error or 'no error text'}",
                user=user.name, client=client.name, client_id=client.id, run=run_info(run),
                details={"error": run.error},
            ),
            user_id=user.id,
        )
    except Exception:  # an alert must never turn a finished run into an error
        log.exception("alert run_failed for run %s could not be raised", run_id)


def damage_event(
    summary: str, *, user: str | None = None, client: str | None = None, client_id: int | None = None, details: dict | None = None
) -> AlertEvent:
    """A `damage_found` event for `bkup check`: pass the affected user's id to `send_alert` so their webhook gets it too."""
    return AlertEvent(event="damage_found", summary=summary, user=user, client=client, client_id=client_id, details=details or {})


# --- missed schedules (a periodic job, run by one replica) ---------------------------------------


def _baseline(s: Any, client: Client) -> datetime:
    """When the client's last successful run started (or when it was created)."""
    last = s.exec(
        select(Run.started_at).where(Run.client_id == client.id, Run.status.in_(("ok", "partial"))).order_by(Run.seq.desc()).limit(1)
    ).first()
    return last or client.created_at


def check_missed_schedules(ctx: ServerContext, now: datetime | None = None) -> int:
    """Raise `schedule_missed` once per client and missed slot: no successful run started by next-due + margin.

    The "already alerted" mark is a catalog column set by a conditional
    UPDATE, so the alert goes out once even if two replicas ran this at once.
    A client with a run in progress is not late (the stale-run sweep ends
    dead runs). Returns the number of alerts raised.
    """
    t = now or datetime.now(UTC)
    margin = timedelta(seconds=ctx.settings.alert_missed_margin)
    raised = 0
    with ctx.catalog.session() as s:
        rows = list(s.exec(select(Client, User).join(User, User.id == Client.user_id)))
        busy = set(s.exec(select(Run.client_id).where(Run.status == "running").distinct()))
        for client, user in rows:
            if client.id in busy:
                continue
            config = msgspec.convert(client.config or {}, protocol.ClientConfig)
            try:
                schedule = Schedule.parse(config.schedule)
            except UsageError:
                continue
            base = _baseline(s, client)
            due = schedule.next_after(base)
            if t <= due + margin:
                continue
            claimed = s.execute(
                update(Client)
                .where(Client.id == client.id, or_(Client.missed_alert_at.is_(None), Client.missed_alert_at < due))
                .values(missed_alert_at=t)
            ).rowcount
            s.commit()
            if claimed != 1:
                continue
            late = t - due
            never = base == client.created_at
            send_alert(
                ctx,
                AlertEvent(
                    event="schedule_missed",
                    summary=(
                        f"{client.name} ({user.name}) has not completed a backup "
                        f"{'since it was added' if never else 'on schedule'}: due {due.isoformat(timespec='minutes')}, "
                        f"{int(late.total_seconds() // 60)} min late"
                    ),
                    user=user.name, client=client.name, client_id=client.id,
                    details={
                        "schedule": schedule.text,
                        "due_at": due.isoformat(),
                        "margin_s": ctx.settings.alert_missed_margin,
                        "last_success_started_at": None if never else base.isoformat(),
                        "last_seen": client.last_seen.isoformat() if client.last_seen else None,
                    },
                ),
                user_id=user.id,
            )
            raised += 1
    return raised


# --- the per-user webhook -------------------------------------------------------------------------


def get_user_webhook(ctx: ServerContext, user_id: int) -> str | None:
    with ctx.catalog.session() as s:
        user = s.get(User, user_id)
        return user.alert_webhook if user else None


def set_user_webhook(ctx: ServerContext, user_id: int, url: str | None) -> str | None:
    from bkup.errors import NotFound

    url = check_webhook_url(url) if url else None
    with ctx.catalog.session() as s:
        user = s.get(User, user_id)
        if user is None:
            raise NotFound(f"no user {user_id}")
        user.alert_webhook = url
        s.add(user)
        s.commit()
    return url


def deliver_now(ctx: ServerContext, event: AlertEvent, urls: list[str], *, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Send once, synchronously, and report per URL (for `bkup alert test`; the server uses `send_alert`)."""
    body = msgspec.json.encode(event)
    out = []
    headers = {"Content-Type": "application/json", "X-Bkup-Event": event.event, "X-Bkup-Delivery": event.id}
    if ctx.settings.alert_secret:
        headers["X-Bkup-Signature"] = sign(ctx.settings.alert_secret, body)
    with httpx.Client(timeout=timeout, headers={"User-Agent": f"bkup/{bkup.__version__}"}) as http:
        for url in urls:
            where = mask_url(url, keep_path=False)
            try:
                r = http.post(url, content=body, headers=headers)
                out.append({"url": where, "ok": 200 <= r.status_code < 300, "status": r.status_code, "error": None})
            except httpx.HTTPError as e:
                out.append({"url": where, "ok": False, "status": None, "error": type(e).__name__})
    return out


# --- the API's view (admin, or the user themself) ------------------------------------------------


def _own_user(principal: Principal, user_id: int) -> None:
    from bkup.errors import NotFound
    from bkup.server.principal import require_user

    require_user(principal)
    if not principal.is_admin and principal.user_id != user_id:
        raise NotFound(f"no user {user_id}")


def alert_settings(ctx: ServerContext, principal: Principal, user_id: int) -> protocol.AlertSettings:
    _own_user(principal, user_id)
    from bkup.errors import NotFound

    with ctx.catalog.session() as s:
        user = s.get(User, user_id)
        if user is None:
            raise NotFound(f"no user {user_id}")
        return protocol.AlertSettings(webhook=user.alert_webhook)


def set_alert_settings(ctx: ServerContext, principal: Principal, user_id: int, data: protocol.AlertSettings) -> protocol.AlertSettings:
    _own_user(principal, user_id)
    return protocol.AlertSettings(webhook=set_user_webhook(ctx, user_id, data.webhook))


def test_alert(ctx: ServerContext, principal: Principal) -> list[protocol.AlertDelivery]:
    """Send a `test` event now: to the caller's webhook, and for an admin to the global ones too."""
    from bkup.server.principal import require_user

    require_user(principal)
    urls = list(ctx.settings.alert_webhooks) if principal.is_admin else []
    own = get_user_webhook(ctx, principal.user_id)
    if own:
        urls.append(own)
    event = AlertEvent(
        event="test", summary=f"test alert from bkup, asked for by {principal.user_name}",
        user=principal.user_name, server=ctx.metrics.replica,
    )
    return [protocol.AlertDelivery(**r) for r in deliver_now(ctx, event, list(dict.fromkeys(urls)))]
