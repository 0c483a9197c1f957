"""Shared fixtures: temp dirs, deterministic bytes, a real S3 endpoint (moto over HTTP), PostgreSQL."""

from __future__ import annotations

import os
import random
import secrets
import socket
from collections.abc import Iterator

import pytest

PG_ADMIN_URL = os.environ.get("BKUP_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def rand_bytes(n: int, seed: int = 0) -> bytes:
    """Deterministic incompressible bytes."""
    return random.Random(seed).randbytes(n)


@pytest.fixture
def rng_bytes():
    return rand_bytes


# --- S3: moto's server mode, spoken to over real HTTP -------------------------


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_url(moto_endpoint: str) -> str:
    """A fresh, empty bucket on the moto endpoint; returns `s3://bucket/prefix`."""
    import boto3

    bucket = "bkup-" + secrets.token_hex(6)
    boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    return f"s3://{bucket}/data"


# --- PostgreSQL: a fresh database per test ----------------------------------------


def _pg_reachable() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A new empty PostgreSQL database, dropped afterwards (SQLAlchemy URL)."""
    if not _pg_reachable():
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not reachable on 127.0.0.1:5432 (.ci/run should have started it)")
        pytest.skip("PostgreSQL not reachable on 127.0.0.1:5432")
    import psycopg

    name = "bkup_test_" + secrets.token_hex(5)
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + "/" + name
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
