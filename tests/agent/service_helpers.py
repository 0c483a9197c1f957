"""Helpers for the agent-service tests: the agent as a real subprocess, waiting, comparing trees with the server's."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bkup.agent.api import ApiClient
from bkup.core.paths import fs_to_wire

# Test-sized timers: a watch run follows 0.3 s after the last event; retries at most 1 s apart.
FAST = {"BKUP_QUIET_PERIOD": "0.3", "BKUP_MAX_DELAY": "2", "BKUP_RETRY_MAX_DELAY": "1", "BKUP_SETUP_UI": "false"}


def wait_for(check: Callable[[], object], timeout: float, what: str = "condition", interval: float = 0.1) -> object:
    """Poll `check` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except AssertionError as exc:
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}" + (f": {last_exc}" if last_exc else ""))


@dataclass
class Agent:
    proc: subprocess.Popen
    state_dir: Path
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def status(self) -> dict:
        try:
            return json.loads((self.state_dir / "status.json").read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> tuple[int, float]:
        """Send `sig`; (exit code, seconds it took to exit)."""
        t0 = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"agent did not exit {timeout} s after signal {sig}:\n{self.log()}") from None
        return rc, time.monotonic() - t0


@dataclass
class Agents:
    """Starts `bkup agent` subprocesses in a test's temp dir; kills leftovers at teardown."""

    tmp_path: Path
    started: list[Agent] = field(default_factory=list)

    def start(self, *args: str, env: dict[str, str] | None = None, name: str = "agent") -> Agent:
        state_dir = self.tmp_path / f"{name}-state"
        log_path = self.tmp_path / f"{name}.log"
        base = {k: v for k, v in os.environ.items() if not k.startswith("BKUP_")}
        full_env = {**base, "BKUP_STATE_DIR": str(state_dir), "BKUP_CONFIG_DIR": str(self.tmp_path / f"{name}-config"),
                    "PYTHONUNBUFFERED": "1", **FAST, **(env or {})}
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "bkup", "agent", *args], env=full_env, stdout=log, stderr=subprocess.STDOUT)
        agent = Agent(proc, state_dir, log_path)
        self.started.append(agent)
        return agent

    def cleanup(self) -> None:
        for a in self.started:
            if a.proc.poll() is None:
                a.proc.kill()
                a.proc.wait(10)


def local_tree(root: Path, *, skip: Callable[[str], bool] = lambda rel: False) -> dict[str, tuple]:
    """wire path → (kind, size, mtime_ns) of everything below `root` (files: size and mtime; dirs and links: kind)."""
    out: dict[str, tuple] = {}
    broot = os.fsencode(root.resolve())
    for dirpath, dirnames, filenames in os.walk(broot):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            rel = os.fsdecode(os.path.relpath(p, broot))
            if skip(rel):
                continue
            st = os.lstat(p)
            if stat.S_ISDIR(st.st_mode):
                out[fs_to_wire(p)] = ("dir",)
            elif stat.S_ISLNK(st.st_mode):
                out[fs_to_wire(p)] = ("symlink",)
            else:
                out[fs_to_wire(p)] = ("file", st.st_size, st.st_mtime_ns, stat.S_IMODE(st.st_mode))
    return out


def server_tree(api: ApiClient, client_id: int, root: Path, *, run: int | None = None) -> dict[str, tuple]:
    """The same shape, from the server's current versions under `root` (or as of `run`)."""
    prefix = fs_to_wire(os.fsencode(root.resolve()))
    out: dict[str, tuple] = {}
    for page in api.files(client_id, prefix, run=run):
        for v in page.entries:
            if v.path == prefix:
                continue
            out[v.path] = ("file", v.size, v.mtime_ns, v.mode) if v.kind == "file" else (v.kind,)
    return out


def runs(api: ApiClient, client_id: int) -> list:
    return sorted(api.runs(client_id), key=lambda r: r.seq)


def logs(api: ApiClient, client_id: int, level: str | None = None) -> list:
    return api.client_logs(client_id, level=level, limit=1000)
