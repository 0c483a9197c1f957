"""Operations fixtures: the server fixtures, plus a webhook receiver (a small http.server in a thread)."""

from __future__ import annotations

import base64
import json
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bkup.settings import Settings
from tests.server.conftest import alice, bob, ctx, http, root  # noqa: F401 - fixtures shared with tests/server


class Hook:
    """Records every POST; answers `fail_first` requests with 500 before answering 200."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.fail_first = 0
        self._cv = threading.Condition()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _handler(self):
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with hook._cv:
                    failing = hook.fail_first > 0
                    hook.fail_first -= failing
                    hook.requests.append({"path": self.path, "headers": dict(self.headers), "body": body,
                                          "json": json.loads(body), "answered": 500 if failing else 200})
                    hook._cv.notify_all()
                self.send_response(500 if failing else 200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        return Handler

    def events(self, name: str | None = None) -> list[dict]:
        """Bodies of the requests answered 200 (optionally of one event)."""
        return [r["json"] for r in self.requests if r["answered"] == 200 and (name is None or r["json"]["event"] == name)]

    def wait(self, predicate, timeout: float = 10.0) -> None:
        with self._cv:
            assert self._cv.wait_for(lambda: predicate(self), timeout), f"webhook got {[r['json']['event'] for r in self.requests]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook() -> Iterator[Hook]:
    h = Hook()
    yield h
    h.close()


@pytest.fixture
def settings(tmp_path, hook) -> Settings:
    """Server settings with the hook as the global webhook (overrides tests/server's)."""
    return Settings(
        data_dir=str(tmp_path / "data"),
        config_dir=str(tmp_path / "config"),
        master_key=base64.b64encode(os.urandom(32)).decode(),
        alert_webhooks=(hook.url,),
        alert_secret="hook-secret",
        alert_missed_margin=3600,
    )


class RoundRobinProxy:
    """A layer-4 load balancer for tests: each new TCP connection goes to the next backend in turn."""

    def __init__(self, backends: list[tuple[str, int]]) -> None:
        import socket

        self.backends = backends
        self.connections = [0] * len(backends)
        self._next = 0
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket

        while not self._closed:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            i = self._next
            self._next = (i + 1) % len(self.backends)
            self.connections[i] += 1
            try:
                upstream = socket.create_connection(self.backends[i])
            except OSError:
                client.close()
                continue
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src, dst) -> None:
        import socket

        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._closed = True
        self._sock.close()
