"""Retention policy API: read and set per user and per client, who may, and 400s that name the bad field."""

from __future__ import annotations

import pytest
from retention_kit import fast_passwords  # noqa: F401 - a fixture

API = "/api/v1"

pytestmark = pytest.mark.usefixtures("fast_passwords")


def user_id(http, account, root) -> int:
    return next(u["id"] for u in http.get(f"{API}/users", headers=root.auth).json() if u["name"] == account.name)


def test_user_sets_and_reads_own_policy(http, alice, root):
    uid = user_id(http, alice, root)
    r = http.get(f"{API}/users/{uid}/policy", headers=alice.auth)
    assert r.status_code == 200
    assert r.json() == {"policy": {}, "effective": {}, "description": "keep every version (no retention rule set)"}
    r = http.put(f"{API}/users/{uid}/policy", json={"keep_versions": 10, "keep_days": 30, "keep_daily": None}, headers=alice.auth)
    assert r.status_code == 200, r.text
    assert r.json()["policy"] == {"keep_versions": 10, "keep_days": 30}
    assert r.json()["description"].startswith("keep the current version of every path; the 10 newest versions")
    assert http.get(f"{API}/users/{uid}/policy", headers=root.auth).json()["policy"] == {"keep_versions": 10, "keep_days": 30}


def test_client_policy_overrides_the_users_rule_by_rule(http, alice, root):
    uid = user_id(http, alice, root)
    http.put(f"{API}/users/{uid}/policy", json={"keep_versions": 10, "keep_days": 30}, headers=alice.auth)
    r = http.put(f"{API}/clients/{alice.client_id}/policy", json={"keep_days": 7, "keep_monthly": 12}, headers=alice.auth)
    assert r.status_code == 200, r.text
    assert r.json()["policy"] == {"keep_days": 7, "keep_monthly": 12}
    assert r.json()["effective"] == {"keep_versions": 10, "keep_days": 7, "keep_monthly": 12}
    # An empty object removes the override: the client follows its user again.
    r = http.put(f"{API}/clients/{alice.client_id}/policy", json={}, headers=root.auth)
    assert r.json() == {"policy": {}, "effective": {"keep_versions": 10, "keep_days": 30},
                        "description": r.json()["description"]}


INVALID = [
    ({"keep_versions": -1}, "keep_versions"),
    ({"keep_days": 1.5}, "keep_days"),
    ({"keep_daily": "7"}, "keep_daily"),
    ({"keep_weekly": True}, "keep_weekly"),
    ({"keep_everything": 1}, "keep_everything"),
]


def test_invalid_policies_are_400_naming_the_field(http, alice, root):
    uid = user_id(http, alice, root)
    for body, field in INVALID:
        for url in (f"{API}/users/{uid}/policy", f"{API}/clients/{alice.client_id}/policy"):
            r = http.put(url, json=body, headers=alice.auth)
            assert r.status_code == 400, r.text
            assert f"'{field}'" in r.json()["detail"], r.json()
    assert http.get(f"{API}/users/{uid}/policy", headers=alice.auth).json()["policy"] == {}


def test_a_policy_must_be_an_object(http, alice):
    r = http.put(f"{API}/clients/{alice.client_id}/policy", json=[1], headers=alice.auth)
    assert r.status_code == 400


def test_who_may_read_and_set(http, alice, bob, root):
    alice_id, bob_id = user_id(http, alice, root), user_id(http, bob, root)
    assert http.get(f"{API}/users/{bob_id}/policy", headers=alice.auth).status_code == 403
    assert http.put(f"{API}/users/{bob_id}/policy", json={}, headers=alice.auth).status_code == 403
    assert http.get(f"{API}/clients/{bob.client_id}/policy", headers=alice.auth).status_code == 404
    assert http.put(f"{API}/clients/{bob.client_id}/policy", json={"keep_days": 1}, headers=alice.auth).status_code == 404
    # Agents cannot see or change retention, not even their own client's.
    assert http.get(f"{API}/clients/{alice.client_id}/policy", headers=alice.agent).status_code == 403
    assert http.put(f"{API}/clients/{alice.client_id}/policy", json={"keep_days": 1}, headers=alice.agent).status_code == 403
    assert http.put(f"{API}/users/{alice_id}/policy", json={"keep_days": 1}, headers=alice.agent).status_code == 403
    # Admins may do both for anyone.
    assert http.put(f"{API}/users/{bob_id}/policy", json={"keep_days": 3}, headers=root.auth).status_code == 200
    assert http.put(f"{API}/clients/{bob.client_id}/policy", json={"keep_days": 3}, headers=root.auth).status_code == 200
    assert http.get(f"{API}/users/999/policy", headers=root.auth).status_code == 404
