"""Test helpers: building trees with awkward names, snapshots to compare restores, a call-counting API client."""

from __future__ import annotations

import os
import random
from collections import Counter
from pathlib import Path

from bkup.agent.api import ApiClient
from bkup.agent.backup import BackupResult, run_backup
from bkup.agent.state import StateCache

from tests.trees import snapshot  # noqa: F401 - re-exported to the agent tests


def rand(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def make_tree(root: Path) -> None:
    """Files, dirs, symlinks, odd modes and names Linux allows (invalid UTF-8, newline, backslash)."""
    b = os.fsencode(root)
    (root / "docs" / "deep").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    (root / "docs" / "a.txt").write_text("hello\n" * 1000)
    (root / "docs" / "deep" / "big.bin").write_bytes(rand(3 * 1024 * 1024 + 5, seed=1))
    (root / "docs" / "copy.bin").write_bytes((root / "docs" / "deep" / "big.bin").read_bytes())
    (root / "empty.txt").write_bytes(b"")
    (root / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(root / "run.sh", 0o4755)
    (root / "secret").write_text("s")
    os.chmod(root / "secret", 0o600)
    os.symlink("docs/a.txt", root / "link")
    os.symlink("/nonexistent/target", root / "dangling")
    odd = os.path.join(b, b"odd \xff\xfe dir")
    os.mkdir(odd)
    with open(os.path.join(odd, b"new\nline \\ back\\x41"), "wb") as f:
        f.write(b"odd")
    (root / "unicod\u00e9 \u2603.txt").write_text("snow")
    os.chmod(root / "docs" / "deep", 0o750)
    os.utime(root / "docs" / "a.txt", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    os.utime(root / "docs", ns=(1_500_000_000_000_000_000, 1_500_000_000_000_000_000))


def restored(target: Path, src: Path) -> Path:
    return target / str(src.resolve()).lstrip("/")


class SpyApi(ApiClient):
    """An ApiClient that counts calls, uploaded frames and committed entries."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls: Counter[str] = Counter()
        self.frames_uploaded = 0
        self.entries_committed = 0
        self.sent_entries: list = []

    def upload(self, frames):
        frames = list(frames)
        self.calls["upload"] += 1
        self.frames_uploaded += len(frames)
        return super().upload(frames)

    def commit(self, run_id, entries):
        self.calls["commit"] += 1
        self.sent_entries += entries
        result = super().commit(run_id, entries)
        self.entries_committed += result.committed
        return result

    def missing(self, ids):
        self.calls["missing"] += 1
        return super().missing(ids)

    def delete_paths(self, run_id, paths):
        self.calls["delete"] += 1
        return super().delete_paths(run_id, paths)


def backup(api: ApiClient, client_id: int, state_dir: Path, roots: list, excludes: list[str] | None = None, **kw) -> BackupResult:
    with StateCache.open(state_dir, server=api.server, client_id=client_id) as cache:
        return run_backup(api, [str(r) for r in roots], excludes or [], cache, **kw)
