"""Work the server does after answering: one background thread, tasks in the order they were handed in.

`runs.finish_run` hands it what a run's end sets off (the run manifest, then
prune of the paths the run changed), so that `finish` answers as soon as the
run is committed: the agent, and the sysadmin or systemd unit waiting on it,
do not wait for work that concerns only the server. Nothing is lost if the
process dies first: the runs sweep at start (and then periodically) writes
every missing manifest, and the client's next run or `bkup prune` prunes
what was left.

One thread keeps the order: run N's manifest and prune come before run N+1's.
A task's failure is logged and the next task runs.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

log = logging.getLogger("bkup.server.background")


class SerialWorker:
    def __init__(self, name: str = "bkup-after-run") -> None:
        self.name = name
        self._tasks: queue.Queue[tuple[str, Callable[[], object]] | None] = queue.Queue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False

    def submit(self, what: str, task: Callable[[], object]) -> None:
        """Queue `task` (`what` names it in the log); after close(), run it here and now instead."""
        with self._lock:
            if not self._closed:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                    self._thread.start()
                self._tasks.put((what, task))
                return
        _run_one(what, task)

    def wait(self) -> None:
        """Block until every task handed in so far has run (tests; `close`)."""
        self._tasks.join()

    def close(self, wait: float = 60.0) -> None:
        """Stop taking tasks; finish the queued ones for up to `wait` seconds (what is left, the sweep redoes)."""
        with self._lock:
            self._closed = True
            thread = self._thread
        if thread is None:
            return
        self._tasks.put(None)
        thread.join(wait)
        if thread.is_alive():
            log.warning("%s: tasks still queued at shutdown; the runs sweep at the next start finishes them", self.name)

    def _run(self) -> None:
        while True:
            item = self._tasks.get()
            try:
                if item is None:
                    return
                _run_one(*item)
            finally:
                self._tasks.task_done()


def _run_one(what: str, task: Callable[[], object]) -> None:
    try:
        task()
    except Exception:  # noqa: BLE001 - one failed task never stops the ones after it
        log.exception("%s failed", what)
