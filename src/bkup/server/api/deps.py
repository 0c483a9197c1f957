"""Dependencies shared by the API controllers: the server context and the calling principal."""

from __future__ import annotations

from litestar import Request
from litestar.datastructures import State
from litestar.di import NamedDependency

from bkup.server.context import ServerContext
from bkup.server.principal import Principal, principal_for_token


# Dependencies are injected by name; these aliases say so explicitly.
Ctx = NamedDependency[ServerContext]
Caller = NamedDependency[Principal]


def provide_ctx(state: State) -> ServerContext:
    return state.ctx


def bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def provide_principal(request: Request, ctx: Ctx) -> Principal:
    with ctx.catalog.session() as s:
        return principal_for_token(s, bearer(request))
