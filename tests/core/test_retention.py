"""Retention policies: parsing, merging, wording, and apply_policy as table cases and golden files."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bkup.core.retention import DAY, MAX_VALUE, MONTH, WEEK, Policy, PolicyError, VersionSpan, apply_policy, merge
from bkup.errors import UsageError

GOLDEN = Path(__file__).parent / "golden"
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)  # a Saturday


def t(month: int, day: int, hour: int = 0) -> datetime:
    return datetime(2026, month, day, hour, tzinfo=UTC)


def history(path: str, *starts: datetime, end: datetime | None = None, first_id: int = 1) -> list[VersionSpan]:
    """Consecutive versions of one path starting at `starts`; the last is current unless `end` (a deletion)."""
    spans = []
    for i, start in enumerate(starts):
        to = starts[i + 1] if i + 1 < len(starts) else end
        spans.append(VersionSpan(first_id + i, path, start, to, to is None, end if end is not None else None))
    return spans


# --- parsing, merging, wording -----------------------------------------------------


def test_parse_accepts_known_fields_and_nulls():
    p = Policy.parse({"keep_versions": 10, "keep_days": 30, "keep_daily": None})
    assert p == Policy(keep_versions=10, keep_days=30)
    assert p.to_dict() == {"keep_versions": 10, "keep_days": 30}
    assert Policy.parse(None) == Policy() == Policy.parse({})
    assert Policy.parse({"keep_monthly": 0}).keep_monthly == 0


@pytest.mark.parametrize(
    "data, field, words",
    [
        ({"keep_versions": -1}, "keep_versions", "negative"),
        ({"keep_days": 1.5}, "keep_days", "whole number"),
        ({"keep_days": 2.0}, "keep_days", "whole number"),
        ({"keep_daily": True}, "keep_daily", "whole number"),
        ({"keep_weekly": "3"}, "keep_weekly", "whole number"),
        ({"keep_monthly": [1]}, "keep_monthly", "whole number"),
        ({"keep_deleted_days": MAX_VALUE + 1}, "keep_deleted_days", "at most"),
        ({"keep_forever": 1}, "keep_forever", "unknown policy field"),
    ],
)
def test_parse_refuses_bad_values_naming_the_field(data, field, words):
    with pytest.raises(PolicyError) as err:
        Policy.parse(data)
    assert err.value.field == field
    assert f"'{field}'" in str(err.value) and words in str(err.value)
    assert isinstance(err.value, UsageError)


def test_parse_refuses_a_non_object():
    with pytest.raises(PolicyError, match="JSON object"):
        Policy.parse([1, 2])  # type: ignore[arg-type]


def test_merge_lets_the_client_override_rule_by_rule():
    user = Policy(keep_versions=10, keep_days=30)
    assert merge(user, None) == user
    assert merge(user, Policy(keep_days=7, keep_monthly=12)) == Policy(keep_versions=10, keep_days=7, keep_monthly=12)
    assert merge(user, Policy()) == user


def test_describe():
    assert Policy().describe() == "keep every version (no retention rule set)"
    text = Policy(keep_versions=10, keep_days=30, keep_weekly=1, keep_deleted_days=90).describe()
    assert text == (
        "keep the current version of every path; the 10 newest versions of each path; "
        "every version current in the last 30 days; "
        "the version current at the end of each of the last 1 week; "
        "the last version of a deleted path for 90 days after deletion; "
        "a deleted path's newest versions only for those 90 days"
    )


def test_periods():
    assert DAY.floor(NOW) == t(11, 28)
    assert WEEK.floor(NOW) == t(11, 23)  # Monday
    assert MONTH.floor(NOW) == t(11, 1)
    assert MONTH.shift(t(1, 1), -1) == datetime(2025, 12, 1, tzinfo=UTC)
    assert WEEK.label(t(11, 23)) == "week 2026-W48"
    assert MONTH.shift(t(11, 1), -MAX_VALUE).year == 1  # clamped, no error


# --- apply_policy: table cases ------------------------------------------------------


def kept(spans, policy, now=NOW) -> set[int]:
    d = apply_policy(spans, policy, now)
    assert d.keep | d.remove == {s.id for s in spans} and not d.keep & d.remove
    assert set(d.reasons) == {s.id for s in spans}
    return set(d.keep)


FOUR = history("/a", t(11, 1), t(11, 10), t(11, 20), t(11, 25))  # ids 1..4, 4 is current

CASES = {
    "no rule keeps everything": (FOUR, Policy(), {1, 2, 3, 4}),
    "keep_versions 2": (FOUR, Policy(keep_versions=2), {3, 4}),
    "keep_versions 0 still keeps the current one": (FOUR, Policy(keep_versions=0), {4}),
    "keep_days 7 keeps what was current since Nov 21 noon": (FOUR, Policy(keep_days=7), {3, 4}),
    "keep_days 8 reaches back past Nov 20": (FOUR, Policy(keep_days=9), {2, 3, 4}),
    "keep_days 0 keeps only now": (FOUR, Policy(keep_days=0), {4}),
    "union of rules": (FOUR, Policy(keep_versions=1, keep_days=9), {2, 3, 4}),
    "daily 3": (
        history("/d", t(11, 1), t(11, 26, 10), t(11, 26, 20), t(11, 27, 6), t(11, 28)),
        Policy(keep_daily=3),
        {3, 4, 5},  # 3 was current at the end of Nov 26, 4 at the end of Nov 27 (closed exactly at midnight)
    ),
    "daily 1 is only the current day": (FOUR, Policy(keep_daily=1), {4}),
    "weekly 2": (history("/w", t(11, 1), t(11, 10), t(11, 24)), Policy(keep_weekly=2), {2, 3}),
    "monthly 3": (
        history("/m", t(8, 15), t(9, 15), t(10, 5), t(11, 3), t(11, 20)),
        Policy(keep_monthly=3),
        {2, 3, 5},  # end of September: 2; end of October: 3; now: 5
    ),
    "monthly reaches across a year": (
        history("/y", datetime(2025, 12, 20, tzinfo=UTC), t(1, 10), t(11, 1)),
        Policy(keep_monthly=12),
        {1, 2, 3},  # end of Dec 2025: 1; end of Jan..Oct 2026: 2; now: 3
    ),
    "deleted 13 days ago, keep_deleted_days 30": (
        history("/gone", t(10, 1), t(10, 5), end=t(11, 15)),
        Policy(keep_deleted_days=30),
        {2},
    ),
    "deleted 49 days ago, keep_deleted_days 30": (
        history("/gone", t(9, 1), t(9, 5), end=t(10, 10)),
        Policy(keep_deleted_days=30),
        set(),
    ),
    "keep_versions holds a deleted path only inside keep_deleted_days": (
        history("/gone", t(9, 1), t(9, 5), end=t(10, 10)),
        Policy(keep_versions=3, keep_deleted_days=30),
        set(),
    ),
    "keep_versions with a recent deletion": (
        history("/gone", t(10, 1), t(10, 5), end=t(11, 15)),
        Policy(keep_versions=3, keep_deleted_days=30),
        {1, 2},
    ),
    "keep_versions alone keeps deleted paths": (
        history("/gone", t(9, 1), t(9, 5), end=t(10, 10)),
        Policy(keep_versions=1),
        {2},
    ),
    "keep_days covers a recent deletion": (
        history("/gone", t(10, 1), t(10, 5), end=t(11, 25)),
        Policy(keep_days=7),
        {2},
    ),
    "keep_deleted_days does not touch live paths' current version": (FOUR, Policy(keep_deleted_days=30), {4}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_apply_policy_table(name):
    spans, policy, expected = CASES[name]
    assert kept(spans, policy) == expected


def test_paths_are_independent_and_reasons_say_why():
    spans = history("/a", t(11, 1), t(11, 20)) + history("/b", t(11, 2), t(11, 3), t(11, 4), first_id=10)
    d = apply_policy(spans, Policy(keep_versions=2), NOW)
    assert d.keep == {1, 2, 11, 12} and d.remove == {10}
    assert d.reasons[2] == ["current version", "one of the 2 newest versions (#1)"]
    assert d.reasons[11] == ["one of the 2 newest versions (#2)"]
    assert d.reasons[10][0].startswith("no rule keeps it: version 3 of 3 (newest first), current until 2026-11-03")


def test_gfs_reasons_name_the_period():
    spans = history("/f", t(10, 30), t(11, 26, 20), t(11, 27, 6))
    d = apply_policy(spans, Policy(keep_daily=3, keep_monthly=2), NOW)
    assert "daily: current at the end of day 2026-11-26" in d.reasons[2]
    assert "monthly: current at the end of month 2026-10" in d.reasons[1]


def test_naive_times_are_utc_and_order_does_not_matter():
    spans = history("/a", t(11, 1), t(11, 10), t(11, 20), t(11, 25))
    naive = [VersionSpan(s.id, s.path, s.valid_from_time.replace(tzinfo=None),
                         s.valid_to_time and s.valid_to_time.replace(tzinfo=None), s.is_current) for s in reversed(spans)]
    assert kept(naive, Policy(keep_days=7), NOW.replace(tzinfo=None)) == {3, 4}


def test_huge_counts_are_fine():
    p = Policy(keep_versions=MAX_VALUE, keep_days=MAX_VALUE, keep_daily=MAX_VALUE, keep_weekly=MAX_VALUE, keep_monthly=MAX_VALUE)
    spans = history("/a", datetime(1990, 1, 1, tzinfo=UTC), t(11, 25))
    assert kept(spans, p) == {1, 2}
    assert kept(spans, Policy(keep_monthly=MAX_VALUE)) == {1, 2}


# --- golden files -------------------------------------------------------------------


def _dt(s: str | None) -> datetime | None:
    return None if s is None else datetime.fromisoformat(s)


def _load_case(path: Path) -> tuple[dict, list[VersionSpan]]:
    case = json.loads(path.read_text())
    spans = []
    for v in case["versions"]:
        spans.append(VersionSpan(v["id"], v["path"], _dt(v["from"]), _dt(v["to"]), v["to"] is None, _dt(v.get("deleted_at"))))
    return case, spans


GOLDEN_FILES = sorted(GOLDEN.glob("*.json"))


@pytest.mark.parametrize("path", GOLDEN_FILES, ids=[p.stem for p in GOLDEN_FILES])
def test_golden(path: Path):
    case, spans = _load_case(path)
    d = apply_policy(spans, Policy.parse(case["policy"]), datetime.fromisoformat(case["now"]))
    got = {
        "describe": Policy.parse(case["policy"]).describe(),
        "keep": sorted(d.keep),
        "remove": sorted(d.remove),
        "reasons": {str(k): d.reasons[k] for k in sorted(d.reasons)},
    }
    if os.environ.get("BKUP_UPDATE_GOLDEN"):
        case["expected"] = got
        path.write_text(json.dumps(case, indent=1, ensure_ascii=False) + "\n")
    assert got == case["expected"]


def test_golden_files_exist():
    assert len(GOLDEN_FILES) >= 3
