"""The agent as a service: `bkup agent` without `--once` keeps the machine backed up, steered by the server.

One main thread runs the backups, one at a time; other threads (watcher,
heartbeat, long-poll) only ask for them, and requests made during a run
coalesce into one follow-up. A **full scan** runs at start-up, on the
schedule, on "backup now", when the paths or patterns change and after lost
file events (with the pre-backup commands first, except after lost events);
a **watch run** backs up only the dirty paths the watcher collected. The
configuration is fetched before each run. A run that cannot reach the server
is retried with backoff and jitter, at once when the server answers again.
SIGTERM/SIGINT cancel the current run (finished as failed, what it committed
stays) within `STOP_GRACE_S`, even if a request hangs; exit 0. docs/agent.md
has the whole story.
"""

from __future__ import annotations

import _thread
import logging
import os
import signal
import threading
import time
from datetime import datetime

import msgspec

from bkup import protocol
from bkup.agent.backup import BackupResult, run_backup
from bkup.agent.commands import RunCancelled
from bkup.agent.config import ConfigKeeper, Effective, LocalDefaults
from bkup.agent.logship import REPORT_LOGGER, LogQueue, LogShipper, ShipHandler
from bkup.agent.progress import NullProgress
from bkup.agent.runner import (
    Cancellable,
    Job,
    LogProgress,
    ServiceApi,
    commands_hook,
    finish_dangling,
    log_result,
)
from bkup.agent.scanner import resolve_roots
from bkup.agent.signals import Backoff, Signals, make_heartbeat
from bkup.agent.state import StateCache, ensure_state_dir
from bkup.agent.status import StatusFile
from bkup.agent.watcher import Watcher
from bkup.errors import BkupError, ServerError
from bkup.settings import Settings

log = logging.getLogger("bkup.agent.service")
report = logging.getLogger(REPORT_LOGGER)

STOP_GRACE_S = 5.0  # after SIGTERM, a run still blocked this long is interrupted
HARD_EXIT_S = 30.0  # ... and the process ends this long after SIGTERM whatever happens
PRIORITY = {"watch": 0, "schedule": 1, "setup": 2, "manual": 3}


