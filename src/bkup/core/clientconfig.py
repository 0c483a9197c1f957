"""The validity rules of a client's configuration, shared by the server (where it is entered) and the agent (where it arrives)."""

from __future__ import annotations

from typing import Any

from bkup.core.patterns import PatternError, compile_patterns
from bkup.core.schedule import Schedule
from bkup.errors import UsageError

MAX_COMMANDS = 32
MAX_TIMEOUT_S = 86400


def check_client_config(config: Any) -> None:
    """Raise UsageError naming the first bad field of a `protocol.ClientConfig`."""
    for i, p in enumerate(config.paths):
        if not isinstance(p, str) or not p.startswith("/") or "\0" in p:
            raise UsageError(f"paths[{i}]: {p!r} is not an absolute path")
    for name in ("include", "exclude"):
        try:
            compile_patterns(getattr(config, name))
        except PatternError as exc:
            raise UsageError(f"{name}: {exc}") from None
    try:
        Schedule.parse(config.schedule)
    except UsageError as exc:
        raise UsageError(f"schedule: {exc}") from None
    if len(config.commands) > MAX_COMMANDS:
        raise UsageError(f"commands: at most {MAX_COMMANDS}")
    for i, c in enumerate(config.commands):
        if not c.command.strip():
            raise UsageError(f"commands[{i}].command: empty command")
        if not 0 < c.timeout_s <= MAX_TIMEOUT_S:
            raise UsageError(f"commands[{i}].timeout_s: must be between 1 and {MAX_TIMEOUT_S} seconds, not {c.timeout_s}")
    if config.bandwidth_limit_kbps is not None and config.bandwidth_limit_kbps <= 0:
        raise UsageError("bandwidth_limit_kbps: must be a positive number of KiB/s, or empty for no limit")
