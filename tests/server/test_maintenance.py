"""Maintenance runs are recorded in the catalog: the last prune/GC/check of any process is visible everywhere."""

from __future__ import annotations

import pytest

from bkup.errors import Conflict
from bkup.server import gc, jobs, maintenance
from bkup.server.check import check


def test_runs_are_recorded_with_outcome_and_summary(ctx, alice):
    assert maintenance.last_runs(ctx) == {"prune": None, "gc": None, "check": None, "runs_sweep": None}
    report = jobs.scheduled_gc(ctx)
    maintenance.recorded(ctx, "check", "cli", lambda: check(ctx))
    last = maintenance.last_runs(ctx)
    assert last["gc"].trigger == "schedule" and last["gc"].ok is True and last["gc"].summary == report.summary()
    assert last["check"].trigger == "cli" and last["check"].ok is True and last["check"].finished_at is not None


def test_a_failure_is_recorded_and_raised(ctx):
    def boom():
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        maintenance.recorded(ctx, "gc", "cli", boom)
    row = maintenance.last_runs(ctx)["gc"]
    assert row.ok is False and "disk on fire" in row.summary


def test_exclusive_start_refuses_a_second_run_of_the_same_kind(ctx):
    first = maintenance.begin(ctx, "gc", "web:root", exclusive=True)
    with pytest.raises(Conflict, match="already running"):
        maintenance.begin(ctx, "gc", "web:root", exclusive=True)
    maintenance.begin(ctx, "check", "web:root", exclusive=True)  # another kind may run
    maintenance.end(ctx, first, ok=True, summary="done")
    maintenance.recorded(ctx, "gc", "web:root", lambda: gc.collect(ctx), run_id=maintenance.begin(ctx, "gc", "web:root", exclusive=True))
