"""The admin web UI: server-rendered pages over the same services as the API.

Terms: a **page** is one GET handler rendering one template (`templates/`,
all extending `base.html`); a **form** posts to a handler that calls one
service and redirects back with a **flash** message (POST/redirect/GET);
the **session** is an HttpOnly cookie naming a `tokens` row of kind "web";
every form carries a **CSRF token** checked in one guard. Errors become a
redirect to the login page, a flash on the form, or `error.html`, in one
place (`web.errors`). Static assets (`static/`) ship in the package: no CDN.

Modules: `session` (cookie, CSRF, who is signed in), `render` (Jinja,
filters, flash), `errors`, `overview` (read models of the pages), `charts`
(inline SVG geometry), `downloads` (streamed file and tar downloads),
`retention` (the retention and maintenance services as the pages see them),
`pages/` (the controllers).
"""

from __future__ import annotations

from pathlib import Path

from litestar import Router
from litestar.datastructures import CacheControlHeader
from litestar.di import Provide
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig

STATIC = Path(__file__).parent / "static"


def web_router() -> Router:
    from bkup.web import errors, session
    from bkup.web.pages import auth, browser, clients, dashboard, maintenance, users

    return Router(
        path="/",
        route_handlers=[
            auth.AuthPages,
            dashboard.DashboardPage,
            clients.ClientPages,
            browser.BrowserPages,
            users.UserPages,
            users.AccountPage,
            maintenance.ServerPage,
        ],
        dependencies={"me": Provide(session.provide_me, sync_to_thread=True)},
        guards=[session.csrf_guard],
        exception_handlers=errors.HANDLERS,
        include_in_schema=False,
    )


def static_router() -> Router:
    return create_static_files_router(
        path="/static", directories=[STATIC], cache_control=CacheControlHeader(max_age=3600), include_in_schema=False
    )


def template_config() -> TemplateConfig:
    from bkup.web.render import template_config as config

    return config()
