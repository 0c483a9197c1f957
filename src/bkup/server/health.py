"""Liveness and readiness: /healthz says the process answers, /readyz that its database and storage do.

A load balancer sends traffic to a replica only while /readyz is 200; an
orchestrator restarts a replica whose /healthz stops answering. Both are
cheap and unauthenticated: /readyz runs `SELECT 1` and lists `keys/` in storage,
each bounded by `PROBE_TIMEOUT_S`, and names the part that failed (without
URLs or credentials).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import anyio
from litestar import Request, Response, get
from sqlalchemy import text

if TYPE_CHECKING:
    from bkup.server.context import ServerContext

log = logging.getLogger("bkup.server.health")

PROBE_TIMEOUT_S = 5.0
# The smallest listing the store has (one object per user). A lookup of a single key
# is not enough: S3 answers "no such key" for a bucket that does not exist.
PROBE_PREFIX = "keys"


def check_database(ctx: ServerContext) -> None:
    with ctx.catalog.engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def check_storage(ctx: ServerContext) -> None:
    for _ in ctx.store.list(PROBE_PREFIX):
        break


async def _probe(name: str, fn: Callable[[], None]) -> str:
    try:
        with anyio.fail_after(PROBE_TIMEOUT_S):
            await anyio.to_thread.run_sync(fn, abandon_on_cancel=True)
    except TimeoutError:
        log.warning("readyz: %s did not answer within %.0f s", name, PROBE_TIMEOUT_S)
        return f"timeout after {PROBE_TIMEOUT_S:.0f} s"
    except Exception as e:
        log.warning("readyz: %s failed: %s", name, e)
        return f"error: {type(e).__name__}"
    return "ok"


@get("/readyz", include_in_schema=False)
async def readyz(request: Request) -> Response:
    ctx: ServerContext = request.app.state.ctx
    checks = {
        "database": await _probe("database", lambda: check_database(ctx)),
        "storage": await _probe("storage", lambda: check_storage(ctx)),
    }
    ready = all(v == "ok" for v in checks.values())
    return Response({"status": "ready" if ready else "unready", **checks}, status_code=200 if ready else 503)
