"""Progress reporting for backup and restore: a rich bar on a terminal, periodic plain lines otherwise, or nothing.

Progress goes to stderr, so `--json` output on stdout stays clean. Backup
does not know its totals in advance (no pre-scan), so it shows counts and
rate; restore knows them and shows a bar and an ETA.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Protocol, TextIO


class Progress(Protocol):
    def start(self, title: str, *, total_files: int | None = None, total_bytes: int | None = None) -> None: ...

    def advance(self, *, files: int = 0, bytes: int = 0) -> None: ...

    def finish(self) -> None: ...


class NullProgress:
    """Reports nothing (tests, --quiet)."""

    def start(self, title: str, *, total_files: int | None = None, total_bytes: int | None = None) -> None:
        pass

    def advance(self, *, files: int = 0, bytes: int = 0) -> None:
        pass

    def finish(self) -> None:
        pass


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def format_duration(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}"


class LineProgress:
    """One plain line every `interval` seconds and a last one at the end (logs, pipes, CI)."""

    def __init__(self, stream: TextIO | None = None, *, interval: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self.clock = clock
        self.title = ""
        self.files = self.bytes = 0
        self.total_files: int | None = None
        self.total_bytes: int | None = None
        self._started = self._last = 0.0

    def start(self, title: str, *, total_files: int | None = None, total_bytes: int | None = None) -> None:
        self.title, self.total_files, self.total_bytes = title, total_files, total_bytes
        self.files = self.bytes = 0
        self._started = self._last = self.clock()

    def advance(self, *, files: int = 0, bytes: int = 0) -> None:
        self.files += files
        self.bytes += bytes
        now = self.clock()
        if now - self._last >= self.interval:
            self._last = now
            self._print(now)

    def finish(self) -> None:
        self._print(self.clock(), final=True)

    def line(self, now: float, final: bool = False) -> str:
        elapsed = max(now - self._started, 1e-9)
        rate = self.bytes / elapsed
        files = f"{self.files}" + (f"/{self.total_files}" if self.total_files is not None else "")
        size = format_bytes(self.bytes) + (f"/{format_bytes(self.total_bytes)}" if self.total_bytes is not None else "")
        text = f"{self.title}: {files} files, {size}, {format_bytes(rate)}/s"
        if final:
            text += f", done in {format_duration(elapsed)}"
        elif self.total_bytes and rate > 0:
            text += f", ETA {format_duration(max(self.total_bytes - self.bytes, 0) / rate)}"
        return text

    def _print(self, now: float, final: bool = False) -> None:
        self.stream.write(self.line(now, final) + "\n")
        self.stream.flush()


class RichProgress:
    """A live bar on a terminal: files, bytes, rate and (when the total is known) ETA."""

    def __init__(self, stream: TextIO | None = None) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )
        from rich.progress import Progress as Bar

        self._bar = Bar(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[files]} files"),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=Console(file=stream if stream is not None else sys.stderr),
            transient=False,
        )
        self._task = None
        self._files = 0
        self._total_files: int | None = None

    def start(self, title: str, *, total_files: int | None = None, total_bytes: int | None = None) -> None:
        self._files, self._total_files = 0, total_files
        self._bar.start()
        self._task = self._bar.add_task(title, total=total_bytes, files=self._files_text())

    def advance(self, *, files: int = 0, bytes: int = 0) -> None:
        self._files += files
        self._bar.update(self._task, advance=bytes, files=self._files_text())

    def finish(self) -> None:
        if self._task is not None:
            task = self._bar.tasks[0]
            if task.total is None:
                self._bar.update(self._task, total=task.completed)
        self._bar.stop()

    def _files_text(self) -> str:
        return f"{self._files}" + (f"/{self._total_files}" if self._total_files is not None else "")


def make_progress(enabled: bool = True, stream: TextIO | None = None) -> Progress:
    """A bar on a terminal, plain lines elsewhere, nothing when disabled."""
    if not enabled:
        return NullProgress()
    stream = stream if stream is not None else sys.stderr
    return RichProgress(stream) if stream.isatty() else LineProgress(stream)
