"""The agent's own routes: who am I, my configuration, heartbeats, long-poll for signals, log shipping."""

from __future__ import annotations

import functools
import time
from typing import Annotated

import anyio
from litestar import Controller, get, post
from litestar.params import JSONBody, QueryParameter

from bkup import protocol
from bkup.server import accounts, agents
from bkup.server.api.deps import Caller, Ctx
from bkup.server.principal import require_agent

MAX_POLL_S = 30
POLL_STEP_S = 0.5


class AgentController(Controller):
    path = "/agent"

    @get("/me", sync_to_thread=True)
    def me(self, ctx: Ctx, principal: Caller) -> protocol.ClientInfo:
        return accounts.get_client(ctx, principal, require_agent(principal))

    @get("/config", sync_to_thread=True)
    def config(self, ctx: Ctx, principal: Caller) -> protocol.ClientConfig:
        return agents.agent_config(ctx, principal)

    @post("/heartbeat", sync_to_thread=True, status_code=200)
    def heartbeat(self, data: JSONBody[protocol.Heartbeat], ctx: Ctx, principal: Caller) -> protocol.AgentSignal:
        return agents.heartbeat(ctx, principal, data)

    @get("/poll")
    async def poll(
        self, ctx: Ctx, principal: Caller,
        version: Annotated[int, QueryParameter(ge=0)] = 0,
        timeout: Annotated[float, QueryParameter(ge=0, le=MAX_POLL_S)] = 25,
    ) -> protocol.AgentSignal:
        """Answer as soon as a backup is requested or the configuration moves past `version`.

        It polls the catalog rather than waiting on an in-process event, so a
        request made on one server replica reaches an agent polling another.
        """
        deadline = time.monotonic() + timeout
        seen = True
        while True:
            signal = await anyio.to_thread.run_sync(functools.partial(agents.poll, ctx, principal, seen=seen))
            if signal.backup_now or signal.config_version != version or time.monotonic() >= deadline:
                return signal
            seen = False
            await anyio.sleep(POLL_STEP_S)

    @post("/logs", sync_to_thread=True, status_code=200, request_max_body_size=16 * 1024 * 1024)
    def logs(self, data: JSONBody[protocol.LogBatch], ctx: Ctx, principal: Caller) -> dict[str, int]:
        return {"accepted": agents.add_logs(ctx, principal, data.entries)}
