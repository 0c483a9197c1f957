"""Shared pieces of the hand-run benchmarks: a measured process, a bkup server on loopback, tree comparison.

Peak RSS is read from /proc/PID/status (VmHWM) while polling, never from
ru_maxrss (a child's ru_maxrss starts from its parent's peak at fork). The
long-running server's high-water mark is reset between phases by writing 5
to /proc/PID/clear_refs (Linux ≥ 4.0), so each phase reports its own peak.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from blake3 import blake3

POLL_SECONDS = 0.02


def vm_hwm_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def reset_hwm(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakWatcher:
    """Polls the VmHWM of some pids in a thread; `peaks` holds the highest seen per pid."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.peaks = {pid: 0.0 for pid in pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in self.pids:
                self.peaks[pid] = max(self.peaks[pid], vm_hwm_mb(pid))
            self._stop.wait(POLL_SECONDS)

    def __enter__(self) -> PeakWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        for pid in self.pids:  # one last look (a live process keeps its mark)
            self.peaks[pid] = max(self.peaks[pid], vm_hwm_mb(pid))


@dataclass
class Measured:
    wall: float
    peak_mb: float
    server_peak_mb: float
    stdout: str
    stderr: str


def run_measured(cmd: list[str], *, env: dict[str, str] | None = None, cwd: str | None = None,
                 server_pid: int | None = None, input: str | None = None) -> Measured:
    """Run a command to its end; wall time, its peak RSS and (if given) the server's peak meanwhile."""
    if server_pid:
        reset_hwm(server_pid)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdin=subprocess.PIPE if input else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pids = [proc.pid] + ([server_pid] if server_pid else [])
    with PeakWatcher(pids) as watch:
        out, err = proc.communicate(input)
        wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}\n{out[-3000:]}\n{err[-3000:]}")
    return Measured(wall, watch.peaks[proc.pid], watch.peaks.get(server_pid, 0.0) if server_pid else 0.0, out, err)


# --- bkup on loopback ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BkupServer:
    """`bkup serve` in its own process on loopback, SQLite + local file storage in `base`."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.storage = base / "storage"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("BKUP_")}
        self.env.update(
            BKUP_DATA_DIR=str(base / "server-data"),
            BKUP_CONFIG_DIR=str(base / "config"),
            BKUP_STATE_DIR=str(base / "agent-state"),
            BKUP_STORAGE_URL=f"file://{self.storage}",
            BKUP_MASTER_KEY=base64.b64encode(os.urandom(32)).decode(),
            BKUP_LOG_LEVEL="warning",
            PYTHONUNBUFFERED="1",
        )
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self.token = ""

    def bkup(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "bkup", *args]

    def start(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        port = free_port()
        log = open(self.base / "serve.log", "w")
        self.proc = subprocess.Popen(self.bkup("serve", "--port", str(port)), env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bkup serve exited: {(self.base / 'serve.log').read_text()}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError("bkup serve did not come up in 60 s")
        subprocess.run(self.bkup("user", "add", "bench", "--password-stdin"), input="bench-password-1\n",
                       env=self.env, check=True, capture_output=True, text=True)
        out = subprocess.run(self.bkup("client", "add", "bench", "--user", "bench", "--json"),
                             env=self.env, check=True, capture_output=True, text=True).stdout
        self.token = json.loads(out)["token"]

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def agent(self, path: str | Path) -> Measured:
        m = run_measured(self.bkup("agent", "--server", self.url, "--token", self.token, "--path", str(path), "--once", "--json"),
                         env=self.env, server_pid=self.pid)
        return m

    def restore(self, target: str | Path) -> Measured:
        return run_measured(self.bkup("restore", "--server", self.url, "--token", self.token, "--client", "bench",
                                      "--target", str(target)), env=self.env, server_pid=self.pid)

    def repo_bytes(self) -> int:
        """Storage (packs, manifests, keys) plus the catalog database."""
        return self.storage_bytes() + self.catalog_bytes()

    def storage_bytes(self) -> int:
        """Packs, run manifests and keys: all a restore or a catalog rebuild needs."""
        return dir_bytes(self.storage)

    def catalog_bytes(self) -> int:
        """The SQLite catalog (with its WAL): the server's index of storage, rebuildable from it."""
        return dir_bytes(Path(self.env["BKUP_DATA_DIR"]), suffixes=(".db", ".db-wal", ".sqlite", ".sqlite-wal"))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def dir_bytes(root: Path, suffixes: tuple[str, ...] | None = None) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            if suffixes is not None and not name.endswith(suffixes):
                continue
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except FileNotFoundError:
                pass
    return total


# --- trees -------------------------------------------------------------------------------------------


def tree_digest(root: Path) -> dict[bytes, tuple]:
    """rel path → (kind, size, BLAKE3) for files, (kind, target) for symlinks, (kind,) for dirs."""
    out: dict[bytes, tuple] = {}
    broot = os.fsencode(root)
    for dirpath, dirnames, filenames in os.walk(broot):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            rel = os.path.relpath(p, broot)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir",)
            elif stat.S_ISREG(st.st_mode):
                h = blake3()
                fd = os.open(p, os.O_RDONLY)
                try:
                    while block := os.read(fd, 1 << 20):
                        h.update(block)
                finally:
                    os.close(fd)
                out[rel] = ("file", st.st_size, h.hexdigest())
    return out


def compare_trees(expected: Path, actual: Path) -> str | None:
    """None if both trees hold the same names, kinds, link targets and file bytes; else the first difference."""
    a, b = tree_digest(expected), tree_digest(actual)
    if a == b:
        return None
    only_a = sorted(set(a) - set(b))
    only_b = sorted(set(b) - set(a))
    if only_a:
        return f"{len(only_a)} missing from the restore, e.g. {only_a[0]!r}"
    if only_b:
        return f"{len(only_b)} extra in the restore, e.g. {only_b[0]!r}"
    diff = [k for k in a if a[k] != b[k]]
    return f"{len(diff)} differ, e.g. {diff[0]!r}: {a[diff[0]]} vs {b[diff[0]]}"


def tree_stats(root: Path) -> tuple[int, int]:
    """(regular files, bytes) under root."""
    files = size = 0
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISREG(st.st_mode):
                files += 1
                size += st.st_size
    return files, size
