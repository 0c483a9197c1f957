"""Progress: plain periodic lines off a terminal, a rich bar on one, nothing for tests."""

from __future__ import annotations

import io

from bkup.agent.progress import LineProgress, NullProgress, RichProgress, format_bytes, make_progress


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_line_progress_prints_periodically_with_rate_and_eta():
    out, clock = io.StringIO(), Clock()
    p = LineProgress(out, interval=10, clock=clock)
    p.start("restore run 3", total_files=4, total_bytes=400 * 1024 * 1024)
    clock.now += 5
    p.advance(files=1, bytes=100 * 1024 * 1024)
    assert out.getvalue() == ""  # not yet: one line per interval
    clock.now += 5
    p.advance(files=1, bytes=100 * 1024 * 1024)
    assert out.getvalue() == "restore run 3: 2/4 files, 200.0 MiB/400.0 MiB, 20.0 MiB/s, ETA 0:00:10\n"
    p.finish()
    assert out.getvalue().splitlines()[-1] == "restore run 3: 2/4 files, 200.0 MiB/400.0 MiB, 20.0 MiB/s, done in 0:00:10"


def test_make_progress_picks_by_terminal():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert isinstance(make_progress(stream=io.StringIO()), LineProgress)
    assert isinstance(make_progress(stream=Tty()), RichProgress)
    assert isinstance(make_progress(enabled=False), NullProgress)


def test_rich_progress_runs_with_and_without_totals():
    for totals in ({}, {"total_files": 2, "total_bytes": 2048}):
        out = io.StringIO()
        p = RichProgress(out)
        p.start("backup", **totals)
        p.advance(files=1, bytes=1024)
        p.finish()
        assert "backup" in out.getvalue()


def test_format_bytes():
    assert [format_bytes(n) for n in (0, 1023, 1024, 5 * 1024**3)] == ["0 B", "1023 B", "1.0 KiB", "5.0 GiB"]
