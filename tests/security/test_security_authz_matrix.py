"""The authorization matrix: every /api/v1 route, as every kind of caller, on objects of user A and user B.

The expected answers are data (security_kit.MATRIX); docs/security.md shows
the same table, and a test fails when the two differ or when the app serves
a route the matrix has no row for.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from security_kit import (
    API,
    CALLERS,
    MATRIX,
    api_routes,
    cheap_passwords,
    expected,
    matrix_markdown,
    outcome,
    request_for,
    row_targets,
    send,
    world,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "security.md"
# Agent tokens go first: a user's token rotation in the same world must not change their answers.
ORDER = ("anon", "agentA", "agentB", "A", "B", "admin")


@pytest.fixture(autouse=True, scope="module")
def _cheap_passwords():
    cheap_passwords()


def test_every_route_has_a_row(tmp_path):
    with world(tmp_path) as w:
        served = api_routes(w.http.app)
    documented = {(r.method, r.route) for r in MATRIX}
    assert served - documented == set(), "routes without a row in the authorization matrix (security_kit.MATRIX)"
    assert documented - served == set(), "matrix rows for routes the app does not serve"
    assert len(MATRIX) == len(documented), "a route has two rows"
    assert set(ORDER) == set(CALLERS)


@pytest.mark.parametrize("row", MATRIX, ids=lambda r: f"{r.method} {r.route}")
def test_route_answers_exactly_as_documented(row, tmp_path):
    wrong = []
    with world(tmp_path) as w:
        for caller in ORDER:
            for target in row_targets(row):
                r = send(w, caller, request_for(w, row, target))
                want, got = expected(row, caller, target), outcome(r.status_code)
                if want != got:
                    wrong.append(f"{caller} on {target or '-'}: expected {want}, got {r.status_code} {r.text[:200]}")
                if got != "2xx":
                    assert r.json()["status_code"] == r.status_code  # every refusal is an ErrorBody
    assert not wrong, f"{row.method} {row.route}:\n" + "\n".join(wrong)


def test_a_bad_token_is_401_on_every_route(tmp_path):
    with world(tmp_path) as w:
        for row in MATRIX:
            if row.route == "/auth/login":
                continue
            method, url, kw = request_for(w, row, "A")
            for header in ("Bearer bkup_a_not-a-token", "Bearer ", "Basic dXNlcmE6cGFzc3dvcmQ=", "bearer"):
                r = w.http.request(method, url, headers={"Authorization": header}, **kw)
                assert r.status_code == 401, (row.route, header, r.status_code)
                assert r.headers.get("www-authenticate") == "Bearer"


def test_a_revoked_agent_token_and_a_web_session_cookie_token_are_refused(tmp_path):
    with world(tmp_path) as w:
        a = w.parties["A"]
        old = a.agent_token
        r = w.http.post(f"{API}/clients/{a.client_id}/token", headers=w.headers("A"))
        assert r.status_code == 201
        assert w.http.get(f"{API}/agent/me", headers={"Authorization": f"Bearer {old}"}).status_code == 401
        assert w.http.get(f"{API}/agent/me", headers={"Authorization": f"Bearer {r.json()['token']}"}).status_code == 200
        from bkup.server import accounts

        session, _ = accounts.start_web_session(w.ctx, "usera", "password-usera")
        assert w.http.get(f"{API}/clients", headers={"Authorization": f"Bearer {session}"}).status_code == 401


def test_dedup_never_tells_one_user_about_another_users_chunks(tmp_path):
    with world(tmp_path) as w:
        a, b = w.parties["A"], w.parties["B"]
        r = w.http.post(f"{API}/chunks/missing", json={"ids": [b.chunk, a.chunk]}, headers=w.headers("agentA"))
        assert r.json()["missing"] == [b.chunk]
        # Nor lets a user read them through their own client, nor commit a version that names them.
        r = w.http.post(f"{API}/chunks/read", json={"client_id": a.client_id, "ids": [b.chunk]}, headers=w.headers("A"))
        assert r.status_code == 404
        entry = {"path": "/stolen", "kind": "file", "size": 10, "chunks": [b.chunk]}
        r = w.http.post(f"{API}/runs/{a.run_id}/versions", json={"entries": [entry]}, headers=w.headers("agentA"))
        assert r.status_code == 409 and r.json()["extra"]["missing"] == [b.chunk]


def test_an_agent_token_never_has_its_owners_admin_rights(tmp_path):
    with world(tmp_path) as w:
        admin_agent = {"Authorization": f"Bearer {w.parties['admin'].agent_token}"}
        assert w.http.get(f"{API}/users", headers=admin_agent).status_code == 403
        a = w.parties["A"]
        assert w.http.get(f"{API}/clients/{a.client_id}", headers=admin_agent).status_code == 404
        assert [c["name"] for c in w.http.get(f"{API}/clients", headers=admin_agent).json()] == ["root-pc"]


def test_the_list_of_clients_shows_only_what_the_caller_may_see(tmp_path):
    with world(tmp_path) as w:
        names = {c: sorted(x["name"] for x in w.http.get(f"{API}/clients", headers=w.headers(c)).json()) for c in CALLERS[1:]}
    assert names == {
        "A": ["usera-pc"], "B": ["userb-pc"], "admin": ["root-pc", "usera-pc", "userb-pc"],
        "agentA": ["usera-pc"], "agentB": ["userb-pc"],
    }


def test_docs_security_md_carries_the_matrix():
    text = DOC.read_text()
    m = re.search(r"<!-- authz-matrix:start -->\n(.*?)<!-- authz-matrix:end -->", text, re.S)
    assert m, "docs/security.md lacks the authz-matrix markers"
    assert m.group(1) == matrix_markdown(), "docs/security.md's matrix is stale: paste security_kit.matrix_markdown()"
