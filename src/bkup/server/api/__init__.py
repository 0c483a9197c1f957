"""The REST API under /api/v1: one small controller per resource, all acting through the server services."""

from __future__ import annotations

from litestar import Router
from litestar.di import Provide

from bkup.protocol import API
from bkup.server.api import agent, auth, chunks, clients, runs, users
from bkup.server.api.deps import provide_principal


def api_router() -> Router:
    return Router(
        path=API,
        route_handlers=[
            auth.AuthController,
            users.UserController,
            clients.ClientController,
            agent.AgentController,
            runs.RunController,
            chunks.ChunkController,
        ],
        dependencies={"principal": Provide(provide_principal, sync_to_thread=True)},
    )
