"""Webhook alerts: run_failed, schedule_missed and damage_found reach global and per-user webhooks, with retries."""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from bkup.catalog.models import Run
from bkup.errors import UsageError
from bkup.server import alerts
from bkup.server.alerts import AlertEvent, AlertSender, send_alert
from tests.server.test_api import API, start_run

STATS = {"files_seen": 1, "files_changed": 1, "files_deleted": 0, "dirs_seen": 1, "bytes_scanned": 1,
         "bytes_new": 1, "bytes_uploaded": 1, "errors": 0}


@pytest.fixture(autouse=True)
def fast_retries(ctx):
    ctx.alerts = AlertSender(secret=ctx.settings.alert_secret, metrics=ctx.metrics, backoff=0.05, attempts=4)
    yield
    ctx.alerts.close(wait=1)


def finish(http, account, run, status, error=None):
    r = http.post(f"{API}/runs/{run['id']}/finish", json={"status": status, "stats": STATS, "error": error}, headers=account.agent)
    assert r.status_code == 200, r.text
    return r.json()


def test_a_failed_run_raises_run_failed_with_the_documented_payload(ctx, http, alice, hook):
    ok = start_run(http, alice)
    finish(http, alice, ok, "ok")
    run = start_run(http, alice)
    finish(http, alice, run, "failed", "pre-command 'pg_dump' exited 1")
    assert ctx.alerts.flush(10)
    [event] = hook.events()  # the ok run raised nothing
    assert event["event"] == "run_failed" and event["version"] == 1
    assert event["user"] == "alice" and event["client"] == "alice-pc" and event["client_id"] == alice.client_id
    assert event["run"]["seq"] == 2 and event["run"]["status"] == "failed"
    assert event["details"]["error"] == "pre-command 'pg_dump' exited 1"
    assert "pg_dump" in event["summary"] and len(event["id"]) == 32
    datetime.fromisoformat(event["time"])
    req = hook.requests[0]
    assert req["headers"]["X-Bkup-Event"] == "run_failed" and req["headers"]["X-Bkup-Delivery"] == event["id"]
    expected = "sha256=" + hmac.new(b"hook-secret", req["body"], hashlib.sha256).hexdigest()
    assert req["headers"]["X-Bkup-Signature"] == expected


def test_deliveries_are_retried_with_the_same_id(ctx, http, alice, hook):
    hook.fail_first = 2
    finish(http, alice, start_run(http, alice), "failed", "boom")
    assert ctx.alerts.flush(10)
    assert [r["answered"] for r in hook.requests] == [500, 500, 200]
    assert len({r["json"]["id"] for r in hook.requests}) == 1
    assert ctx.metrics.alerts.labels(ctx.metrics.replica, "run_failed", "delivered")._value.get() == 1


def test_an_unreachable_webhook_never_slows_or_breaks_a_backup(ctx, http, alice):
    ctx.settings = ctx.settings.replace(alert_webhooks=("http://127.0.0.1:9/never",))
    ctx.alerts = AlertSender(metrics=ctx.metrics, backoff=0.05, attempts=2)
    t = time.monotonic()
    finish(http, alice, start_run(http, alice), "failed", "boom")
    assert time.monotonic() - t < 2
    assert ctx.alerts.flush(10)
    assert ctx.metrics.alerts.labels(ctx.metrics.replica, "run_failed", "failed")._value.get() == 1


def test_a_full_queue_drops_instead_of_blocking(ctx):
    sender = AlertSender(max_pending=2, backoff=60, attempts=2, timeout=0.5)
    sender._ensure_thread = lambda: None  # nothing drains: the queue stays full
    event = AlertEvent(event="test", summary="x")
    assert [sender.submit("http://127.0.0.1:9/", event) for _ in range(3)] == [True, True, False]


def test_per_user_webhooks_get_their_own_events_only(ctx, http, alice, bob, hook):
    from ops_kit import Hook

    own = Hook()
    try:
        r = http.put(f"{API}/users/{_user_id(ctx, alice)}/alerts", json={"webhook": own.url}, headers=alice.auth)
        assert r.status_code == 200 and r.json() == {"webhook": own.url}
        assert http.get(f"{API}/users/{_user_id(ctx, alice)}/alerts", headers=alice.auth).json() == {"webhook": own.url}
        # Another user's settings are invisible; bad URLs are refused where they are entered.
        assert http.get(f"{API}/users/{_user_id(ctx, alice)}/alerts", headers=bob.auth).status_code == 404
        assert http.put(f"{API}/users/{_user_id(ctx, alice)}/alerts", json={"webhook": "file:///etc/passwd"},
                        headers=alice.auth).status_code == 400
        assert http.get(f"{API}/users/{_user_id(ctx, alice)}/alerts", headers=alice.agent).status_code == 403
        finish(http, alice, start_run(http, alice), "failed", "alice broke")
        finish(http, bob, start_run(http, bob), "failed", "bob broke")
        assert ctx.alerts.flush(10)
        assert sorted(e["user"] for e in hook.events("run_failed")) == ["alice", "bob"]  # global: everything
        assert [e["user"] for e in own.events("run_failed")] == ["alice"]
    finally:
        own.close()


