"""The dashboard: every client at a glance (those needing attention first), totals, and two charts."""

from __future__ import annotations

from litestar import Controller, Request, get
from litestar.response import Template

from bkup.web import charts, overview, render
from bkup.web.pages.common import Ctx, Me


class DashboardPage(Controller):
    path = "/"

    @get("/", sync_to_thread=True)
    def dashboard(self, request: Request, ctx: Ctx, me: Me) -> Template:
        rows = overview.client_rows(ctx, me)
        data = overview.series(ctx, me)
        return render.page(
            request, "dashboard.html",
            rows=rows,
            totals=overview.totals(ctx, me, rows),
            stored_chart=charts.line_chart(data.stored, render.fmt_bytes, "Data uploaded, cumulative"),
            duration_chart=charts.bar_chart(data.durations, render.fmt_duration, "Duration of the last runs"),
        )
