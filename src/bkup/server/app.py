"""The litestar application factory: the composition root of the HTTP server."""

from __future__ import annotations

import logging

from litestar import Litestar, get
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig

import bkup
from bkup.server import health, jobs, metrics
from bkup.server.api import api_router
from bkup.server.api.deps import provide_ctx
from bkup.server.context import ServerContext, open_context
from bkup.server.errors import HANDLERS
from bkup.settings import Settings
from bkup.web import static_router, template_config, web_router


@get("/healthz", sync_to_thread=False, include_in_schema=False)
def healthz() -> dict[str, str]:
    return {"status": "ok"}


def create_app(
    settings: Settings,
    *,
    catalog=None,
    store=None,
    context: ServerContext | None = None,
) -> Litestar:
    """Build the app; pass a catalog, store or whole context to run against temp or fake parts."""
    owned = context is None
    ctx = context or open_context(settings, catalog=catalog, store=store)

    def shutdown() -> None:
        if owned:
            ctx.close()

    return Litestar(
        route_handlers=[api_router(), healthz, health.readyz, *metrics.routes(ctx.settings), web_router(), static_router()],
        middleware=[metrics.request_middleware(ctx.metrics)],
        template_config=template_config(),
        dependencies={"ctx": Provide(provide_ctx, sync_to_thread=False)},
        state=State({"ctx": ctx}),
        exception_handlers=HANDLERS,
        openapi_config=OpenAPIConfig(title="bkup", version=bkup.__version__, path="/schema"),
        on_startup=[lambda: jobs.start(ctx)],
        on_shutdown=[lambda: jobs.stop(ctx), shutdown],
        logging_config=None,
    )


logging.getLogger("bkup").addHandler(logging.NullHandler())
