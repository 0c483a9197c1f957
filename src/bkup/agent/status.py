"""The agent's status file (`status.json` in the state dir): what it is doing, for `bkup agent status` and the setup page.

The running agent rewrites it (atomically) whenever something changes:
state (`starting`, `setup`, `idle`, `running`, `error`, `stopped`), the
current run, the last run's result, the last error, its pid. It holds no
secret. A reader checks the pid: a status file whose agent is gone says
"not running", whatever its last state.
"""

from __future__ import annotations

import json
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

STATUS_FILE = "status.json"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class StatusFile:
    """The writer side: `update(**fields)` merges and rewrites the file. Thread-safe."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.path = Path(state_dir) / STATUS_FILE
        self._lock = threading.Lock()
        self.data: dict[str, Any] = {"pid": os.getpid(), "started_at": now_iso(), "state": "starting"}

    def update(self, **fields: Any) -> None:
        with self._lock:
            self.data.update(fields)
            self.data["updated_at"] = now_iso()
            tmp = self.path.with_name(f".{STATUS_FILE}.{os.getpid()}.tmp")
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                tmp.write_text(json.dumps(self.data, indent=2, default=str) + "\n", encoding="utf-8")
                os.replace(tmp, self.path)
            except OSError:
                pass  # a full disk must not stop backups; the status is informative

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return dict(self.data)


def pid_alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: it exists
    return True


def read_status(state_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The status as the agent last wrote it, with `running` (is that agent alive?); None if there is none."""
    path = Path(state_dir) / STATUS_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"running": False, "state": "unknown", "last_error": f"{path}: unreadable"}
    if not isinstance(data, dict):
        return {"running": False, "state": "unknown", "last_error": f"{path}: unreadable"}
    data["running"] = data.get("state") != "stopped" and pid_alive(data.get("pid"))
    return data


def describe(status: dict[str, Any]) -> str:
    """A few lines for people."""
    lines: list[str] = []
    if status.get("running"):
        lines.append(f"agent running (pid {status.get('pid')}): {status.get('state')}")
    else:
        lines.append(f"agent not running (last state {status.get('state')}, at {status.get('updated_at', '?')})")
    if status.get("client"):
        lines.append(f"client: {status['client']} on {status.get('server', '?')}")
    run = status.get("current_run")
    if run and status.get("running"):
        lines.append(f"current run: {run.get('seq')} ({run.get('trigger')}), started {run.get('started_at')}")
    last = status.get("last_run")
    if last:
        text = f"last run: {last.get('seq')} ({last.get('trigger')}) {last.get('status')}, finished {last.get('finished_at')}"
        stats = last.get("stats") or {}
        if stats:
            text += f"; {stats.get('files_changed', 0)} changed, {stats.get('files_deleted', 0)} deleted"
        lines.append(text)
        if last.get("error"):
            lines.append(f"  {last['error']}")
    if status.get("next_full_at"):
        lines.append(f"next full scan: {status['next_full_at']}")
    if status.get("watching") is not None:
        lines.append(f"watching: {', '.join(status['watching']) or 'nothing'}; {status.get('pending', 0)} changed path(s) pending")
    if status.get("setup_url"):
        lines.append(f"setup page: {status['setup_url']}")
    if status.get("last_error"):
        lines.append(f"last error: {status['last_error']}")
    return "\n".join(lines)
