"""The SVG chart geometry and the page filters: pure functions, table cases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from bkup.web import charts, render


@pytest.mark.parametrize(("v", "binary", "top"), [
    (0, False, 1.0), (0.3, False, 0.5), (7, False, 10), (120, False, 200), (480, False, 500),
    (300 * 1024, True, 500 * 1024), (3 * 2**30, True, 5 * 2**30), (900, True, 1000),
])
def test_axis_tops_are_round_numbers(v, binary, top):
    assert charts._nice_max(v, binary=binary) == pytest.approx(top)


def test_line_chart_spans_the_plot_and_is_empty_without_data():
    assert charts.line_chart([], render.fmt_bytes, "t") is None
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    chart = charts.line_chart([(t0, 0), (t0 + timedelta(days=1), 100 * 1024), (t0 + timedelta(days=2), 200 * 1024)], render.fmt_bytes, "t")
    assert chart.path == "M64.0,138.0 L328.0,73.0 L592.0,8.0"  # left edge to right edge, bottom to top
    assert [t.label for t in chart.ticks] == ["0 B", "50.0 KiB", "100.0 KiB", "150.0 KiB", "200.0 KiB"]
    assert (chart.first, chart.last) == ("2026-01-01", "2026-01-03")
    one = charts.line_chart([(t0, 5)], render.fmt_bytes, "t")  # one point: a flat line across
    assert one.path.count("L") == 1


def test_bar_chart_keeps_status_and_a_sane_axis():
    chart = charts.bar_chart([("a #1", 0.2, "ok"), ("a #2", 0.4, "failed")], render.fmt_duration, "t")
    assert [b.status for b in chart.bars] == ["ok", "failed"]
    assert chart.ticks[-1].label == "1 s" and all(b.w <= charts.MAX_BAR for b in chart.bars)
    assert chart.bars[1].h == pytest.approx(2 * chart.bars[0].h, rel=0.01)
    assert "a #2: 0.4 s (failed)" == chart.bars[1].title


@pytest.mark.parametrize(("n", "text"), [(None, "–"), (0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (5 * 2**40, "5.0 TiB")])
def test_bytes(n, text):
    assert render.fmt_bytes(n) == text


@pytest.mark.parametrize(("s", "text"), [(None, "–"), (0.25, "0.2 s"), (3, "3 s"), (75, "1 min 15 s"), (7265, "2 h 1 min")])
def test_durations(s, text):
    assert render.fmt_duration(s) == text


def test_times_and_urls():
    assert render.fmt_when("2026-11-28T07:00:00+00:00") == "2026-11-28 07:00:00 UTC"
    assert render.fmt_when(1_700_000_000_000_000_000) == "2023-11-14 22:13:20 UTC"
    now = datetime(2026, 1, 2, tzinfo=UTC)
    assert render.fmt_ago("2026-01-01T23:00:00Z", now) == "1 h ago" and render.fmt_ago(None) == "never"
    assert render.url("/x", path="/a b", run=None, at="") == "/x?path=%2Fa+b"
    assert render.fmt_mode(0o644) == "-rw-r--r--" and render.fmt_mode(0o755, "dir") == "drwxr-xr-x"
