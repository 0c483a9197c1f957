"""Storage fixtures: `store` runs a test once per backend (memory, local folder, S3 on moto)."""

from __future__ import annotations

import secrets

import pytest

from bkup.storage.objects import ObjectStore, open_store

BACKENDS = ["memory", "file", "s3"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def store(backend: str, request: pytest.FixtureRequest, tmp_path) -> ObjectStore:
    if backend == "memory":
        return open_store(f"memory://test-{secrets.token_hex(6)}")
    if backend == "file":
        return open_store((tmp_path / "store").as_uri())
    moto_endpoint = request.getfixturevalue("moto_endpoint")
    s3_url = request.getfixturevalue("s3_url")
    return open_store(s3_url, s3_endpoint_url=moto_endpoint)
