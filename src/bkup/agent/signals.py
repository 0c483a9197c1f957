"""The agent's line to the server between runs: heartbeats, the long-poll for "backup now" and configuration changes.

Two daemon threads, each with its own `ApiClient` (no retries inside: the
loops retry themselves, with exponential backoff and jitter):

- the heartbeat (`POST /agent/heartbeat`, every `HEARTBEAT_S`) tells the
  server the agent is alive and what it is doing;
- the long-poll (`GET /agent/poll?version=V&timeout=25`) returns as soon as
  the server wants a backup now or has a configuration newer than V, so a
  request from the web UI starts a run within a second or two.

Both answers are an `AgentSignal`, handed to the `Listener` (the service).
Either loop reaching the server again after failures calls `server_back()`,
so that the service retries a failed run at once instead of at the end of
its backoff.
"""

from __future__ import annotations

import logging
import platform
import random
import socket
import threading
from collections.abc import Callable
from typing import Protocol

import bkup
from bkup import protocol
from bkup.agent.api import ApiClient
from bkup.errors import AuthError, BkupError

log = logging.getLogger("bkup.agent.signals")

HEARTBEAT_S = 30.0
POLL_TIMEOUT_S = 25.0


class Backoff:
    """Exponential backoff with jitter: the n-th failure waits between half and all of min(cap, base·2ⁿ)."""

    def __init__(self, base: float = 1.0, cap: float = 60.0, rng: Callable[[], float] = random.random) -> None:
        self.base = base
        self.cap = cap
        self.rng = rng
        self.failures = 0

    def next_delay(self) -> float:
        """Count a failure; the pause before the next attempt."""
        ceiling = min(self.cap, self.base * (2 ** min(self.failures, 30)))
        self.failures += 1
        return ceiling / 2 + self.rng() * ceiling / 2

    def reset(self) -> None:
        self.failures = 0


class Listener(Protocol):
    def on_signal(self, signal: protocol.AgentSignal) -> None: ...

    def server_back(self) -> None: ...

    def heartbeat(self) -> protocol.Heartbeat: ...

    def config_version(self) -> int: ...

    def wait_backup_served(self, timeout: float) -> None: ...


def make_heartbeat(state: str, detail: str | None = None) -> protocol.Heartbeat:
    return protocol.Heartbeat(
        agent_version=bkup.__version__,
        hostname=socket.gethostname(),
        os=f"{platform.system()} {platform.release()} ({platform.machine()})",
        state=state,  # type: ignore[arg-type]
        detail=detail[:500] if detail else None,
    )


class Signals:
    """Runs the heartbeat and long-poll threads until `stop` is set."""

    def __init__(
        self,
        server: str,
        token: str,
        listener: Listener,
        stop: threading.Event,
        *,
        retry_max_delay: float = 60.0,
        heartbeat_s: float = HEARTBEAT_S,
        poll_timeout_s: float = POLL_TIMEOUT_S,
        transport: object = None,
    ) -> None:
        self.listener = listener
        self.stop = stop
        self.retry_max_delay = retry_max_delay
        self.heartbeat_s = heartbeat_s
        self.poll_timeout_s = poll_timeout_s
        self._beat_api = ApiClient(server, token, transport=transport, timeout=15.0, retries=0)
        self._poll_api = ApiClient(server, token, transport=transport, timeout=poll_timeout_s + 15.0, retries=0)
        self._beat_now = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for target, name in ((self._beat_loop, "bkup-heartbeat"), (self._poll_loop, "bkup-poll")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def beat_now(self) -> None:
        """Send a heartbeat at once (the state changed)."""
        self._beat_now.set()

    def close(self, timeout: float = 0.2) -> None:
        """Stop the threads (a long-poll in flight is abandoned: the threads are daemons)."""
        self.stop.set()
        self._beat_now.set()
        for t in self._threads:
            t.join(timeout)
        for api in (self._beat_api, self._poll_api):
            try:
                api.close()
            except Exception as exc:  # noqa: BLE001 - a request may still be in flight in an abandoned thread
                log.debug("closing the API client: %s", exc)

    def _beat_loop(self) -> None:
        backoff = Backoff(cap=self.retry_max_delay)
        while not self.stop.is_set():
            try:
                signal = self._beat_api.heartbeat(self.listener.heartbeat())
            except BkupError as exc:
                delay = min(backoff.next_delay(), self.heartbeat_s)
                if backoff.failures == 1 or isinstance(exc, AuthError):
                    log.debug("heartbeat failed: %s", exc)
            else:
                if backoff.failures:
                    self.listener.server_back()
                backoff.reset()
                self.listener.on_signal(signal)
                delay = self.heartbeat_s
            self._beat_now.wait(delay)
            self._beat_now.clear()

    def _poll_loop(self) -> None:
        backoff = Backoff(cap=self.retry_max_delay)
        while not self.stop.is_set():
            try:
                signal = self._poll_api.poll(self.listener.config_version(), self.poll_timeout_s)
            except BkupError as exc:
                delay = backoff.next_delay()
                if backoff.failures == 1:
                    log.warning("cannot reach the server: %s; retrying with backoff (at most %.0f s apart)", exc, self.retry_max_delay)
                self.stop.wait(delay)
                continue
            except Exception:
                log.exception("long-poll failed")
                self.stop.wait(backoff.next_delay())
                continue
            if backoff.failures:
                log.warning("the server answers again, after %d failed attempt(s)", backoff.failures)
                self.listener.server_back()
            backoff.reset()
            if self.stop.is_set():
                return
            self.listener.on_signal(signal)
            if signal.backup_now:
                # The flag stays up on the server until a run starts: wait for that rather than spin.
                self.listener.wait_backup_served(self.poll_timeout_s)
