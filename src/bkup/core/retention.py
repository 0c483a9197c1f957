"""Retention policies and the pure function that decides which file versions they keep.

Vocabulary: a **policy** is a set of keep rules (all optional counts; an
unset rule keeps nothing by itself). A **version span** is one version of a
path seen as a period of time, from the start of the run that opened it up to
the start of the run that closed it (DESIGN.md §2: "as of time T" is "as of
the last run that started at or before T"). `apply_policy` returns a
**decision**: which versions to keep, which to remove, and why. It does no
I/O; docs/retention.md gives the semantics with worked examples.

A version is kept if any rule keeps it (a union):

- the current version of a live path: always;
- `keep_versions` N: the N newest versions of each path. For a deleted path
  this holds until `keep_deleted_days` have passed since the deletion (when
  that rule is set), so deleted files do not live forever by count alone;
- `keep_days` D: every version that was current at some moment of the last
  D days (the state as of any time in that window stays complete);
- `keep_daily/weekly/monthly` N: the version current at the end of each of
  the last N calendar days / ISO weeks / months, UTC; the current period
  counts as one and "ends" now;
- `keep_deleted_days` D: the last version of a deleted path, for D days
  after the deletion.

A policy that sets no rule at all removes nothing (the default: keep
everything).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from bkup.errors import UsageError

# --- calendar periods (UTC) --------------------------------------------------------------


def _floor_day(t: datetime) -> datetime:
    return t.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


@dataclass(frozen=True, slots=True)
class Period:
    """One kind of calendar period; boundaries are period starts (00:00 UTC)."""

    name: str  # "day", "week", "month"
    adjective: str  # "daily", "weekly", "monthly"

    def floor(self, t: datetime) -> datetime:
        """The start of the period holding `t` (the newest boundary at or before `t`)."""
        day = _floor_day(t)
        if self.name == "day":
            return day
        if self.name == "week":
            return day - timedelta(days=day.weekday())  # ISO weeks start on Monday
        return day.replace(day=1)

    def shift(self, boundary: datetime, k: int) -> datetime:
        """The boundary `k` periods after `boundary` (before, if k < 0); `boundary` must be a period start.

        Clamped to the first representable day: retention counts may reach
        further back than the calendar of `datetime`.
        """
        try:
            return self._shift(boundary, k)
        except (OverflowError, ValueError):
            return EARLIEST if k < 0 else LATEST

    def _shift(self, boundary: datetime, k: int) -> datetime:
        if self.name == "day":
            return boundary + timedelta(days=k)
        if self.name == "week":
            return boundary + timedelta(weeks=k)
        months = boundary.year * 12 + (boundary.month - 1) + k
        return boundary.replace(year=months // 12, month=months % 12 + 1, day=1)

    def label(self, start: datetime) -> str:
        """A human name of the period starting at `start`: 2026-11-27, week 2026-W48, month 2026-11."""
        if self.name == "day":
            return f"day {start:%Y-%m-%d}"
        if self.name == "week":
            year, week, _ = start.isocalendar()
            return f"week {year}-W{week:02d}"
        return f"month {start:%Y-%m}"


EARLIEST = datetime(1, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 12, 1, tzinfo=UTC)

DAY = Period("day", "daily")
WEEK = Period("week", "weekly")
MONTH = Period("month", "monthly")


# --- policies -------------------------------------------------------------------------

# Beyond any sensible retention (~2,700 years of days) and far from datetime's limits.
MAX_VALUE = 1_000_000


class PolicyError(UsageError):
    """A policy that is not a mapping of known fields to non-negative integers (names the field)."""

    def __init__(self, field: str | None, message: str) -> None:
        self.field = field
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class Policy:
    """Keep rules; None means the rule is not set. Parse untrusted input with `Policy.parse`."""

    keep_versions: int | None = None
    keep_days: int | None = None
    keep_daily: int | None = None
    keep_weekly: int | None = None
    keep_monthly: int | None = None
    keep_deleted_days: int | None = None

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def parse(cls, data: Mapping[str, Any] | None) -> Policy:
        """A policy from JSON-like data; null or a missing field leaves the rule unset.

        Raises PolicyError naming the field for unknown fields and for values
        that are not integers (booleans and floats included) from 0 to MAX_VALUE.
        """
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise PolicyError(None, f"a policy is a JSON object of keep rules, not {type(data).__name__}")
        known = cls.field_names()
        for name in data:
            if name not in known:
                raise PolicyError(str(name), f"unknown policy field {name!r}: use {', '.join(known)}")
        values: dict[str, int | None] = {}
        for name in known:
            value = data.get(name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise PolicyError(name, f"policy field {name!r} must be a whole number, not {value!r:.40}")
            if value < 0:
                raise PolicyError(name, f"policy field {name!r} must not be negative (got {value})")
            if value > MAX_VALUE:
                raise PolicyError(name, f"policy field {name!r} must be at most {MAX_VALUE} (got {value})")
            values[name] = value
        return cls(**values)

    def to_dict(self) -> dict[str, int]:
        """The set rules only (the stored and wire form)."""
        return {f: v for f in self.field_names() if (v := getattr(self, f)) is not None}

    @property
    def is_empty(self) -> bool:
        return not self.to_dict()

    def describe(self) -> str:
        """The policy in words, e.g. "keep the 10 newest versions of each path; …"."""
        if self.is_empty:
            return "keep every version (no retention rule set)"
        parts = ["keep the current version of every path"]
        if self.keep_versions is not None:
            parts.append(f"the {_count(self.keep_versions, 'newest version')} of each path")
        if self.keep_days is not None:
            parts.append(f"every version current in the last {_count(self.keep_days, 'day')}")
        for period, n in ((DAY, self.keep_daily), (WEEK, self.keep_weekly), (MONTH, self.keep_monthly)):
            if n is not None:
                parts.append(f"the version current at the end of each of the last {_count(n, period.name)}")
        if self.keep_deleted_days is not None:
            parts.append(f"the last version of a deleted path for {_count(self.keep_deleted_days, 'day')} after deletion")
            if self.keep_versions is not None:
                parts.append(f"a deleted path's newest versions only for those {self.keep_deleted_days} days")
        return "; ".join(parts)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def merge(user_policy: Policy, client_override: Policy | None) -> Policy:
    """The effective policy of a client: each rule the client sets replaces the user's."""
    if client_override is None:
        return user_policy
    return replace(user_policy, **client_override.to_dict())


