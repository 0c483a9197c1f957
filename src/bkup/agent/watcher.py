"""File events on the monitored paths (watchdog, inotify), coalesced into sets of dirty paths for watch runs.

Only events that mean a change are asked for (`EVENTS`): created, written
and closed, modified, attributes changed, moved, deleted. Opening and
reading a file fires "opened" and "closed without writing", which are left
out, so the agent's own reads never wake it. Events under the agent's state
dir and on excluded paths are dropped.

A batch is ready once no event came for `quiet_period` seconds, or
`max_delay` seconds after its first event if they keep coming (a file being
written for an hour is still backed up every `max_delay`). When the kernel's
event queue overflows, events were lost: the watcher asks for a full rescan
(`take_overflow`), as it does when more than `max_dirty` paths pile up (a
full scan is cheaper then). Watches follow new subdirectories by themselves;
a root that does not exist yet is watched once it does (`update`, called
after each full scan).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterable

from watchdog.events import (
    DirAttribEvent,
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import ObservedWatch

from bkup.core.patterns import Excludes

log = logging.getLogger("bkup.agent.watcher")

EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent, FileClosedEvent, FileModifiedEvent, FileAttribEvent, FileMovedEvent, FileDeletedEvent,
    DirCreatedEvent, DirAttribEvent, DirMovedEvent, DirDeletedEvent,
]
try:  # watchdog >= 7 reports lost events (inotify overflow) as an event, only to watches that ask for it
    from watchdog.events import EventsLostEvent
except ImportError:  # older: `Watcher._hook_overflow` sees them
    pass
else:
    EVENTS.append(EventsLostEvent)
MAX_DIRTY = 10_000

# watchdog warns when a directory moved out and back in is re-watched; harmless for us.
warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"watchdog\.")
# Its own log lines (overflow, stop) would bypass ours; we log overflows ourselves.
logging.getLogger("watchdog").setLevel(logging.CRITICAL)


def _under(path: bytes, prefix: bytes) -> bool:
    return path == prefix or path.startswith(prefix.rstrip(b"/") + b"/")


class Watcher:
    """Watches roots; collects dirty paths; says when a batch is ready."""

    def __init__(
        self,
        *,
        quiet_period: float,
        max_delay: float,
        skip: Iterable[bytes] = (),
        on_event: Callable[[], None] | None = None,
        max_dirty: int = MAX_DIRTY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.quiet_period = quiet_period
        self.max_delay = max(max_delay, quiet_period)
        self.skip = tuple(os.fsencode(s) for s in skip)
        self.on_event = on_event or (lambda: None)
        self.max_dirty = max_dirty
        self.clock = clock
        self._lock = threading.Lock()
        self._dirty: set[bytes] = set()
        self._first = self._last = 0.0
        self._overflow = False
        self._roots: list[bytes] = []
        self._excludes = Excludes()
        self._watches: dict[bytes, ObservedWatch] = {}
        self._observer = Observer()
        self._hook_overflow()
        self._observer.start()
        self._handler = _Handler(self)

    # --- what to watch ---------------------------------------------------------------------------

    def update(self, roots: Iterable[bytes], patterns: Iterable[str] = ()) -> list[str]:
        """Watch exactly these (resolved) roots with these exclude patterns; returns the problems (not watched)."""
        roots = [os.fsencode(r) for r in roots]
        problems: list[str] = []
        with self._lock:
            self._roots = sorted(roots, key=len, reverse=True)  # longest first: the innermost root of a path
            self._excludes = Excludes(list(patterns))
        for root in list(self._watches):
            if root not in roots:
                self._unschedule(root)
        for root in roots:
            watch = self._watches.get(root)
            if watch is not None and self._alive(watch):
                continue
            if watch is not None:
                self._unschedule(root)
            if not os.path.exists(root):
                continue  # a missing root: the scan reports it; watched once it appears
            try:
                self._watches[root] = self._observer.schedule(self._handler, root, recursive=True, event_filter=EVENTS)
            except OSError as exc:
                problems.append(f"cannot watch {os.fsdecode(root)}: {exc.strerror or exc}; its changes wait for the next full scan")
        return problems

    def _unschedule(self, root: bytes) -> None:
        try:
            self._observer.unschedule(self._watches.pop(root))
        except (KeyError, OSError):
            pass  # already gone with its root

    def _alive(self, watch: ObservedWatch) -> bool:
        # An emitter stops when its root is deleted; the observer keeps the dead watch around.
        emitters = getattr(self._observer, "_emitter_for_watch", None)  # no public way to ask
        if emitters is None:
            return True
        emitter = emitters.get(watch)
        return emitter is not None and emitter.is_alive()

    @property
    def watched(self) -> list[bytes]:
        return sorted(self._watches)

    def stop(self, timeout: float = 0.5) -> None:
        self._observer.stop()
        self._observer.join(timeout)  # its threads are daemons: no need to wait out their 1 s poll

    # --- events ------------------------------------------------------------------------------------

    def _hook_overflow(self) -> None:
        """Learn about inotify queue overflows, which watchdog before 7 handles internally without an event.

        (watchdog 7 creates its inotify reader only at the first watch, and
        reports an overflow to the handler as an "events_lost" event.)
        """
        fd = getattr(self._observer, "_inotify_fd", None)
        if fd is None:
            return
        original = fd.handle_event

        def handle_event(event: object) -> None:
            if getattr(event, "is_queue_overflow", False):
                self.overflowed()
            original(event)

        fd.handle_event = handle_event

    def overflowed(self) -> None:
        log.warning("file events were lost (inotify queue overflow); a full scan follows")
        with self._lock:
            self._overflow = True
            self._dirty.clear()
        self.on_event()

    def add(self, path: bytes, is_dir: bool) -> None:
        """A change at `path` (unless it is excluded or the agent's own)."""
        if not path or any(_under(path, s) for s in self.skip):
            return
        with self._lock:
            root = next((r for r in self._roots if _under(path, r)), None)
            if root is None or self._excluded(root, path, is_dir):
                return
            now = self.clock()
            if not self._dirty:
                self._first = now
            self._last = now
            self._dirty.add(path)
            if len(self._dirty) > self.max_dirty:
                self._overflow = True
                self._dirty.clear()
                log.info("more than %d changed paths pending; a full scan instead", self.max_dirty)
        self.on_event()

    def _excluded(self, root: bytes, path: bytes, is_dir: bool) -> bool:
        if not self._excludes or path == root:
            return False
        parts = path[len(root.rstrip(b"/")) + 1 :].split(b"/")
        for i in range(1, len(parts) + 1):
            if self._excludes.excluded(os.fsdecode(b"/".join(parts[:i])), is_dir or i < len(parts)):
                return True
        return False

    # --- batches -----------------------------------------------------------------------------------

    def ready_in(self) -> float | None:
        """Seconds until the pending batch is ready (0: now); None when nothing is pending."""
        with self._lock:
            if not self._dirty:
                return None
            now = self.clock()
            due = min(self._last + self.quiet_period, self._first + self.max_delay)
            return max(0.0, due - now)

    def take(self, *, force: bool = False) -> list[bytes]:
        """The dirty paths, if the batch is ready (or `force`); they are no longer pending."""
        wait = self.ready_in()
        if wait is None or (wait > 0 and not force):
            return []
        with self._lock:
            paths, self._dirty = sorted(self._dirty), set()
        return paths

    def put_back(self, paths: Iterable[bytes]) -> None:
        """A watch run failed: its paths are dirty again (ready at once)."""
        with self._lock:
            if not self._dirty:
                self._first = self._last = self.clock() - self.max_delay
            self._dirty.update(paths)

    def take_overflow(self) -> bool:
        """Whether events were lost since the last call (a full scan is needed)."""
        with self._lock:
            lost, self._overflow = self._overflow, False
        return lost

    def discard(self) -> None:
        """A full scan starts now: it covers every change before it."""
        with self._lock:
            self._dirty.clear()

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._dirty)


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: Watcher) -> None:
        self.watcher = watcher

    def dispatch(self, event: FileSystemEvent) -> None:
        if event.event_type == "events_lost":  # watchdog >= 7 reports inotify overflows as an event
            self.watcher.overflowed()
            return
        for path in (event.src_path, getattr(event, "dest_path", b"")):
            if path:
                self.watcher.add(os.fsencode(path), event.is_directory)
