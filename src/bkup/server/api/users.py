"""Users (admin only)."""

from __future__ import annotations

from litestar import Controller, get, post

from litestar.params import JSONBody

from bkup import protocol
from bkup.server import accounts
from bkup.server.api.deps import Caller, Ctx
from bkup.server.principal import require_admin


class UserController(Controller):
    path = "/users"

    @get("/", sync_to_thread=True)
    def list_users(self, ctx: Ctx, principal: Caller) -> list[protocol.UserInfo]:
        require_admin(principal)
        return [accounts.user_info(u) for u in accounts.list_users(ctx)]

    @post("/", sync_to_thread=True)
    def create_user(self, data: JSONBody[protocol.UserCreate], ctx: Ctx, principal: Caller) -> protocol.UserInfo:
        require_admin(principal)
        return accounts.user_info(accounts.create_user(ctx, data.name, data.password, is_admin=data.is_admin))
