"""Turning page data into HTML: the Jinja environment, its filters, the common page context, flash messages.

Every page goes through `page()`, which adds what `base.html` needs: the
signed-in user (`me`), the CSRF token for forms (`csrf`), and the flash
message left by the previous POST (`flash`). Times are shown in UTC on the
server side; `bkup.js` rewrites them to the browser's local time when
JavaScript runs.
"""

from __future__ import annotations

import base64
import json
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from litestar import Request, Response
from litestar.datastructures import Cookie
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect, Template
from litestar.template.config import TemplateConfig

from bkup.web import session

TEMPLATES = Path(__file__).parent / "templates"
FLASH_COOKIE = "bkup_flash"
# Every page: no caching of private data, no framing, nothing loaded from elsewhere, no inline script.
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
}
MAX_FLASH = 600


# --- filters ------------------------------------------------------------------------------------


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "–"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover


def to_datetime(value: str | datetime | int | None) -> datetime | None:
    """An ISO string (the protocol's times), a datetime, or nanoseconds since the epoch (mtimes)."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        t = value
    elif isinstance(value, int):
        t = datetime.fromtimestamp(value / 1e9, UTC)
    else:
        t = datetime.fromisoformat(value)
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def fmt_when(value: str | datetime | int | None) -> str:
    t = to_datetime(value)
    return "–" if t is None else t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def iso_attr(value: str | datetime | int | None) -> str:
    t = to_datetime(value)
    return "" if t is None else t.astimezone(UTC).isoformat(timespec="seconds")


def fmt_ago(value: str | datetime | None, now: datetime | None = None) -> str:
    t = to_datetime(value)
    if t is None:
        return "never"
    secs = int(((now or datetime.now(UTC)) - t).total_seconds())
    if secs < 0:
        return "just now"
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if secs >= size:
            return f"{secs // size} {unit} ago"
    return f"{secs} s ago"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 10:
        return f"{seconds:.1f} s".replace(".0 s", " s")
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


def run_seconds(run: Any) -> float | None:
    """How long a run took (None while it runs)."""
    start, end = to_datetime(run.started_at), to_datetime(run.finished_at)
    return None if start is None or end is None else max(0.0, (end - start).total_seconds())


def fmt_mode(mode: int, kind: str = "file") -> str:
    type_bits = {"dir": stat.S_IFDIR, "symlink": stat.S_IFLNK}.get(kind, stat.S_IFREG)
    return stat.filemode(type_bits | (mode & 0o7777))


def url(_base: str, /, **params: Any) -> str:
    """`_base` with the given query parameters, leaving out the ones that are None or empty."""
    q = {k: v for k, v in params.items() if v is not None and v != ""}
    return _base + ("?" + urlencode(q) if q else "")


def make_environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(default=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        bytes=fmt_bytes, when=fmt_when, iso=iso_attr, ago=fmt_ago, duration=fmt_duration, filemode=fmt_mode,
        run_seconds=run_seconds,
    )
    env.globals.update(url=url)
    return env


def template_config() -> TemplateConfig:
    return TemplateConfig(instance=JinjaTemplateEngine.from_environment(make_environment()))


# --- flash messages -------------------------------------------------------------------------------
# A one-shot message for the page after a redirect, carried in a cookie so that
# it works on any replica. The text is always rendered escaped.


def flash_cookie(text: str, kind: str = "ok") -> Cookie:
    raw = json.dumps({"kind": kind, "text": text[:MAX_FLASH]}).encode()
    return Cookie(key=FLASH_COOKIE, value=base64.urlsafe_b64encode(raw).decode(), path="/", httponly=True, samesite="lax")


def read_flash(request: Request) -> dict[str, str] | None:
    raw = request.cookies.get(FLASH_COOKIE)
    if not raw:
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(raw.encode()))
        return {"kind": "error" if data.get("kind") == "error" else "ok", "text": str(data["text"])[:MAX_FLASH]}
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def clear_flash() -> Cookie:
    return Cookie(key=FLASH_COOKIE, value="", path="/", max_age=0, httponly=True, samesite="lax")


# --- responses ----------------------------------------------------------------------------------------


def page(request: Request, template: str, *, status: int = 200, cookies: list[Cookie] | None = None, **context: Any) -> Template:
    """Render one page with the context every page shares."""
    out_cookies = list(cookies or [])
    flash = read_flash(request)
    if flash is not None:
        out_cookies.append(clear_flash())
    return Template(
        template_name=template,
        context={
            "me": request.state.get("me"),
            "csrf": session.csrf_token(request),
            "flash": flash,
            "path": request.url.path,
            **context,
        },
        status_code=status,
        cookies=out_cookies,
        headers=PAGE_HEADERS,
    )


def redirect(to: str, message: str | None = None, *, kind: str = "ok", cookies: list[Cookie] | None = None) -> Response:
    """POST/redirect/GET: go to `to` (303) with an optional flash message."""
    out = list(cookies or [])
    if message:
        out.append(flash_cookie(message, kind))
    return Redirect(path=to, status_code=303, cookies=out)
