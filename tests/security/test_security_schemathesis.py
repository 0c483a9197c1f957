"""Hostile input through the API contract: schemathesis generates requests from /schema/openapi.json against a live server.

Every operation is fuzzed with a token that may call it (an agent token for
the agent's routes, an admin's API token for the rest), half the time on
objects that exist. No answer may be a 5xx, and every answer must match the
schema (status code, content type, body). BKUP_FUZZ_EXAMPLES sets the examples
per operation (CI: 8; bench/fuzz_api.py runs the long variant).
"""

from __future__ import annotations

import os
from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks
from security_kit import cheap_passwords, live_world

EXAMPLES = int(os.environ.get("BKUP_FUZZ_EXAMPLES", "8"))
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
]
AGENT_PREFIXES = ("/api/v1/agent/", "/api/v1/runs", "/api/v1/chunks/missing")
STATS: Counter = Counter()


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    cheap_passwords()
    with live_world(tmp_path_factory.mktemp("fuzz")) as (w, url):
        yield w, url
    print(f"\nschemathesis: {STATS['cases']} cases, {STATS['5xx']} server errors, statuses {dict(STATS['status'] or {})}")


@pytest.fixture(scope="module")
def api_schema(live):
    _, url = live
    return schemathesis.openapi.from_url(f"{url}/schema/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


def _token_for(w, path: str, method: str) -> str:
    agent = path.startswith(AGENT_PREFIXES) or (path == "/api/v1/chunks" and method == "POST")
    return w.parties["A"].agent_token if agent else w.parties["admin"].token


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_no_server_errors_and_answers_match_the_schema(case, live):
    w, url = live
    a = w.parties["A"]
    # Random ids mostly miss: on every other example aim at objects that exist, so the handlers run in full.
    params = case.path_parameters or {}
    for name, real in (("client_id", a.client_id), ("user_id", a.user_id), ("run_id", a.run_id)):
        if name in params and isinstance(params[name], int) and params[name] % 2 == 0:
            params[name] = real
    token = _token_for(w, case.operation.path, case.method.upper())
    response = case.call(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    STATS["cases"] += 1
    STATS.setdefault("status", Counter())[response.status_code] += 1
    if response.status_code >= 500:
        STATS["5xx"] += 1
    if case.operation.path.endswith("/token") and response.status_code == 201 and response.json()["id"] == a.client_id:
        a.agent_token = response.json()["token"]  # the fuzzer rotated A's agent token: follow it
    case.validate_response(response, checks=CHECKS)
