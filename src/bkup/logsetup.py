"""Logging for `bkup serve` and `bkup agent`: text or JSON lines on stderr, with secrets scrubbed.

One call, `setup_logging(json=…, level=…)`, configures the `bkup` loggers and
uvicorn's, so that every line a process writes has one shape. JSON lines carry
`ts` (UTC, ISO 8601), `level`, `logger`, `msg`, the fields passed with
`extra={...}` and `exc` for tracebacks.

Tokens and passwords never reach a log line: `SecretFilter` rewrites every
record's message and extra fields, replacing bkup tokens (`bkup_u_…`,
`bkup_a_…`, `bkup_s_…`), `Bearer …` credentials, `password=…`-style pairs and
URL passwords with `***`. Code should not log secrets in the first place;
this is the net under it.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

_SECRET_PATTERNS = (
    (re.compile(r"bkup_[a-z]_[A-Za-z0-9_\-]+"), "bkup_*_***"),
    (re.compile(r"(?i)(bearer\s+)[^\s,;\"']+"), r"\1***"),
    (re.compile(r"(?i)((?:password|passwd|secret|token|master_key)[\"']?\s*[=:]\s*[\"']?)[^\s,;&\"'}]+"), r"\1***"),
    (re.compile(r"(://[^/\s:@]+:)[^/\s@]+@"), r"\1***@"),
)

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName", "color_message"}

# Loggers whose lines we shape; uvicorn's access log is replaced by bkup.http (server.metrics).
LOGGERS = ("bkup", "uvicorn", "uvicorn.error", "litestar")


def scrub(text: str) -> str:
    """`text` with anything that looks like a token or a password replaced by `***`."""
    for pattern, repl in _SECRET_PATTERNS:
        text = pattern.sub(repl, text)
    return text


def _scrub_value(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: "***" if _secret_key(k) else _scrub_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_scrub_value(v) for v in value]
    return value


def _secret_key(key: Any) -> bool:
    k = str(key).lower()
    return any(word in k for word in ("password", "token", "secret", "authorization", "master_key"))


class SecretFilter(logging.Filter):
    """Scrubs the formatted message and the extra fields of every record that passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not lose the line
            message = str(record.msg)
        record.msg, record.args = scrub(message), None
        for key, value in list(vars(record).items()):
            if key not in _STANDARD:
                setattr(record, key, "***" if _secret_key(key) else _scrub_value(value))
        if record.exc_info and not record.exc_text:
            record.exc_text = scrub(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = scrub(record.exc_text)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in out:
                out[key] = value
        if record.exc_info or record.exc_text:
            out["exc"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`2026-11-28T10:00:00Z level logger: message key=value …`."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        extras = " ".join(f"{k}={v}" for k, v in vars(record).items() if k not in _STANDARD)
        line = f"{ts} {record.levelname.lower():7} {record.name}: {record.getMessage()}"
        if extras:
            line += "  " + extras
        if record.exc_info or record.exc_text:
            line += "\n" + (record.exc_text or self.formatException(record.exc_info))
        return line


def setup_logging(*, json: bool = False, level: str = "info", stream: Any = None) -> logging.Handler:
    """Send bkup's and uvicorn's logs to stderr (or `stream`) as text or JSON lines; returns the handler."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        from bkup.errors import UsageError

        raise UsageError(f"log level {level!r}: use debug, info, warning or error")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if json else TextFormatter())
    handler.addFilter(SecretFilter())
    for name in LOGGERS:
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            if getattr(old, "_bkup", False):  # an earlier setup_logging call
                logger.removeHandler(old)
        logger.setLevel(numeric)
        logger.propagate = False
    handler._bkup = True  # type: ignore[attr-defined]
    for name in LOGGERS:
        logging.getLogger(name).addHandler(handler)
    logging.getLogger("uvicorn.access").disabled = True
    return handler

