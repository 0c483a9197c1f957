"""Inline SVG charts as plain geometry: the templates draw what these functions compute (no JavaScript, no library)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

WIDTH = 600
HEIGHT = 160
PAD_L, PAD_R, PAD_T, PAD_B = 64, 8, 8, 22
MAX_POINTS = 240
MAX_BAR = 36


@dataclass(frozen=True)
class Tick:
    y: float
    label: str


@dataclass(frozen=True)
class LineChart:
    path: str  # the SVG path of the line
    area: str  # the same, closed down to the axis
    ticks: list[Tick]
    first: str  # x-axis labels: first and last point
    last: str
    points: int
    title: str


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    w: float
    h: float
    status: str
    title: str


@dataclass(frozen=True)
class BarChart:
    bars: list[Bar]
    ticks: list[Tick]
    title: str


WIDTH_INNER = WIDTH - PAD_L - PAD_R
HEIGHT_INNER = HEIGHT - PAD_T - PAD_B


def _nice_max(v: float, *, binary: bool = False, floor: float = 0.0) -> float:
    """The smallest 1/2/5 × 10^k at or above v (× 1024^j first when `binary`, so byte ticks read 125 KiB, not 122.1 KiB)."""
    v = max(v, floor)
    if v <= 0:
        return 1.0
    if binary:
        unit = 1.0
        while v / unit >= 1000:
            unit *= 1024
        return _nice_max(v / unit) * unit
    k = 1.0
    while k * 10 <= v:
        k *= 10
    while k > v:
        k /= 10
    for m in (1, 2, 5, 10):
        if m * k >= v:
            return m * k
    return 10 * k  # pragma: no cover


def _ticks(top: float, fmt: Callable[[float], str], n: int = 4) -> list[Tick]:
    return [Tick(y=PAD_T + HEIGHT_INNER * (1 - i / n), label=fmt(top * i / n)) for i in range(n + 1)]


def _thin(points: Sequence[tuple[datetime, float]]) -> list[tuple[datetime, float]]:
    if len(points) <= MAX_POINTS:
        return list(points)
    step = len(points) / MAX_POINTS
    out = [points[int(i * step)] for i in range(MAX_POINTS - 1)]
    return [*out, points[-1]]


def line_chart(
    points: Sequence[tuple[datetime, float]], fmt: Callable[[float], str], title: str, *, binary: bool = True
) -> LineChart | None:
    """A line over time; None when there is nothing to draw."""
    pts = _thin(points)
    if not pts:
        return None
    t0, t1 = pts[0][0].timestamp(), pts[-1][0].timestamp()
    span = (t1 - t0) or 1.0
    top = _nice_max(max(v for _, v in pts), binary=binary)

    def xy(t: datetime, v: float) -> tuple[float, float]:
        x = PAD_L + (WIDTH_INNER * (t.timestamp() - t0) / span if len(pts) > 1 else WIDTH_INNER / 2)
        y = PAD_T + HEIGHT_INNER * (1 - v / top)
        return round(x, 1), round(y, 1)

    coords = [xy(t, v) for t, v in pts]
    if len(coords) == 1:
        coords = [(PAD_L, coords[0][1]), (PAD_L + WIDTH_INNER, coords[0][1])]
    path = "M" + " L".join(f"{x},{y}" for x, y in coords)
    base = PAD_T + HEIGHT_INNER
    area = f"{path} L{coords[-1][0]},{base} L{coords[0][0]},{base} Z"
    return LineChart(
        path=path, area=area, ticks=_ticks(top, fmt), first=pts[0][0].strftime("%Y-%m-%d"),
        last=pts[-1][0].strftime("%Y-%m-%d"), points=len(points), title=title,
    )


def bar_chart(
    values: Sequence[tuple[str, float, str]], fmt: Callable[[float], str], title: str, *, floor: float = 1.0
) -> BarChart | None:
    """One bar per (label, value, status), oldest left; None when empty. The axis reaches at least `floor`."""
    if not values:
        return None
    top = _nice_max(max(v for _, v, _ in values), floor=floor)
    slot = WIDTH_INNER / len(values)
    w = min(MAX_BAR, max(1.0, slot * 0.7))
    bars = []
    for i, (label, v, status) in enumerate(values):
        h = max(1.0, HEIGHT_INNER * v / top)
        bars.append(
            Bar(
                x=round(PAD_L + i * slot + (slot - w) / 2, 1), y=round(PAD_T + HEIGHT_INNER - h, 1),
                w=round(w, 1), h=round(h, 1), status=status, title=f"{label}: {fmt(v)} ({status})",
            )
        )
    return BarChart(bars=bars, ticks=_ticks(top, fmt), title=title)
