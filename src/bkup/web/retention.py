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
from bkup.errors import Conflict, UsageError
from bkup.server import check, gc, policies, prune
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


@dataclass
class Job:
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


_jobs: dict[tuple[int, str], Job] = {}
_lock = threading.Lock()


def jobs(ctx: ServerContext) -> dict[str, Job | None]:
    """The last job of each action started on this replica (None: none yet)."""
    with _lock:
        return {a: _jobs.get((id(ctx), a)) for a in ACTIONS}


def start_job(ctx: ServerContext, me: Principal, action: str) -> Job:
    """Start prune, GC or check in a background thread (admin only; one of each at a time per replica)."""
    require_admin(me)
    if action not in ACTIONS:
        raise UsageError(f"unknown action {action!r}: one of {', '.join(ACTIONS)}")
    label, fn = ACTIONS[action]
    key = (id(ctx), action)
    with _lock:
        current = _jobs.get(key)
        if current is not None and current.running:
            raise Conflict(f"{label} is already running (started {current.started_at:%H:%M:%S} UTC)")
        job = _jobs[key] = Job(action=action, label=label, started_at=datetime.now(UTC), started_by=me.user_name)

    def work() -> None:
        try:
            result = fn(ctx, me)
            summary = getattr(result, "summary", None)
            text = summary() if callable(summary) else "done"
            ok = bool(getattr(result, "ok", True)) and not getattr(result, "errors", None)
        except Exception as exc:  # the page shows it; the log has the trace
            log.exception("%s started from the web UI failed", label)
            text, ok = f"failed: {exc}", False
        with _lock:
            job.summary, job.ok, job.finished_at = text, ok, datetime.now(UTC)

    threading.Thread(target=work, name=f"bkup-web-{action}", daemon=True).start()
    return job
