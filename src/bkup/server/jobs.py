"""The server's periodic jobs, registered and started with the app (each runs on one replica: server.leader).

| job | every | what |
|---|---|---|
| `missed_schedules` | `alert_check_interval` | raise `schedule_missed` for clients whose backup is late (server.alerts) |
| `runs_sweep` | `run_stale_after`, first at start | mark runs whose agent went silent as failed; write missing run manifests (server.manifests) |
| `gc` | `gc_interval` | collect garbage: unreferenced chunks and contents, pack rewrites, retired packs (server.gc) |

Add a job with one `run_periodic` line in `start`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bkup.server import alerts, gc, maintenance, manifests
from bkup.server.leader import run_periodic

if TYPE_CHECKING:
    from bkup.server.context import ServerContext

# The first missed-schedule check comes soon after start (not a whole interval later).
FIRST_CHECK_S = 60.0


def start(ctx: ServerContext) -> None:
    s = ctx.settings
    if not ctx.scheduler.jobs:
        run_periodic(ctx, "missed_schedules", s.alert_check_interval, alerts.check_missed_schedules,
                     first_delay=min(FIRST_CHECK_S, s.alert_check_interval))
        # A restart may follow a crash: sweep abandoned runs and write missing manifests at once.
        run_periodic(ctx, "runs_sweep", s.run_stale_after, manifests.sweep_runs, first_delay=0)
        run_periodic(ctx, "gc", s.gc_interval, scheduled_gc)
    ctx.scheduler.start()


def scheduled_gc(ctx: ServerContext) -> gc.GcReport:
    return maintenance.recorded(ctx, "gc", "schedule", lambda: gc.collect(ctx))


def stop(ctx: ServerContext) -> None:
    ctx.scheduler.stop()
