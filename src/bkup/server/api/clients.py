"""Clients: create (agent token shown once), list, get, rotate token; runs and backed-up trees of a client."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, get, post, put
from litestar.params import FromPath, JSONBody, QueryParameter

from bkup import protocol
from bkup.server import accounts, agents, browse, runs
from bkup.server.api.deps import Caller, Ctx

PathQ = Annotated[str, QueryParameter()]
RunQ = Annotated[int | None, QueryParameter(ge=1)]
AtQ = Annotated[str | None, QueryParameter()]


class ClientController(Controller):
    path = "/clients"

    @get("/", sync_to_thread=True)
    def list_clients(
        self, ctx: Ctx, principal: Caller, name: Annotated[str | None, QueryParameter()] = None
    ) -> list[protocol.ClientInfo]:
        return accounts.list_clients(ctx, principal, name)

    @post("/", sync_to_thread=True)
    def create_client(self, data: JSONBody[protocol.ClientCreate], ctx: Ctx, principal: Caller) -> protocol.ClientCreated:
        return accounts.create_client(ctx, principal, data.name, data.user)

    @get("/{client_id:int}", sync_to_thread=True)
    def get_client(self, client_id: FromPath[int], ctx: Ctx, principal: Caller) -> protocol.ClientInfo:
        return accounts.get_client(ctx, principal, client_id)

    @post("/{client_id:int}/token", sync_to_thread=True)
    def rotate_token(self, client_id: FromPath[int], ctx: Ctx, principal: Caller) -> protocol.ClientCreated:
        return accounts.rotate_agent_token(ctx, principal, client_id)

    @get("/{client_id:int}/runs", sync_to_thread=True)
    def list_runs(
        self, client_id: FromPath[int], ctx: Ctx, principal: Caller,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
    ) -> list[protocol.RunInfo]:
        return runs.list_runs(ctx, principal, client_id, limit)

    @get("/{client_id:int}/tree", sync_to_thread=True)
    def tree(self, client_id: FromPath[int], ctx: Ctx, principal: Caller, path: PathQ = "/", run: RunQ = None, at: AtQ = None) -> protocol.Tree:
        return browse.tree(ctx, principal, client_id, path, run, at)

    @get("/{client_id:int}/summary", sync_to_thread=True)
    def summary(self, client_id: FromPath[int], ctx: Ctx, principal: Caller, path: PathQ = "/", run: RunQ = None, at: AtQ = None) -> protocol.TreeSummary:
        return browse.summary(ctx, principal, client_id, path, run, at)

    @get("/{client_id:int}/files", sync_to_thread=True)
    def files(
        self, client_id: FromPath[int], ctx: Ctx, principal: Caller,
        path: PathQ = "/", run: RunQ = None, at: AtQ = None,
        after: Annotated[str | None, QueryParameter()] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=browse.MAX_PAGE)] = 1000,
        chunks: Annotated[bool, QueryParameter()] = False,
    ) -> protocol.VersionPage:
        return browse.files(ctx, principal, client_id, path, run, at, after, limit, chunks)

    @get("/{client_id:int}/history", sync_to_thread=True)
    def history(self, client_id: FromPath[int], ctx: Ctx, principal: Caller, path: PathQ = "/") -> protocol.History:
        return browse.history(ctx, principal, client_id, path)

    @get("/{client_id:int}/status", sync_to_thread=True)
    def status(self, client_id: FromPath[int], ctx: Ctx, principal: Caller) -> protocol.ClientStatus:
        accounts.get_client(ctx, principal, client_id)  # ownership
        return agents.client_status(ctx, client_id)

    @get("/{client_id:int}/config", sync_to_thread=True)
    def get_config(self, client_id: FromPath[int], ctx: Ctx, principal: Caller) -> protocol.ClientConfig:
        return agents.get_config(ctx, principal, client_id)

    @put("/{client_id:int}/config", sync_to_thread=True)
    def set_config(self, client_id: FromPath[int], data: JSONBody[protocol.ClientConfig], ctx: Ctx, principal: Caller) -> protocol.ClientConfig:
        return agents.set_config(ctx, principal, client_id, data)

    @post("/{client_id:int}/backup-now", sync_to_thread=True, status_code=202)
    def backup_now(self, client_id: FromPath[int], ctx: Ctx, principal: Caller) -> dict[str, str]:
        agents.request_backup(ctx, principal, client_id)
        return {"status": "requested"}

    @get("/{client_id:int}/logs", sync_to_thread=True)
    def logs(
        self, client_id: FromPath[int], ctx: Ctx, principal: Caller,
        level: Annotated[str | None, QueryParameter()] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 50,
    ) -> list[protocol.LogEntry]:
        return agents.list_logs(ctx, principal, client_id, level=level, limit=limit)
