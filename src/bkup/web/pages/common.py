"""What every page controller shares: dependency aliases and form field helpers."""

from __future__ import annotations

from typing import Annotated, Any

from litestar.di import NamedDependency
from litestar.enums import RequestEncodingType
from litestar.params import Body

from bkup.errors import UsageError
from bkup.server.context import ServerContext
from bkup.server.principal import Principal

Ctx = NamedDependency[ServerContext]
Me = NamedDependency[Principal]  # the signed-in user (web.session.provide_me)
Form = Annotated[dict[str, Any], Body(media_type=RequestEncodingType.URL_ENCODED)]


def text(form: dict[str, Any], name: str, default: str = "") -> str:
    """One form field as a string (the last value if the field came more than once)."""
    value = form.get(name, default)
    if isinstance(value, list):
        value = value[-1] if value else default
    return str(value)


def lines(form: dict[str, Any], name: str) -> list[str]:
    """A multi-line field: one item per non-blank line, trimmed."""
    return [line.strip() for line in text(form, name).splitlines() if line.strip()]


def checkbox(form: dict[str, Any], name: str) -> bool:
    return text(form, name) in ("1", "on", "true", "yes")


def optional_int(form: dict[str, Any], name: str, *, label: str | None = None) -> int | None:
    raw = text(form, name).strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise UsageError(f"{label or name}: {raw!r} is not a whole number") from None
