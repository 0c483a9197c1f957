"""End-to-end fixtures: real `bkup` processes talking HTTP on loopback."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Bkup:
    """Runs `bkup` commands with one environment (server settings, isolated dirs)."""

    env: dict[str, str]
    url: str = ""
    procs: list[subprocess.Popen] = field(default_factory=list)

    def run(self, *args: str, input: str | None = None, check: bool = True, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [sys.executable, "-m", "bkup", *args],
            input=input, capture_output=True, text=True, env={**self.env, **(env or {})}, timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"bkup {' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
        return proc

    def json(self, *args: str, **kw) -> object:
        return json.loads(self.run(*args, **kw).stdout)

    def serve(self) -> subprocess.Popen:
        port = free_port()
        log = open(Path(self.env["BKUP_DATA_DIR"]).parent / f"serve-{port}.log", "w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "bkup", "serve", "--port", str(port)], env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        self.procs.append(proc)
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"bkup serve exited {proc.returncode}: {Path(log.name).read_text()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return proc
            except httpx.HTTPError:
                time.sleep(0.1)
        raise AssertionError("bkup serve did not come up in 60 s")

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()


def make_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BKUP_")}
    env.update(
        BKUP_DATA_DIR=str(tmp_path / "server-data"),
        BKUP_CONFIG_DIR=str(tmp_path / "config"),
        BKUP_STATE_DIR=str(tmp_path / "agent-state"),
        BKUP_MASTER_KEY=base64.b64encode(os.urandom(32)).decode(),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


@pytest.fixture(params=["sqlite+file", "postgresql+s3"])
def bkup(request, tmp_path) -> Iterator[Bkup]:
    extra: dict[str, str] = {}
    if request.param == "postgresql+s3":
        pg_url = request.getfixturevalue("pg_url")
        s3_url = request.getfixturevalue("s3_url")
        extra = dict(
            BKUP_DATABASE_URL=pg_url,
            BKUP_STORAGE_URL=s3_url,
            BKUP_S3_ENDPOINT_URL=request.getfixturevalue("moto_endpoint"),
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_DEFAULT_REGION="us-east-1",
        )
    b = Bkup(env=make_env(tmp_path, **extra))
    yield b
    b.stop()
