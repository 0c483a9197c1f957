"""Prune planning is pure: the plan names exactly the versions the policy removes, never a current one."""

from __future__ import annotations

from datetime import UTC, datetime

from bkup.core.prune import Freed, PrunableVersion, PruneTarget, plan_prune
from bkup.core.retention import Policy, VersionSpan

NOW = datetime(2026, 11, 28, 12, tzinfo=UTC)


def t(day: int) -> datetime:
    return datetime(2026, 11, day, tzinfo=UTC)


def version(id_: int, path: str, start: int, end: int | None, seq_from: int, seq_to: int | None) -> PrunableVersion:
    span = VersionSpan(id_, path, t(start), None if end is None else t(end), end is None)
    return PrunableVersion(span=span, valid_from=seq_from, valid_to=seq_to, size=10, content_id="c" * 64)


def target(policy: Policy, versions, name="pc", user="alice", client_id=1) -> PruneTarget:
    return PruneTarget(client_id=client_id, client_name=name, user_id=7, user_name=user, policy=policy, versions=versions)


VERSIONS = [version(1, "/a", 1, 5, 1, 2), version(2, "/a", 5, 10, 2, 3), version(3, "/a", 10, None, 3, None),
            version(4, "/b", 2, 3, 1, 2)]


def test_plan_lists_removals_with_reasons():
    plan = plan_prune([target(Policy(keep_versions=2), VERSIONS)], NOW)
    assert plan.removal_count == 1
    (client,) = plan.clients
    assert [(r.path, r.valid_from, r.valid_to) for r in client.removals] == [("/a", 1, 2)]
    assert client.removals[0].reasons[0].startswith("no rule keeps it")
    assert client.examined == 4
    d = plan.to_dict()
    assert d["removed"] == 1 and d["clients"][0]["kept"] == 3 and d["clients"][0]["policy"] == {"keep_versions": 2}


def test_empty_policy_plans_nothing():
    assert plan_prune([target(Policy(), VERSIONS)], NOW).removal_count == 0


def test_a_current_version_is_never_planned_even_if_spans_lie():
    liar = version(9, "/c", 1, 2, 1, None)  # span says closed, but the row is current (valid_to None)
    plan = plan_prune([target(Policy(keep_versions=0), [liar])], NOW)
    assert plan.removal_count == 0


def test_clients_are_ordered_and_freed_is_summed():
    plan = plan_prune([target(Policy(), [], name="z", client_id=2), target(Policy(), [], name="a")], NOW)
    assert [c.client_name for c in plan.clients] == ["a", "z"]
    plan = plan.with_freed({1: Freed(1, 100, 50), 2: Freed(2, 10, 5)})
    assert plan.freed == Freed(3, 110, 55)
    assert plan.to_dict()["freed_raw_bytes"] == 110


def test_naive_now_means_utc():
    assert plan_prune([], NOW.replace(tzinfo=None)).now == NOW
