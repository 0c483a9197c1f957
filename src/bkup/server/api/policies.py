"""Retention policies: GET/PUT /users/{id}/policy (admin or that user), GET/PUT /clients/{id}/policy (owner or admin)."""

from __future__ import annotations

from typing import Any

from litestar import Controller, get, put
from litestar.params import FromPath, JSONBody

from bkup import protocol
from bkup.server import policies
from bkup.server.api.deps import Caller, Ctx


class PolicyController(Controller):
    """The body of a PUT is the policy object itself; a bad field is a 400 that names it."""

    path = "/"

    @get("/users/{user_id:int}/policy", sync_to_thread=True)
    def get_user(self, user_id: FromPath[int], ctx: Ctx, principal: Caller) -> protocol.PolicyInfo:
        return policies.policy_info(ctx, principal, user_id=user_id)

    @put("/users/{user_id:int}/policy", sync_to_thread=True)
    def put_user(self, user_id: FromPath[int], data: JSONBody[dict[str, Any]], ctx: Ctx, principal: Caller) -> protocol.PolicyInfo:
        policies.set_user_policy(ctx, principal, user_id, data)
        return policies.policy_info(ctx, principal, user_id=user_id)

    @get("/clients/{client_id:int}/policy", sync_to_thread=True)
    def get_client(self, client_id: FromPath[int], ctx: Ctx, principal: Caller) -> protocol.PolicyInfo:
        return policies.policy_info(ctx, principal, client_id=client_id)

    @put("/clients/{client_id:int}/policy", sync_to_thread=True)
    def put_client(self, client_id: FromPath[int], data: JSONBody[dict[str, Any]], ctx: Ctx, principal: Caller) -> protocol.PolicyInfo:
        policies.set_client_policy(ctx, principal, client_id, data)
        return policies.policy_info(ctx, principal, client_id=client_id)
