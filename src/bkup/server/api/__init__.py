"""The REST API under /api/v1: one small controller per resource, all acting through the server services."""

from __future__ import annotations

from litestar import Router
from litestar.di import Provide
from litestar.openapi.datastructures import ResponseSpec

from bkup.protocol import API, ErrorBody
from bkup.server.api import agent, alerts, auth, chunks, clients, policies, runs, users
from bkup.server.api.deps import provide_principal


# Every route may answer these (server.errors turns them into ErrorBody); the OpenAPI schema says so,
# so that a client generated from it, and schemathesis, know the whole contract.
ERROR_RESPONSES = {
    400: "a malformed request: the detail names what is wrong",
    401: "no, invalid or revoked token",
    403: "authenticated, but this kind of caller may never do this",
    404: "no such object, or not the caller's to see",
    409: "conflict: a name taken, a run already finished, chunks the server lacks (extra.missing)",
    413: "request body too large",
    429: "too many failed logins",
    503: "the object store failed; try again",
}


def _document_errors(router: Router) -> Router:
    specs = {code: ResponseSpec(data_container=ErrorBody, description=text) for code, text in ERROR_RESPONSES.items()}
    for route in router.routes:
        for handler in getattr(route, "route_handlers", ()):
            handler.responses = {**specs, **(handler.responses or {})}
    return router


MAX_ID = 2**63 - 1


def ids_in_range(request) -> None:
    """An id in the path past what the catalog can hold names nothing: 404, before any query overflows."""
    from bkup.errors import NotFound

    for name, value in request.path_params.items():
        if isinstance(value, int) and not 0 <= value <= MAX_ID:
            raise NotFound(f"no object with {name} {value}")


def api_router() -> Router:
    return _document_errors(Router(
        path=API,
        route_handlers=[
            auth.AuthController,
            users.UserController,
            clients.ClientController,
            agent.AgentController,
            runs.RunController,
            chunks.ChunkController,
            policies.PolicyController,
            alerts.AlertController,
        ],
        dependencies={"principal": Provide(provide_principal, sync_to_thread=True)},
        before_request=ids_in_range,
    ))