@dataclass(frozen=True, slots=True)
class VersionSpan:
    """One version as the policy sees it: a period of time on one path."""

    id: int
    path: str
    valid_from_time: datetime  # start of the run that opened it
    valid_to_time: datetime | None  # start of the run that closed it; None while current
    is_current: bool
    path_deleted_at: datetime | None = None  # when the path's last version was closed (deleted paths only)


@dataclass(frozen=True, slots=True)
class Decision:
    keep: frozenset[int]
    remove: frozenset[int]
    reasons: dict[int, list[str]]  # every id: why it is kept, or why it goes


def apply_policy(versions: Iterable[VersionSpan], policy: Policy, now: datetime) -> Decision:
    """Decide per version: kept if any rule keeps it, removed otherwise (see the module docstring)."""
    now = _aware(now)
    by_path: dict[str, list[VersionSpan]] = defaultdict(list)
    for v in versions:
        by_path[v.path].append(v)
    reasons: dict[int, list[str]] = {}
    keep: set[int] = set()
    remove: set[int] = set()
    for spans in by_path.values():
        spans.sort(key=lambda v: _aware(v.valid_from_time), reverse=True)  # newest first
        deleted_at = _deleted_at(spans)
        for rank, v in enumerate(spans, start=1):
            why = _reasons(v, rank, deleted_at, policy, now)
            if why:
                keep.add(v.id)
                reasons[v.id] = why
            else:
                remove.add(v.id)
                reasons[v.id] = [_removal_reason(v, rank, len(spans), deleted_at)]
    return Decision(keep=frozenset(keep), remove=frozenset(remove), reasons=reasons)


def _aware(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def _days_before(now: datetime, days: int) -> datetime:
    try:
        return now - timedelta(days=days)
    except OverflowError:
        return EARLIEST


def _deleted_at(spans: list[VersionSpan]) -> datetime | None:
    """When the path was deleted (no current version), else None."""
    if any(v.is_current or v.valid_to_time is None for v in spans):
        return None
    given = [v.path_deleted_at for v in spans if v.path_deleted_at is not None]
    if given:
        return _aware(max(given, key=_aware))
    return max(_aware(v.valid_to_time) for v in spans if v.valid_to_time is not None)


def _reasons(
    v: VersionSpan, rank: int, deleted_at: datetime | None, p: Policy, now: datetime
) -> list[str]:
    if p.is_empty:
        return ["no retention rule set"]
    start = _aware(v.valid_from_time)
    end = None if v.valid_to_time is None else _aware(v.valid_to_time)
    why: list[str] = []
    if v.is_current or end is None:
        why.append("current version")
    deletion_window_open = True
    if deleted_at is not None and p.keep_deleted_days is not None:
        deletion_window_open = now - deleted_at <= timedelta(days=p.keep_deleted_days)
    if p.keep_versions is not None and rank <= p.keep_versions and deletion_window_open:
        why.append(f"one of the {p.keep_versions} newest versions (#{rank})")
    if p.keep_days is not None and (end is None or end > _days_before(now, p.keep_days)):
        why.append(f"current within the last {p.keep_days} days")
    for period, n in ((DAY, p.keep_daily), (WEEK, p.keep_weekly), (MONTH, p.keep_monthly)):
        if n:
            reason = _period_kept(period, n, start, end, now)
            if reason is not None:
                why.append(f"{period.adjective}: {reason}")
    if (
        deleted_at is not None
        and p.keep_deleted_days is not None
        and rank == 1
        and deletion_window_open
    ):
        why.append(f"last version of a path deleted {deleted_at:%Y-%m-%d %H:%M} UTC, kept {p.keep_deleted_days} days")
    return why


def _period_kept(period: Period, n: int, start: datetime, end: datetime | None, now: datetime) -> str | None:
    """Why the version is kept for the newest of the last `n` periods whose end it was current at; else None.

    The end of a past period is the next period's start B, and a version was
    current "at the end" when start < B <= end. The current period ends now.
    """
    if start <= now and (end is None or end > now):
        return f"current now (this {period.name})"
    if n < 2:
        return None
    current_start = period.floor(now)  # the newest past boundary
    oldest = period.shift(current_start, -(n - 2))  # boundary ending the oldest past period counted
    # The newest boundary B with start < B <= min(end, current_start).
    limit = current_start if end is None else min(end, current_start)
    boundary = period.floor(limit)
    if boundary <= start or boundary < oldest:
        return None
    return f"current at the end of {period.label(period.shift(boundary, -1))}"


def _removal_reason(v: VersionSpan, rank: int, total: int, deleted_at: datetime | None) -> str:
    until = "now" if v.valid_to_time is None else f"{_aware(v.valid_to_time):%Y-%m-%d %H:%M} UTC"
    where = f"version {rank} of {total} (newest first), current until {until}"
    if deleted_at is not None:
        where += f"; path deleted {deleted_at:%Y-%m-%d %H:%M} UTC"
    return f"no rule keeps it: {where}"
