"""Pre-backup commands from the server: run each without a shell (unless asked), with a timeout, output captured.

A command runs in its own process group (session), so that at its timeout,
or when the agent stops, the whole group is killed: SIGTERM, then SIGKILL
after `KILL_GRACE_S`. Its standard output and error are captured together,
bounded to `OUTPUT_LIMIT` characters (the head and the tail are kept: the
tail usually says why it failed). It runs in `/` with the agent's
environment minus the agent's own secrets (`BKUP_TOKEN`, `BKUP_PASSWORD`).
`shell: true` runs the text with `/bin/sh -c`; otherwise it is split like a
shell would (`shlex.split`) and run directly, so nothing in it is expanded.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass

from bkup import protocol
from bkup.errors import BkupError

OUTPUT_LIMIT = 6000  # characters of output kept per command (the server keeps 8000 per log line)
KILL_GRACE_S = 2.0
POLL_S = 0.05
HIDDEN_ENV = ("BKUP_TOKEN", "BKUP_PASSWORD")


class RunCancelled(BkupError):
    """The agent is stopping: the current run ends now (marked failed, keeping what it committed)."""


@dataclass(frozen=True)
class CommandResult:
    command: str
    exit_code: int | None  # None: it did not start, or was killed
    duration_s: float
    output: str
    timed_out: bool = False
    error: str | None = None  # why it could not start

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and self.error is None

    def summary(self) -> str:
        """One line: the command and how it ended."""
        if self.error is not None:
            how = self.error
        elif self.timed_out:
            how = f"killed at its timeout after {self.duration_s:.0f} s"
        elif self.exit_code is not None and self.exit_code < 0:
            how = f"killed by signal {-self.exit_code}"
        else:
            how = f"exit {self.exit_code}"
        return f"pre-backup command `{self.command}`: {how}"


class _Output:
    """Collects a stream's text, keeping the first and the last part once it grows past the limit."""

    def __init__(self, limit: int = OUTPUT_LIMIT) -> None:
        self.head: list[str] = []
        self.head_len = 0
        self.head_limit = limit // 3
        self.tail: deque[str] = deque()
        self.tail_len = 0
        self.tail_limit = limit - self.head_limit
        self.dropped = 0

    def add(self, text: str) -> None:
        if self.head_len < self.head_limit:
            take = text[: self.head_limit - self.head_len]
            self.head.append(take)
            self.head_len += len(take)
            text = text[len(take):]
        if not text:
            return
        self.tail.append(text)
        self.tail_len += len(text)
        while self.tail_len > self.tail_limit:
            first = self.tail.popleft()
            excess = self.tail_len - self.tail_limit
            if len(first) > excess:
                self.tail.appendleft(first[excess:])
                self.dropped += excess
                self.tail_len -= excess
            else:
                self.dropped += len(first)
                self.tail_len -= len(first)

    def text(self) -> str:
        middle = f"\n[… {self.dropped} characters left out …]\n" if self.dropped else ""
        return ("".join(self.head) + middle + "".join(self.tail)).strip()


def _argv(cmd: protocol.PreCommand) -> list[str]:
    return ["/bin/sh", "-c", cmd.command] if cmd.shell else shlex.split(cmd.command)


def _environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in HIDDEN_ENV}


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the command's process group; SIGKILL if it is still there after a grace period."""
    for sig, wait in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            # The leader is gone; make sure no member of its group lingers.
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue
        return


def run_command(cmd: protocol.PreCommand, *, stop: threading.Event | None = None) -> CommandResult:
    """Run one pre-backup command to its end or its timeout. Raises RunCancelled if `stop` is set meanwhile."""
    t0 = time.monotonic()
    try:
        argv = _argv(cmd)
        if not argv:
            raise ValueError("empty command")
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd="/",
            env=_environment(),
            start_new_session=True,
            close_fds=True,
        )
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return CommandResult(cmd.command, None, time.monotonic() - t0, "", error=f"cannot start: {reason}")
    output = _Output()

    def read() -> None:
        assert proc.stdout is not None
        try:
            for raw in iter(lambda: proc.stdout.read1(65536), b""):
                output.add(raw.decode("utf-8", "replace"))
        except (OSError, ValueError):  # closed under us: a grandchild kept the pipe open past the command's end
            pass

    reader = threading.Thread(target=read, name="bkup-command-output", daemon=True)
    reader.start()
    deadline = t0 + cmd.timeout_s
    timed_out = False
    try:
        while proc.poll() is None:
            if stop is not None and stop.is_set():
                _kill_group(proc)
                raise RunCancelled(f"the agent is stopping; {cmd.command!r} was killed")
            if time.monotonic() >= deadline:
                timed_out = True
                _kill_group(proc)
                break
            time.sleep(POLL_S)
    finally:
        # A grandchild that left the group may hold the pipe open: do not wait for it forever.
        reader.join(2.0)
        proc.stdout.close()
    return CommandResult(cmd.command, proc.returncode, time.monotonic() - t0, output.text(), timed_out=timed_out)
