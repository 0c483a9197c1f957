"""Alert webhooks: GET/PUT /users/{id}/alerts (admin or that user), POST /alerts/test."""

from __future__ import annotations

from litestar import Controller, get, post, put
from litestar.params import FromPath, JSONBody

from bkup import protocol
from bkup.server import alerts
from bkup.server.api.deps import Caller, Ctx


class AlertController(Controller):
    path = "/"

    @get("/users/{user_id:int}/alerts", sync_to_thread=True)
    def get_settings(self, user_id: FromPath[int], ctx: Ctx, principal: Caller) -> protocol.AlertSettings:
        return alerts.alert_settings(ctx, principal, user_id)

    @put("/users/{user_id:int}/alerts", sync_to_thread=True)
    def put_settings(self, user_id: FromPath[int], data: JSONBody[protocol.AlertSettings], ctx: Ctx, principal: Caller) -> protocol.AlertSettings:
        return alerts.set_alert_settings(ctx, principal, user_id, data)

    @post("/alerts/test", sync_to_thread=True, status_code=200)
    def test(self, ctx: Ctx, principal: Caller) -> list[protocol.AlertDelivery]:
        return alerts.test_alert(ctx, principal)
