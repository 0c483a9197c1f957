"""Retention policies and maintenance (prune, GC, check) as the pages use them: form parsing and background runs.

The work itself is the server's (`server.policies`, `server.prune`,
`server.gc`, `server.check`); this module only turns a form into a `Policy`
and runs a maintenance job off the request, so a long GC never times out a
page. The outcome of a job started here is kept in this process (the page
says so): with several replicas, each shows the jobs started on it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bkup.core.retention import Policy
from bkup.errors import UsageError
from bkup.server import check, gc, maintenance, policies, prune
from bkup.server.context import ServerContext
from bkup.server.principal import Principal, require_admin

log = logging.getLogger("bkup.web")

FIELDS = Policy.field_names()

ACTIONS: dict[str, tuple[str, Callable[[ServerContext, Principal], Any]]] = {
    "prune": ("Prune", lambda ctx, me: prune.prune(ctx, me)),
    "gc": ("Garbage collection", lambda ctx, me: gc.collect(ctx, me)),
    "check": ("Check", lambda ctx, me: check.check(ctx, me)),
}

get_user_policy = policies.get_user_policy
set_user_policy = policies.set_user_policy
get_client_policy = policies.get_client_policy
set_client_policy = policies.set_client_policy


def policy_from_form(form: dict[str, Any]) -> Policy:
    """One number field per rule; blank leaves the rule unset. PolicyError names a bad field."""
    data: dict[str, int] = {}
    for name in FIELDS:
        raw = form.get(name, "")
        raw = str((raw[-1] if raw else "") if isinstance(raw, list) else raw).strip()
        if not raw:
            continue
        try:
            data[name] = int(raw)
        except ValueError:
            raise UsageError(f"{name.replace('_', ' ')}: {raw!r} is not a whole number") from None
    return Policy.parse(data)


# --- maintenance jobs started from the server page ------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """A maintenance run as the server page shows it (from the catalog: any replica's runs)."""

    action: str
    label: str
    started_at: datetime
    started_by: str
    finished_at: datetime | None = None
    ok: bool | None = None
    summary: str = ""

    @property
    def running(self) -> bool:
        return self.finished_at is None


def _who(trigger: str) -> str:
    if trigger.startswith("web:"):
        return trigger[4:]
    return {"cli": "the command line", "schedule": "the schedule"}.get(trigger, trigger)


def _job(row: Any) -> Job:
    return Job(
        action=row.action, label=ACTIONS[row.action][0], started_at=row.started_at, started_by=_who(row.trigger),
        finished_at=row.finished_at, ok=row.ok, summary=row.summary,
    )


def jobs(ctx: ServerContext) -> dict[str, Job | None]:
    """The last run of each action, whichever replica ran it and however it was started (None: never)."""
    last = maintenance.last_runs(ctx)
    return {a: _job(last[a]) if last.get(a) else None for a in ACTIONS}


def start_job(ctx: ServerContext, me: Principal, action: str) -> Job:
    """Start prune, GC or check in a background thread (admin only; not while one of the same kind runs)."""
    require_admin(me)
    if action not in ACTIONS:
        raise UsageError(f"unknown action {action!r}: one of {', '.join(ACTIONS)}")
    label, fn = ACTIONS[action]
    trigger = f"web:{me.user_name}"
    run_id = maintenance.begin(ctx, action, trigger, exclusive=True)

    def work() -> None:
        try:
            maintenance.recorded(ctx, action, trigger, lambda: fn(ctx, me), run_id=run_id)
        except Exception:  # recorded as failed; the log has the trace
            log.exception("%s started from the web UI failed", label)

    threading.Thread(target=work, name=f"bkup-web-{action}", daemon=True).start()
    return Job(action=action, label=label, started_at=datetime.now(UTC), started_by=me.user_name)
