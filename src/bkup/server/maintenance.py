"""Maintenance runs (prune, GC, check, run sweep) recorded in the catalog, so every replica shows the last ones."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TypeVar

from sqlmodel import select

from bkup.catalog.models import MaintenanceRun
from bkup.errors import Conflict
from bkup.server.context import ServerContext

log = logging.getLogger("bkup.server.maintenance")

ACTIONS = ("prune", "gc", "check", "runs_sweep")
MAX_SUMMARY = 4000
T = TypeVar("T")


def _summary(result: object) -> tuple[str, bool]:
    summary = getattr(result, "summary", None)
    text = summary() if callable(summary) else "done"
    ok = bool(getattr(result, "ok", True)) and not getattr(result, "errors", None)
    return text, ok


def begin(ctx: ServerContext, action: str, trigger: str, *, exclusive: bool = False) -> int:
    """Record that `action` started; with `exclusive`, refuse if one is already running (Conflict)."""
    with ctx.catalog.session() as s:
        if exclusive:
            running = s.exec(
                select(MaintenanceRun).where(MaintenanceRun.action == action, MaintenanceRun.finished_at.is_(None))
            ).first()
            if running is not None:
                raise Conflict(f"{action} is already running (started {running.started_at:%Y-%m-%d %H:%M:%S} UTC by {running.trigger})")
        row = MaintenanceRun(action=action, trigger=trigger[:200], started_at=datetime.now(UTC), summary="")
        s.add(row)
        s.commit()
        return row.id


def end(ctx: ServerContext, run_id: int, *, ok: bool, summary: str) -> None:
    with ctx.catalog.session() as s:
        row = s.get(MaintenanceRun, run_id)
        if row is not None:
            row.finished_at, row.ok, row.summary = datetime.now(UTC), ok, summary[:MAX_SUMMARY]
            s.add(row)
            s.commit()


def recorded(ctx: ServerContext, action: str, trigger: str, fn: Callable[[], T], *, run_id: int | None = None) -> T:
    """Run `fn`, recording its start, outcome and summary (`result.summary()`, `.ok`, `.errors`)."""
    run_id = run_id if run_id is not None else begin(ctx, action, trigger)
    try:
        result = fn()
    except Exception as exc:
        end(ctx, run_id, ok=False, summary=f"failed: {exc}")
        raise
    text, ok = _summary(result)
    end(ctx, run_id, ok=ok, summary=text)
    return result


def last_runs(ctx: ServerContext) -> dict[str, MaintenanceRun | None]:
    """The latest run of each action, on any replica."""
    with ctx.catalog.session() as s:
        return {
            a: s.exec(
                select(MaintenanceRun).where(MaintenanceRun.action == a).order_by(MaintenanceRun.started_at.desc()).limit(1)
            ).first()
            for a in ACTIONS
        }
