"""Logs: JSON lines with the documented keys; tokens and passwords never reach a line."""

from __future__ import annotations

import io
import json
import logging

import pytest

from bkup.errors import UsageError
from bkup.logsetup import scrub, setup_logging


@pytest.fixture
def stream():
    buf = io.StringIO()
    yield buf
    for name in ("bkup", "uvicorn", "uvicorn.error", "litestar"):
        logger = logging.getLogger(name)
        for h in list(logger.handlers):
            if getattr(h, "_bkup", False):
                logger.removeHandler(h)
        logger.propagate = True


def test_json_lines_have_the_documented_keys_and_extras(stream):
    setup_logging(json=True, level="info", stream=stream)
    logging.getLogger("bkup.http").info("GET %s %d", "/api/v1/clients", 200, extra={"status": 200, "ms": 1.5})
    logging.getLogger("bkup.x").debug("not at info level")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("uvicorn.error").exception("failed")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 2
    first, second = lines
    assert first["msg"] == "GET /api/v1/clients 200" and first["level"] == "info" and first["logger"] == "bkup.http"
    assert first["status"] == 200 and first["ms"] == 1.5 and first["ts"].endswith("+00:00")
    assert second["level"] == "error" and "RuntimeError: boom" in second["exc"]


def test_secrets_are_masked_in_messages_extras_and_tracebacks(stream):
    setup_logging(json=True, stream=stream)
    log = logging.getLogger("bkup.test")
    log.info("token %s used with Authorization: Bearer abc.def", "bkup_a_SECRET123",
             extra={"password": "hunter2", "url": "postgresql://bkup:pgpass@db/bkup", "body": {"token": "t0p"}})
    try:
        raise ValueError("login password=hunter2 failed for bkup_u_SECRET456")
    except ValueError:
        log.exception("oops")
    out = stream.getvalue()
    for secret in ("SECRET123", "abc.def", "hunter2", "pgpass", "t0p", "SECRET456"):
        assert secret not in out
    assert "bkup_*_***" in out and "postgresql://bkup:***@db/bkup" in out


def test_text_format_and_bad_levels(stream):
    setup_logging(json=False, level="warning", stream=stream)
    logging.getLogger("bkup.x").info("hidden")
    logging.getLogger("bkup.x").warning("shown %s", "bkup_u_zzz", extra={"client": "pc"})
    line = stream.getvalue().strip()
    assert "warning" in line and "bkup.x: shown bkup_*_***" in line and "client=pc" in line and "hidden" not in line
    with pytest.raises(UsageError):
        setup_logging(level="loud")


def test_scrub_leaves_ordinary_text_alone():
    assert scrub("backed up 3 files to s3://bucket/prefix") == "backed up 3 files to s3://bucket/prefix"
