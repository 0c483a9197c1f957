"""Prune: after each run for the paths it changed, and `prune` for everything: exactly the plan, with manifests and freed bytes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from litestar.testing import TestClient
from retention_kit import all_listings, fast_passwords, make_agent, make_ctx, make_settings, rand  # noqa: F401 - fast_passwords is a fixture

from bkup.catalog import queries
from bkup.core.retention import Policy
from bkup.errors import Forbidden, NotFound, UsageError
from bkup.server import manifests, policies, prune
from bkup.server.accounts import admin_principal
from bkup.server.app import create_app

pytestmark = pytest.mark.usefixtures("fast_passwords")
BOTH_DATABASES = pytest.mark.parametrize("ctx", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture
def ctx(request, tmp_path):
    settings = make_settings(tmp_path)
    url = None if getattr(request, "param", "sqlite") == "sqlite" else request.getfixturevalue("pg_url")
    context = make_ctx(settings, url)
    yield context
    context.close()


@pytest.fixture
def http(ctx):
    with TestClient(app=create_app(ctx.settings, context=ctx)) as client:
        yield client


def history(ctx, client_id, path):
    with ctx.catalog.session() as s:
        return [(v.valid_from, v.valid_to) for v in queries.history(s, client_id, path)]


def set_user_policy(ctx, name, **rules):
    me = admin_principal(ctx, name)
    policies.set_user_policy(ctx, me, me.user_id, Policy(**rules))


@BOTH_DATABASES
def test_a_finished_run_prunes_the_paths_it_changed(ctx, http):
    alice = make_agent(ctx, http, "alice")
    set_user_policy(ctx, "alice", keep_versions=2)
    for i in range(4):
        alice.backup({"/f": rand(1000, i), "/g": b"same"})
    assert history(ctx, alice.client_id, "/f") == [(4, None), (3, 4)]
    assert history(ctx, alice.client_id, "/g") == [(1, None)]
    names = manifests.list_manifests(ctx)[alice.client_id]
    assert {"1", "2", "3", "4"} <= set(names)
    prunes = [n for n in names if n.startswith("prune-")]
    assert len(prunes) == 2  # runs 3 and 4 each removed one version of /f
    ops = [r for n in sorted(prunes) for r in list(manifests.read_manifest(ctx, alice.client_id, n))[1:]]
    assert sorted((r["path"], r["valid_from"], r["valid_to"]) for r in ops) == [("/f", 1, 2), ("/f", 2, 3)]


def test_no_policy_removes_nothing(ctx, http):
    alice = make_agent(ctx, http, "alice")
    for i in range(3):
        alice.backup({"/f": rand(100, i)})
    assert len(history(ctx, alice.client_id, "/f")) == 3
    result = prune.prune(ctx)
    assert result.removed == 0 and result.plan.clients[0].examined == 3


@BOTH_DATABASES
def test_dry_run_plan_is_exactly_what_a_real_run_removes(ctx, http):
    alice = make_agent(ctx, http, "alice")
    bob = make_agent(ctx, http, "bob")
    for i in range(3):
        alice.backup({"/a": rand(300_000, i), "/b": rand(50, 10 + i), "/shared": b"x" * 100})
        bob.backup({"/c": rand(200, 20 + i)})
    # Policies set afterwards: the run-time prune had nothing to do; `bkup prune` has.
    set_user_policy(ctx, "alice", keep_versions=1)
    set_user_policy(ctx, "bob", keep_versions=2)
    before = all_listings(ctx, alice.client_id)

    dry = prune.prune(ctx, dry_run=True)
    assert dry.dry_run and dry.removed == 0
    planned = {(c.client_name, r.path, r.valid_from) for c in dry.plan.clients for r in c.removals}
    assert planned == {("alice-pc", "/a", 1), ("alice-pc", "/a", 2), ("alice-pc", "/b", 1), ("alice-pc", "/b", 2),
                       ("bob-pc", "/c", 1)}
    assert all_listings(ctx, alice.client_id) == before  # nothing changed
    # Freed: the four unique old bodies of alice (/a is one 300 kB chunk, /b 50 bytes), plus bob's first /c.
    assert dry.plan.freed.chunks == 5
    assert dry.plan.freed.raw_bytes == 2 * 300_000 + 2 * 50 + 200
    assert dry.plan.freed.stored_bytes >= dry.plan.freed.raw_bytes  # incompressible: sealed blobs are a bit larger

    real = prune.prune(ctx, gc=False)
    assert {(c.client_name, r.path, r.valid_from) for c in real.plan.clients for r in c.removals} == planned
    assert real.removed == 5
    assert history(ctx, alice.client_id, "/a") == [(3, None)]
    assert history(ctx, bob.client_id, "/c") == [(3, None), (2, 3)]


def test_time_rules_use_run_start_times(ctx, http):
    alice = make_agent(ctx, http, "alice")
    for i in range(3):
        alice.backup({"/f": rand(100, i)}, deleted=["/gone"] if i == 2 else ())
        if i == 0:
            alice.backup({"/gone": b"bye"})
    set_user_policy(ctx, "alice", keep_days=5, keep_deleted_days=20)
    now = datetime.now(UTC)
    assert prune.plan(ctx, now=now + timedelta(days=4)).removal_count == 0
    later = prune.plan(ctx, now=now + timedelta(days=10))
    assert sorted((r.path, r.valid_from) for r in later.clients[0].removals) == [("/f", 1), ("/f", 3)]
    much_later = prune.plan(ctx, now=now + timedelta(days=30))
    assert ("/gone", 2) in {(r.path, r.valid_from) for r in much_later.clients[0].removals}


def test_client_override_and_scope(ctx, http):
    alice = make_agent(ctx, http, "alice")
    other = make_agent(ctx, http, "alice", "alice-laptop", create_user=False)
    for i in range(3):
        alice.backup({"/f": rand(100, i)})
        other.backup({"/f": rand(100, 50 + i)})
    set_user_policy(ctx, "alice", keep_versions=1)
    me = admin_principal(ctx, "alice")
    policies.set_client_policy(ctx, me, other.client_id, {"keep_versions": 2})
    plan = prune.plan(ctx, user="alice")
    assert {c.client_name: len(c.removals) for c in plan.clients} == {"alice-laptop": 1, "alice-pc": 2}
    only = prune.plan(ctx, client="alice-laptop")
    assert [c.client_name for c in only.clients] == ["alice-laptop"]


def test_unknown_user_or_client_touches_nothing(ctx, http):
    alice = make_agent(ctx, http, "alice")
    alice.backup({"/f": b"1"})
    alice.backup({"/f": b"2"})
    set_user_policy(ctx, "alice", keep_versions=1)
    with pytest.raises(NotFound, match="no user 'nobody'"):
        prune.prune(ctx, user="nobody")
    with pytest.raises(NotFound, match="no client 'nothing'"):
        prune.prune(ctx, client="nothing")
    make_agent(ctx, http, "carol")
    with pytest.raises(UsageError, match="does not belong"):
        prune.prune(ctx, user="carol", client="alice-pc")
    assert len(history(ctx, alice.client_id, "/f")) == 2
    assert not [n for n in manifests.list_manifests(ctx)[alice.client_id] if n.startswith("prune-")]


def test_prune_needs_an_admin(ctx, http):
    make_agent(ctx, http, "alice")
    me = admin_principal(ctx, "alice")
    with pytest.raises(Forbidden):
        prune.prune(ctx, me.__class__(user_id=me.user_id, user_name="alice", is_admin=False))


def test_a_failing_prune_never_fails_the_finish(ctx, http, monkeypatch, caplog):
    alice = make_agent(ctx, http, "alice")
    set_user_policy(ctx, "alice", keep_versions=1)
    alice.backup({"/f": b"1"})

    def boom(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(prune, "prune_after_run", boom)
    run = alice.backup({"/f": b"2"})
    assert run["status"] == "ok"
    assert "prune after run 2" in caplog.text
    assert len(history(ctx, alice.client_id, "/f")) == 2  # left for the next prune
