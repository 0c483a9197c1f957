"""Agent fixtures: a real bkup server (uvicorn in a thread, 127.0.0.1, free port) and fresh accounts on it."""

from __future__ import annotations

import base64
import itertools
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bkup.agent.api import ApiClient
from bkup.settings import Settings


@dataclass
class LiveServer:
    url: str
    settings: Settings
    ctx: object  # bkup.server.context.ServerContext


@pytest.fixture(scope="session")
def live_server(tmp_path_factory) -> Iterator[LiveServer]:
    import uvicorn

    from bkup.server.app import create_app
    from bkup.server.context import open_context

    base = tmp_path_factory.mktemp("server")
    settings = Settings(
        data_dir=str(base / "data"),
        config_dir=str(base / "config"),
        master_key=base64.b64encode(os.urandom(32)).decode(),
    )
    ctx = open_context(settings)
    config = uvicorn.Config(
        create_app(settings, context=ctx), host="127.0.0.1", port=0, log_level="warning", lifespan="on",
        timeout_graceful_shutdown=2,  # agents' long-polls may still be open
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="bkup-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("test server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield LiveServer(url=f"http://127.0.0.1:{port}", settings=settings, ctx=ctx)
    server.should_exit = True
    thread.join(10)
    ctx.close()


_names = itertools.count(1)


@dataclass
class Account:
    """A fresh user (own dedup scope) with one client."""

    server: str
    user: str
    password: str
    user_token: str
    client_id: int
    client_name: str
    agent_token: str

    def agent_api(self) -> ApiClient:
        return ApiClient(self.server, self.agent_token)

    def user_api(self) -> ApiClient:
        return ApiClient(self.server, self.user_token)


@pytest.fixture
def account(live_server) -> Account:
    from bkup.server import accounts

    n = next(_names)
    user, password = f"user{n}", f"password-{n}"
    accounts.create_user(live_server.ctx, user, password)
    with ApiClient(live_server.url) as api:
        token = api.login(user, password).token
        api.token = token
        created = api.create_client(f"{user}-pc")
    return Account(live_server.url, user, password, token, created.id, created.name, created.token)


@pytest.fixture
def api(account) -> Iterator[ApiClient]:
    with account.agent_api() as client:
        yield client


@pytest.fixture
def state_dir(tmp_path) -> Path:
    return tmp_path / "state"
