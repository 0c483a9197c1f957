"""Runs as an agent drives them: start, commit versions, report deletions, finish."""

from __future__ import annotations

from litestar import Controller, post
from litestar.params import FromPath, JSONBody

from bkup import protocol
from bkup.server import runs
from bkup.server.api.deps import Caller, Ctx

# A commit batch of 2,000 entries with long chunk lists can pass the 10 MB default.
MAX_JSON_BODY = 64 * 1024 * 1024


class RunController(Controller):
    path = "/runs"

    @post("/", sync_to_thread=True, status_code=201)
    def start(self, data: JSONBody[protocol.RunStart], ctx: Ctx, principal: Caller) -> protocol.RunInfo:
        return runs.start_run(ctx, principal, data.trigger)

    @post("/{run_id:int}/versions", sync_to_thread=True, status_code=200, request_max_body_size=MAX_JSON_BODY)
    def commit(self, run_id: FromPath[int], data: JSONBody[protocol.VersionBatch], ctx: Ctx, principal: Caller) -> protocol.CommitResult:
        return runs.commit_versions(ctx, principal, run_id, data.entries)

    @post("/{run_id:int}/deletions", sync_to_thread=True, status_code=200, request_max_body_size=MAX_JSON_BODY)
    def delete(self, run_id: FromPath[int], data: JSONBody[protocol.DeleteBatch], ctx: Ctx, principal: Caller) -> protocol.DeleteResult:
        return runs.delete_paths(ctx, principal, run_id, data.paths)

    @post("/{run_id:int}/finish", sync_to_thread=True, status_code=200)
    def finish(self, run_id: FromPath[int], data: JSONBody[protocol.RunFinish], ctx: Ctx, principal: Caller) -> protocol.RunInfo:
        return runs.finish_run(ctx, principal, run_id, data)
