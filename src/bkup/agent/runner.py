"""What the service needs around `run_backup`: its API client, cancellation, the pre-backup commands hook, reporting.

`ServiceApi` is the API client of the service's runs: it knows the run in
progress (for heartbeats, log lines and finishing a run the server never
heard the end of) and applies the configured bandwidth limit between upload
requests. `Cancellable` wraps the run's progress: backup reports progress for
every file and chunk, so a stopping agent ends the run there (RunCancelled;
`run_backup` finishes it as failed, keeping what it committed).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bkup import protocol
from bkup.agent.api import ApiClient
from bkup.agent.backup import BackupResult
from bkup.agent.commands import RunCancelled, run_command
from bkup.agent.config import Effective
from bkup.agent.logship import REPORT_LOGGER
from bkup.agent.progress import LineProgress, Progress, format_bytes
from bkup.core.frames import Frame, FrameBatch
from bkup.errors import BkupError, ServerError

log = logging.getLogger("bkup.agent.service")
report = logging.getLogger(REPORT_LOGGER)

MAX_SHIPPED_WARNINGS = 100  # per run; the rest are counted
PROGRESS_EVERY_S = 60.0


@dataclass(frozen=True)
class Job:
    trigger: protocol.Trigger
    paths: list[bytes] | None = None  # dirty paths of a watch run; None: a full scan


class ServiceApi(ApiClient):
    """The runs' API client: knows the run in progress and applies the configured bandwidth limit."""

    retry_log_level = logging.INFO  # a failed run is logged (and shipped) once, by the service

    def __init__(self, *args: object, stop: threading.Event, on_start: Callable[[protocol.RunInfo], None], **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.stop = stop
        self.on_start = on_start
        self.current: protocol.RunInfo | None = None  # started, not (yet known to be) finished
        self.limit_kbps: int | None = None

    def start_run(self, trigger: protocol.Trigger = "manual") -> protocol.RunInfo:
        info = super().start_run(trigger)
        self.current = info
        self.on_start(info)
        return info

    def finish_run(self, run_id: int, finish: protocol.RunFinish) -> protocol.RunInfo:
        info = super().finish_run(run_id, finish)
        self.current = None
        return info

    def upload(self, frames):  # type: ignore[no-untyped-def]
        t0 = time.monotonic()
        result = super().upload(frames)
        if self.limit_kbps and isinstance(frames, (Sequence, FrameBatch)):
            if isinstance(frames, FrameBatch):
                size = frames.nbytes
            else:
                size = sum(len(f.header()) + len(f.data) if isinstance(f, Frame) else len(f) for f in frames)
            left = size / (self.limit_kbps * 1024) - (time.monotonic() - t0)
            if left > 0:
                self.stop.wait(left)
        return result


class LogProgress(LineProgress):
    """A progress line in the agent's log every minute of a long run (not on stderr: the log may be JSON lines)."""

    def __init__(self) -> None:
        super().__init__(interval=PROGRESS_EVERY_S)

    def _print(self, now: float, final: bool = False) -> None:
        if not final:
            log.info("%s", self.line(now))


class Cancellable:
    """Progress that ends the run (RunCancelled) once the agent is stopping."""

    def __init__(self, stop: threading.Event, inner: Progress) -> None:
        self.stop = stop
        self.inner = inner

    def start(self, title: str, *, total_files: int | None = None, total_bytes: int | None = None) -> None:
        self.inner.start(title, total_files=total_files, total_bytes=total_bytes)

    def advance(self, *, files: int = 0, bytes: int = 0) -> None:
        if self.stop.is_set():
            raise RunCancelled("the agent is stopping")
        self.inner.advance(files=files, bytes=bytes)

    def finish(self) -> None:
        self.inner.finish()


def commands_hook(cfg: Effective, stop: threading.Event, *, refuse: bool) -> Callable[[protocol.RunInfo], list[str]] | None:
    """The `before_walk` hook running the configuration's pre-backup commands in order; None if there are none to run.

    Every command runs even when an earlier one failed (a later one may undo
    what an earlier one did, like restarting a service); each one's output goes
    to the server's log (error level when it failed), and each failure makes
    the run partial.
    """
    if not cfg.commands:
        return None
    if refuse:
        log.warning("%d pre-backup command(s) from the server skipped: this agent runs with --no-server-commands", len(cfg.commands))
        return None

    def before_walk(info: protocol.RunInfo) -> list[str]:
        problems = []
        for cmd in cfg.commands:
            result = run_command(cmd, stop=stop)
            text = result.summary() + (f"; output:\n{result.output}" if result.output else "; no output")
            if result.ok:
                report.info("%s (%.1f s)", text, result.duration_s)
            else:
                report.error("%s", text)
                problems.append(result.summary())
        return problems

    return before_walk


def log_result(result: BackupResult) -> None:
    """The run's warnings (to the server's log too, at most MAX_SHIPPED_WARNINGS) and a summary line (local)."""
    run, s = result.run, result.stats
    for w in result.warnings[:MAX_SHIPPED_WARNINGS]:
        log.warning("%s", w)
    if len(result.warnings) > MAX_SHIPPED_WARNINGS:
        log.warning("… and %d more warning(s) in run %d", len(result.warnings) - MAX_SHIPPED_WARNINGS, run.seq)
    log.info(
        "run %d (%s) %s: %d changed, %d deleted, %s uploaded%s", run.seq, run.trigger, run.status,
        s.files_changed, s.files_deleted, format_bytes(s.bytes_uploaded), f"; {run.error}" if run.error else "",
    )


def finish_dangling(api: ApiClient, run: protocol.RunInfo | None) -> protocol.RunInfo | None:
    """Finish as failed a run whose end the server never heard (it was down); returns it if that failed too."""
    if run is None:
        return None
    finish = protocol.RunFinish(status="failed", stats=protocol.RunStats(), error="the agent lost the server during the run")
    try:
        api.finish_run(run.id, finish)
    except ServerError:
        return run
    except BkupError:
        pass  # already finished, or abandoned by the server's sweep
    return None