def _user_id(ctx, account) -> int:
    from bkup.server.accounts import get_user

    with ctx.catalog.session() as s:
        return get_user(s, account.name).id


def test_a_late_client_raises_schedule_missed_once_per_missed_slot(ctx, http, alice, hook):
    run = start_run(http, alice)
    finish(http, alice, run, "ok")
    now = datetime.now(UTC)
    # "every 6h" (the default) + 1 h margin: not late at +6h30, late at +7h30.
    assert alerts.check_missed_schedules(ctx, now + timedelta(hours=6, minutes=30)) == 0
    assert alerts.check_missed_schedules(ctx, now + timedelta(hours=7, minutes=30)) == 1
    assert alerts.check_missed_schedules(ctx, now + timedelta(hours=9)) == 0  # already told
    assert ctx.alerts.flush(10)
    [event] = hook.events("schedule_missed")
    assert event["client"] == "alice-pc" and event["details"]["schedule"] == "every 6h"
    assert event["details"]["margin_s"] == 3600 and event["details"]["last_success_started_at"]
    assert datetime.fromisoformat(event["details"]["due_at"]) > now
    # A new successful run (at +8h) starts a new slot, which can be missed again.
    second = start_run(http, alice)
    finish(http, alice, second, "ok")
    with ctx.catalog.session() as s:
        row = s.get(Run, second["id"])
        row.started_at = now + timedelta(hours=8)
        s.add(row)
        s.commit()
    assert alerts.check_missed_schedules(ctx, now + timedelta(hours=14)) == 0
    assert alerts.check_missed_schedules(ctx, now + timedelta(hours=15, minutes=30)) == 1


def test_a_client_with_a_run_in_progress_is_not_late(ctx, http, alice, hook):
    start_run(http, alice)
    assert alerts.check_missed_schedules(ctx, datetime.now(UTC) + timedelta(days=3)) == 0


def test_damage_found_goes_to_global_and_the_users_webhook(ctx, http, alice, hook):
    from ops_kit import Hook

    own = Hook()
    try:
        alerts.set_user_webhook(ctx, _user_id(ctx, alice), own.url)
        event = alerts.damage_event(
            "check: 1 damaged pack of alice, 2 files affected", user="alice",
            details={"problems": [{"kind": "pack_unreadable", "pack": "ab" * 16}], "affected_files": 2},
        )
        assert send_alert(ctx, event, user_id=_user_id(ctx, alice)) == 2
        assert ctx.alerts.flush(10)
        for h in (hook, own):
            [got] = h.events("damage_found")
            assert got["details"]["affected_files"] == 2 and got["user"] == "alice" and got["id"] == event.id
    finally:
        own.close()


def test_alert_test_route_reports_each_webhook(ctx, http, root, alice, hook):
    r = http.post(f"{API}/alerts/test", headers=root.auth)
    assert r.status_code == 200
    assert r.json() == [{"url": "http://127.0.0.1:%d/***" % int(hook.url.split(":")[2].split("/")[0]), "ok": True, "status": 200, "error": None}]
    assert hook.events("test")[0]["user"] == "root"
    assert http.post(f"{API}/alerts/test", headers=alice.auth).json() == []  # not an admin, no own webhook


def test_webhook_urls_are_checked():
    assert alerts.check_webhook_url(" https://hooks.example/x ") == "https://hooks.example/x"
    for bad in ("ftp://x/", "hooks.example/x", "http:///nohost", "https://" + "a" * 2000):
        with pytest.raises(UsageError):
            alerts.check_webhook_url(bad)


def test_send_alert_refuses_unknown_events(ctx):
    with pytest.raises(ValueError):
        send_alert(ctx, AlertEvent(event="nonsense", summary="x"))


def test_close_gives_what_is_queued_one_last_try(ctx, hook):
    sender = AlertSender(backoff=60, attempts=3)
    hook.fail_first = 1
    assert sender.submit(hook.url, AlertEvent(event="test", summary="x"))
    deadline = time.monotonic() + 5
    while not hook.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    sender.close(wait=5)  # the retry was 60 s away: close tries it now
    assert [r["answered"] for r in hook.requests] == [500, 200]


def test_delivery_happens_off_the_request_path(ctx, http, alice, hook):
    threads = []
    attempt = AlertSender._attempt

    def spy(self, client, delivery):
        threads.append(threading.current_thread().name)
        return attempt(self, client, delivery)

    ctx.alerts._attempt = spy.__get__(ctx.alerts)
    finish(http, alice, start_run(http, alice), "failed", "boom")
    assert ctx.alerts.flush(10)
    assert threads == ["bkup-alerts"]
