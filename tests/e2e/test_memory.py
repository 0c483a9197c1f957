"""Backing up and restoring a 1 GiB file keeps agent and server peak RSS under 200 MB (streaming everywhere)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from e2e_kit import Bkup, make_env

LIMIT_MB = 200
GIB = 1 << 30


def vm_hwm_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def run_measured(bkup: Bkup, *args: str) -> float:
    """Run a bkup command, polling its high-water mark (ru_maxrss of a child would include our own peak)."""
    proc = subprocess.Popen([sys.executable, "-m", "bkup", *args], env=bkup.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, vm_hwm_mb(proc.pid) or 0.0)
        time.sleep(0.05)
    out, err = proc.communicate()
    assert proc.returncode == 0, err.decode()
    return peak


def test_one_gib_file_in_bounded_memory(tmp_path):
    bkup = Bkup(env=make_env(tmp_path))
    try:
        server = bkup.serve()
        after_start = vm_hwm_mb(server.pid)
        bkup.run("user", "add", "alice", "--password-stdin", input="correct-horse\n")
        token = bkup.json("client", "add", "big", "--user", "alice", "--json")["token"]
        src = tmp_path / "src"
        src.mkdir()
        with open(src / "big.bin", "wb") as f:
            for _ in range(GIB // (8 << 20)):
                f.write(os.urandom(8 << 20))
        agent_peak = run_measured(bkup, "agent", "--server", bkup.url, "--token", token, "--path", str(src), "--once")
        after_backup = vm_hwm_mb(server.pid)
        restore_peak = run_measured(
            bkup, "restore", "--server", bkup.url, "--token", token, "--client", "big", "--target", str(tmp_path / "r")
        )
        server_peak = vm_hwm_mb(server.pid)
        print(f"peak RSS MB: agent {agent_peak:.0f}, restore {restore_peak:.0f}, server {after_start:.0f} at start, {after_backup:.0f} after backup, {server_peak:.0f} after restore")
        assert agent_peak < LIMIT_MB
        assert restore_peak < LIMIT_MB
        assert server_peak is not None and server_peak < LIMIT_MB
        assert (tmp_path / "r" / str(src).lstrip("/") / "big.bin").stat().st_size == GIB
    finally:
        bkup.stop()
