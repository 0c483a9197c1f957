"""POST /auth/login: user name and password for an API token."""

from __future__ import annotations

from litestar import Controller, Request, post

from litestar.params import JSONBody

from bkup import protocol
from bkup.server import accounts
from bkup.server.api.deps import Caller, Ctx


class AuthController(Controller):
    path = "/auth"

    @post("/login", sync_to_thread=True, status_code=200)
    def login(self, request: Request, data: JSONBody[protocol.LoginRequest], ctx: Ctx) -> protocol.LoginResponse:
        key = f"{request.client.host if request.client else '-'}:{data.user}"
        with ctx.login_limiter.attempt(key):
            return accounts.login(ctx, data.user, data.password)