class Service:
    """Runs the agent until stopped; `run()` returns the exit code."""

    def __init__(
        self,
        settings: Settings,
        *,
        local: LocalDefaults | None = None,
        user: str | None = None,
        password: str | None = None,
        name: str | None = None,
        setup_ui: bool | None = None,
        transport: object = None,
    ) -> None:
        self.settings = settings
        self.local = local or LocalDefaults(tuple(os.path.abspath(p) for p in settings.paths), settings.exclude)
        self.user = user or settings.user or None
        self.password = password or settings.password or None
        self.name = name or settings.client_name or None
        self.setup_ui = setup_ui
        self.transport = transport
        self.stop = threading.Event()
        self._wake = threading.Event()
        self._served = threading.Event()  # a run that serves "backup now" has started
        self._lock = threading.Lock()
        self._full: protocol.Trigger | None = None  # a full scan is wanted, with this trigger
        self._first_trigger: protocol.Trigger = "schedule"
        self._retry_at = 0.0
        self._backoff = Backoff(cap=settings.retry_max_delay)
        self._next_full_at: datetime | None = None
        self._last_full_at: datetime | None = None
        self._applied: Effective | None = None
        self._config_stale = True
        self._run_seq: int | None = None
        self._failing: str | None = None
        self._dangling: protocol.RunInfo | None = None
        self._warned_empty: int | None = None
        self._shutting_down = False
        self.status = StatusFile(settings.state_dir)
        self.keeper = ConfigKeeper(self.local, settings.state_dir)
        self.api: ServiceApi | None = None
        self.cache: StateCache | None = None
        self.watcher: Watcher | None = None
        self.signals: Signals | None = None
        self.shipper: LogShipper | None = None
        self.setup_page = None
        self._queue: LogQueue | None = None
        self._handler: ShipHandler | None = None

    # --- life cycle ----------------------------------------------------------------------------------

    def run(self) -> int:
        from bkup.agent import startup

        ensure_state_dir(self.settings.state_dir)
        self._install_signal_handlers()
        self._queue = LogQueue(os.path.join(self.settings.state_dir, "logs.db"))
        self._handler = ShipHandler(self._queue, run_seq=lambda: self._run_seq, on_put=self._logs_waiting)
        logging.getLogger("bkup").addHandler(self._handler)
        self.status.update(state="starting")
        try:
            if not startup.prepare(self):
                return 0
            report.info("agent started (pid %d)", os.getpid())
            self._loop()
        except RunCancelled:
            pass
        finally:
            self._shutdown()
        return 0

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, self._on_stop_signal)

    def _on_stop_signal(self, signum: int, frame: object) -> None:
        if self.stop.is_set():
            if not self._shutting_down:  # the grace period is over, or a second signal: break out of what blocks
                raise RunCancelled("the agent is stopping")
            return
        log.info("%s received: stopping", signal.Signals(signum).name)
        self.stop.set()
        self._wake.set()
        for delay, action in ((STOP_GRACE_S, self._interrupt), (HARD_EXIT_S, self._hard_exit)):
            timer = threading.Timer(delay, action)
            timer.daemon = True
            timer.start()

    def _interrupt(self) -> None:
        if not self._shutting_down:
            _thread.interrupt_main(signal.SIGTERM)

    def _hard_exit(self) -> None:
        log.error("the agent did not stop within %.0f s; exiting now", HARD_EXIT_S)
        logging.shutdown()
        os._exit(1)

    def _shutdown(self) -> None:
        self._shutting_down = True
        self.stop.set()
        if self.signals is not None:
            self.signals.close()
        if self.watcher is not None:
            self.watcher.stop()
        self.status.update(state="stopped", current_run=None)
        if self.shipper is not None:
            self.shipper.close()
        if self._handler is not None:
            logging.getLogger("bkup").removeHandler(self._handler)
        for closable in (self._queue, self.cache, self.api, self.setup_page):
            if closable is not None:
                try:
                    closable.close()
                except Exception as exc:  # noqa: BLE001 - closing must not hide why we stop
                    log.debug("closing %r: %s", closable, exc)

    # --- requests from other threads -----------------------------------------------------------------

    def request_full(self, trigger: protocol.Trigger) -> None:
        with self._lock:
            if self._full is None or PRIORITY[trigger] > PRIORITY[self._full]:
                self._full = trigger
        self._wake.set()

    def on_signal(self, sig: protocol.AgentSignal) -> None:
        """A heartbeat or poll answer (their threads)."""
        if sig.backup_now:
            self._served.clear()
            self.request_full("manual")
        if sig.config_version != self.keeper.seen_version and self.api is not None:
            try:
                self.keeper.offer(self.api.agent_config())
                self._config_stale = False
            except BkupError as exc:
                log.debug("cannot fetch the configuration now: %s", exc)
                self._config_stale = True
                self.keeper.seen_version = max(self.keeper.seen_version, sig.config_version)
            self._wake.set()

    def server_back(self) -> None:
        self._retry_at = 0.0
        self._backoff.reset()
        if self.shipper is not None:
            self.shipper.server_back()
        self._wake.set()

    def heartbeat(self) -> protocol.Heartbeat:
        current = self.api.current if self.api is not None else None
        if current is not None:
            return make_heartbeat("running", f"run {current.seq} ({current.trigger})")
        return make_heartbeat("error" if self._failing else "idle", self._failing)

    def config_version(self) -> int:
        return max(0, self.keeper.seen_version)

    def wait_backup_served(self, timeout: float) -> None:
        self._served.wait(timeout)

    def _run_started(self, info: protocol.RunInfo) -> None:
        self._run_seq = info.seq
        if info.trigger != "watch":
            self._served.set()
        self.status.update(state="running", current_run={"seq": info.seq, "trigger": info.trigger, "started_at": info.started_at})
        if self.signals is not None:
            self.signals.beat_now()

    def _logs_waiting(self) -> None:
        if self.shipper is not None:
            self.shipper.wake()

    # --- the main loop -------------------------------------------------------------------------------

    def _loop(self) -> None:
        self.request_full(self._first_trigger)
        while not self.stop.is_set():
            self._wake.clear()
            job = self._next_job()
            if job is None:
                self._wake.wait(self._idle_timeout())
                continue
            self._execute(job)

    def _next_job(self) -> Job | None:
        if time.monotonic() < self._retry_at:
            return None
        if self._config_stale or self.keeper.current is None:
            try:
                self._refresh_config()
            except BkupError as exc:
                self._failed(f"cannot fetch the configuration: {exc}")
                return None
        self._apply_config()
        if self.watcher is not None and self.watcher.take_overflow():
            self.request_full("watch")
        if self._full is None and self._next_full_at is not None and datetime.now() >= self._next_full_at:
            self.request_full("schedule")
        with self._lock:
            if self._full is not None:
                return Job(self._full)
        if self.watcher is not None:
            paths = self.watcher.take()
            if paths:
                return Job("watch", paths)
        return None

    def _idle_timeout(self) -> float:
        waits = [60.0]
        if self._retry_at:
            waits.append(self._retry_at - time.monotonic())
        if self._next_full_at is not None:
            waits.append((self._next_full_at - datetime.now()).total_seconds())
        if self.watcher is not None and (ready := self.watcher.ready_in()) is not None:
            waits.append(ready)
        return max(0.05, min(waits))

    def _refresh_config(self) -> None:
        assert self.api is not None
        self.keeper.offer(self.api.agent_config())
        self._config_stale = False

    def _apply_config(self) -> None:
        """Make the watcher, the schedule and the bandwidth limit follow a new configuration."""
        cfg = self.keeper.current
        if cfg is None or cfg is self._applied:
            return
        old, self._applied = self._applied, cfg
        if old is not None and (cfg.scope() != old.scope() or (cfg.watch and not old.watch)):
            # New paths or patterns, or changes nobody watched for: only a full scan sees them all.
            log.info("configuration %d: a full scan follows", cfg.version)
            self.request_full("schedule")
        if old is None or cfg.schedule != old.schedule:
            self._next_full_at = cfg.schedule.next_after(self._last_full_at or datetime.now())
        assert self.api is not None
        self.api.limit_kbps = cfg.bandwidth_limit_kbps
        self._sync_watcher(cfg)
        self.status.update(config_version=cfg.version, next_full_at=self._next_full_at.isoformat(timespec="seconds"))

    def _sync_watcher(self, cfg: Effective) -> None:
        if not (cfg.watch and cfg.paths):
            if self.watcher is not None:
                self.watcher.stop()
                self.watcher = None
            self.status.update(watching=[])
            return
        if self.watcher is None:
            state_dir = os.path.realpath(self.settings.state_dir)
            self.watcher = Watcher(
                quiet_period=self.settings.quiet_period, max_delay=self.settings.max_delay,
                skip=[os.fsencode(state_dir)], on_event=self._wake.set,
            )
        for problem in self.watcher.update(resolve_roots(list(cfg.paths)), cfg.patterns):
            log.warning("%s", problem)
        self.status.update(watching=[os.fsdecode(r) for r in self.watcher.watched])

    # --- one run ---------------------------------------------------------------------------------------

    def _execute(self, job: Job) -> None:
        assert self.api is not None and self.cache is not None
        full = job.paths is None
        started = datetime.now()
        try:
            self._dangling = finish_dangling(self.api, self._dangling)
            self._refresh_config()
            self._apply_config()
            cfg = self.keeper.current
            if cfg is None:
                raise ServerError(f"no usable configuration yet ({self.keeper.problem})")
            if not cfg.paths:
                if self._warned_empty != cfg.version:
                    log.warning("nothing to back up: no paths in the server's configuration, and no --path/BKUP_PATHS here")
                    self._warned_empty = cfg.version
                with self._lock:
                    self._full = None
                return
            if full:
                with self._lock:
                    self._full = None
                if self.watcher is not None:
                    self.watcher.discard()  # this scan covers every change made before it
            hook = commands_hook(cfg, self.stop, refuse=self.settings.no_server_commands) if job.trigger != "watch" else None
            result = run_backup(
                self.api, list(cfg.paths), list(cfg.patterns), self.cache, trigger=job.trigger,
                progress=Cancellable(self.stop, LogProgress() if full else NullProgress()), only=job.paths, before_walk=hook,
            )
        except RunCancelled:
            raise
        except Exception as exc:
            self._dangling, self.api.current = self.api.current, None
            self._run_seq = None
            if full:
                self.request_full(job.trigger)
            elif self.watcher is not None:
                self.watcher.put_back(job.paths or [])
            text = f"{type(exc).__name__}: {exc}" if not isinstance(exc, BkupError) else str(exc)
            if not isinstance(exc, BkupError):
                log.exception("run failed")
            self._failed(f"{'full scan' if full else 'watch run'} failed: {text}")
            return
        self._succeeded(result, job, started)

    def _succeeded(self, result: BackupResult, job: Job, started: datetime) -> None:
        log_result(result)
        self._run_seq = None
        self._retry_at = 0.0
        self._backoff.reset()
        self._failing = None
        if job.paths is None and self.keeper.current is not None:
            self._last_full_at = started
            self._next_full_at = self.keeper.current.schedule.next_after(started)
            if self.watcher is not None:
                self._sync_watcher(self.keeper.current)  # roots that appeared since are watched from now on
        self.status.update(
            state="idle", current_run=None, last_error=None,
            last_run=msgspec.to_builtins(result.run),
            next_full_at=self._next_full_at.isoformat(timespec="seconds") if self._next_full_at else None,
            pending=self.watcher.pending if self.watcher else 0,
        )
        if self.signals is not None:
            self.signals.beat_now()

    def _failed(self, text: str) -> None:
        delay = self._backoff.next_delay()
        self._retry_at = time.monotonic() + delay
        if self._backoff.failures == 1 or self._failing != text:
            log.warning("%s; retrying in %.0f s", text, delay)
        self._failing = text
        self.status.update(state="error", current_run=None, last_error=text)
        if self.signals is not None:
            self.signals.beat_now()
