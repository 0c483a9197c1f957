"""Backup schedules: "every 30m" style intervals or 5-field cron expressions, and when the next run is due."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from croniter import croniter

from bkup.errors import UsageError

_EVERY = re.compile(r"^every\s+(\d+)\s*([smhd])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MIN_INTERVAL_S = 60


class ScheduleError(UsageError):
    pass


@dataclass(frozen=True)
class Schedule:
    text: str
    interval_s: int | None = None  # for "every N<unit>"
    cron: str | None = None

    @classmethod
    def parse(cls, text: str) -> Schedule:
        t = " ".join(text.strip().lower().split())
        m = _EVERY.match(t)
        if m:
            seconds = int(m.group(1)) * _UNIT[m.group(2)]
            if seconds < MIN_INTERVAL_S:
                raise ScheduleError(f"schedule {text!r}: the shortest interval is {MIN_INTERVAL_S // 60} minute")
            return cls(text=t, interval_s=seconds)
        if len(t.split()) == 5 and croniter.is_valid(t):
            return cls(text=t, cron=t)
        raise ScheduleError(
            f"schedule {text!r} is neither 'every N(m|h|d)' nor a valid 5-field cron expression (e.g. '0 3 * * *')"
        )

    def next_after(self, t: datetime) -> datetime:
        if self.interval_s is not None:
            return t + timedelta(seconds=self.interval_s)
        return croniter(self.cron, t).get_next(datetime)

    def period(self, around: datetime) -> timedelta:
        """The usual gap between two runs: how late is "late" for this schedule."""
        first = self.next_after(around)
        return self.next_after(first) - first
