"""Central configuration, heartbeats, backup-now signalling, logs and status over the API."""

from __future__ import annotations

import threading
import time

import pytest

API = "/api/v1"


def test_config_round_trip_and_version(http, alice):
    url = f"{API}/clients/{alice.client_id}/config"
    assert http.get(url, headers=alice.auth).json()["version"] == 0
    cfg = {"paths": ["/home/alice/", "/etc"], "exclude": ["*.tmp", "/cache/"], "schedule": "0 3 * * *",
           "watch": False, "commands": [{"command": "pg_dump -f /var/backups/db.sql app", "timeout_s": 60}]}
    r = http.put(url, json=cfg, headers=alice.auth)
    assert r.status_code == 200, r.text
    saved = r.json()
    assert saved["version"] == 1 and saved["paths"] == ["/home/alice", "/etc"]
    # The agent reads the same configuration.
    assert http.get(f"{API}/agent/config", headers=alice.agent).json() == saved
    assert http.put(url, json=cfg, headers=alice.auth).json()["version"] == 2
    # Agents cannot change their own configuration.
    assert http.put(url, json=cfg, headers=alice.agent).status_code == 403


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"paths": ["relative/dir"]}, "paths[0]"),
        ({"schedule": "every day at noon"}, "schedule"),
        ({"schedule": "61 * * * *"}, "schedule"),
        ({"exclude": ["[z-a]"]}, "exclude"),
        ({"commands": [{"command": "true", "timeout_s": -5}]}, "commands[0].timeout_s"),
        ({"commands": [{"command": "  "}]}, "commands[0].command"),
        ({"bandwidth_limit_kbps": 0}, "bandwidth_limit_kbps"),
    ],
)
def test_bad_config_is_refused_naming_the_field(http, alice, patch, field):
    r = http.put(f"{API}/clients/{alice.client_id}/config", json={"paths": ["/x"], **patch}, headers=alice.auth)
    assert r.status_code == 400
    assert r.json()["detail"].startswith(field)
    assert http.get(f"{API}/clients/{alice.client_id}/config", headers=alice.auth).json()["version"] == 0


def test_unknown_config_field_is_400(http, alice):
    r = http.put(f"{API}/clients/{alice.client_id}/config", json={"pathz": ["/x"]}, headers=alice.auth)
    assert r.status_code == 400 and "pathz" in r.text


def test_backup_now_wakes_a_polling_agent(http, alice, bob):
    assert http.post(f"{API}/clients/{alice.client_id}/backup-now", headers=bob.auth).status_code == 404
    result = {}

    def poll():
        t0 = time.monotonic()
        result["signal"] = http.get(f"{API}/agent/poll", params={"version": 0, "timeout": 10}, headers=alice.agent).json()
        result["waited"] = time.monotonic() - t0

    t = threading.Thread(target=poll)
    t.start()
    time.sleep(1.0)
    assert http.post(f"{API}/clients/{alice.client_id}/backup-now", headers=alice.auth).status_code == 202
    t.join(15)
    assert result["signal"]["backup_now"] is True
    assert 0.9 < result["waited"] < 5
    # Starting a run serves the request.
    http.post(f"{API}/runs", json={"trigger": "manual"}, headers=alice.agent)
    assert http.get(f"{API}/agent/poll", params={"timeout": 0}, headers=alice.agent).json()["backup_now"] is False


def test_poll_returns_at_timeout_without_signal(http, alice):
    t0 = time.monotonic()
    sig = http.get(f"{API}/agent/poll", params={"version": 0, "timeout": 1}, headers=alice.agent).json()
    assert sig == {"config_version": 0, "backup_now": False}
    assert time.monotonic() - t0 >= 0.9


def test_heartbeat_logs_and_status(http, alice):
    status = http.get(f"{API}/clients/{alice.client_id}/status", headers=alice.auth).json()
    assert status["state"] == "never" and status["online"] is False
    beat = {"agent_version": "0.1.0", "hostname": "pc1", "os": "Linux", "state": "idle"}
    assert http.post(f"{API}/agent/heartbeat", json=beat, headers=alice.agent).json() == {"config_version": 0, "backup_now": False}
    run = http.post(f"{API}/runs", json={"trigger": "manual"}, headers=alice.agent).json()
    logs = {"entries": [
        {"ts": "2026-11-28T07:00:00Z", "level": "info", "message": "started", "run_seq": run["seq"]},
        {"ts": "2026-11-28T07:00:01Z", "level": "warning", "message": "cannot read /x: permission denied", "run_seq": run["seq"]},
        {"ts": "2026-11-28T07:00:02Z", "level": "error", "message": "pg_dump failed: exit 1"},
    ]}
    assert http.post(f"{API}/agent/logs", json=logs, headers=alice.agent).json() == {"accepted": 3}
    got = http.get(f"{API}/clients/{alice.client_id}/logs", headers=alice.auth).json()
    assert [e["message"] for e in got] == ["pg_dump failed: exit 1", "cannot read /x: permission denied", "started"]
    assert got[1]["run_seq"] == run["seq"]
    warn = http.get(f"{API}/clients/{alice.client_id}/logs", params={"level": "warning"}, headers=alice.auth).json()
    assert [e["level"] for e in warn] == ["error", "warning"]
    assert http.get(f"{API}/clients/{alice.client_id}/logs", params={"level": "loud"}, headers=alice.auth).status_code == 400

    status = http.get(f"{API}/clients/{alice.client_id}/status", headers=alice.auth).json()
    assert status["state"] == "running" and status["online"] and status["hostname"] == "pc1"
    http.post(f"{API}/runs/{run['id']}/finish", json={"status": "failed", "stats": {}, "error": "boom"}, headers=alice.agent)
    assert http.get(f"{API}/clients/{alice.client_id}/status", headers=alice.auth).json()["state"] == "failing"
    run = http.post(f"{API}/runs", json={"trigger": "manual"}, headers=alice.agent).json()
    http.post(f"{API}/runs/{run['id']}/finish", json={"status": "ok", "stats": {}}, headers=alice.agent)
    status = http.get(f"{API}/clients/{alice.client_id}/status", headers=alice.auth).json()
    assert status["state"] == "ok" and status["last_ok_at"] is not None
