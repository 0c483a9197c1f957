"""The server page (admin): where data lives and how much; prune, garbage collection and check, run in the background."""

from __future__ import annotations

from litestar import Controller, Request, Response, get, post
from litestar.params import FromPath
from litestar.response import Template

from bkup.server.principal import require_admin
from bkup.web import overview, render, retention
from bkup.web.pages.common import Ctx, Me


class ServerPage(Controller):
    path = "/server"

    @get("/", sync_to_thread=True)
    def server(self, request: Request, ctx: Ctx, me: Me) -> Template:
        require_admin(me)
        return render.page(
            request, "server.html", facts=overview.server_facts(ctx, me), jobs=retention.jobs(ctx),
            actions=[(key, label) for key, (label, _) in retention.ACTIONS.items()],
        )

    @post("/{action:str}", sync_to_thread=True)
    def run(self, request: Request, ctx: Ctx, me: Me, action: FromPath[str]) -> Response:
        job = retention.start_job(ctx, me, action)
        return render.redirect("/server#maintenance", f"{job.label} started; its result appears below when it is done.")
