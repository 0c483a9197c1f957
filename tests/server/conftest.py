"""Server fixtures: a context on a temp SQLite catalog and an in-memory store, an in-process HTTP client."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from litestar.testing import TestClient

from bkup.catalog.db import Catalog
from bkup.server import accounts
from bkup.server.app import create_app
from bkup.server.context import ServerContext, open_context
from bkup.settings import Settings
from bkup.storage.objects import MemoryStore


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(
        data_dir=str(tmp_path / "data"),
        config_dir=str(tmp_path / "config"),
        master_key=base64.b64encode(os.urandom(32)).decode(),
    )


@pytest.fixture
def ctx(settings) -> Iterator[ServerContext]:
    context = open_context(settings, catalog=Catalog(settings.effective_database_url), store=MemoryStore())
    yield context
    context.close()


@pytest.fixture
def http(settings, ctx) -> Iterator[TestClient]:
    with TestClient(app=create_app(settings, context=ctx)) as client:
        yield client


@dataclass
class Account:
    name: str
    token: str  # API token
    client_id: int
    agent_token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def agent(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.agent_token}"}


def make_account(ctx: ServerContext, http: TestClient, name: str, *, admin: bool = False) -> Account:
    accounts.create_user(ctx, name, "password-" + name, is_admin=admin)
    r = http.post("/api/v1/auth/login", json={"user": name, "password": "password-" + name})
    assert r.status_code == 200, r.text
    token = r.json()["token"]
    r = http.post("/api/v1/clients", json={"name": f"{name}-pc"}, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 201, r.text
    body = r.json()
    return Account(name=name, token=token, client_id=body["id"], agent_token=body["token"])


@pytest.fixture
def alice(ctx, http) -> Account:
    return make_account(ctx, http, "alice")


@pytest.fixture
def bob(ctx, http) -> Account:
    return make_account(ctx, http, "bob")


@pytest.fixture
def root(ctx, http) -> Account:
    return make_account(ctx, http, "root", admin=True)
