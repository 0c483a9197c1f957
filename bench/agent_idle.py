"""How much an idle agent costs while it watches many files (run by hand): CPU % and RSS of `bkup agent`.

    python bench/agent_idle.py [--files 50000] [--seconds 60] [--keep]

Generates the files (100 per directory, ~100 bytes each) in a temp dir,
starts `bkup serve` and `bkup agent` (watching the files) as separate
processes on loopback, waits for the start-up full scan to finish, then
measures the agent for `--seconds` while nothing changes: CPU time used
(user + system, from /proc) over wall time, and RSS (sampled every second;
VmHWM is the peak since start, the initial scan included). Last, one file is
changed and the time until the watch run has backed it up is reported.
Targets (issue 3): idle CPU < 1 %, RSS < 150 MB.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def memory_kib(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def generate(root: Path, files: int, per_dir: int = 100) -> None:
    for i in range(files):
        d = root / f"d{i // per_dir:04d}"
        if i % per_dir == 0:
            d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:06d}.txt").write_bytes(f"file {i}\n".encode() * 10)


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=50_000)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="bkup-idle-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("BKUP_")}
    env.update(BKUP_DATA_DIR=str(base / "server"), BKUP_CONFIG_DIR=str(base / "config"), BKUP_STATE_DIR=str(base / "state"),
               BKUP_MASTER_KEY=base64.b64encode(os.urandom(32)).decode(), BKUP_SETUP_UI="false", PYTHONUNBUFFERED="1")
    procs: list[subprocess.Popen] = []
    try:
        data = base / "data"
        t0 = time.monotonic()
        generate(data, args.files)
        print(f"generated {args.files} files in {time.monotonic() - t0:.1f} s under {data}", file=sys.stderr)

        port = free_port()
        url = f"http://127.0.0.1:{port}"
        serve_log = open(base / "serve.log", "wb")  # noqa: SIM115 - open as long as the process runs
        procs.append(subprocess.Popen([sys.executable, "-m", "bkup", "serve", "--port", str(port)], env=env,
                                      stdout=serve_log, stderr=subprocess.STDOUT))

        def up() -> bool:
            try:
                return httpx.get(url + "/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, 120, "bkup serve")
        bkup = [sys.executable, "-m", "bkup"]
        subprocess.run([*bkup, "user", "add", "bench", "--password-stdin"], input="bench-password\n", env=env, check=True,
                       capture_output=True, text=True)
        client = json.loads(subprocess.run([*bkup, "client", "add", "bench-pc", "--user", "bench", "--json"], env=env,
                                           check=True, capture_output=True, text=True).stdout)

        agent_log = open(base / "agent.log", "wb")  # noqa: SIM115 - open as long as the process runs
        t_start = time.monotonic()
        agent = subprocess.Popen([*bkup, "agent", "--server", url, "--token", client["token"], "--path", str(data)],
                                 env=env, stdout=agent_log, stderr=subprocess.STDOUT)
        procs.append(agent)
        status_file = base / "state" / "status.json"

        def status() -> dict:
            try:
                return json.loads(status_file.read_text())
            except (FileNotFoundError, ValueError):
                return {}

        first = wait_for(lambda: status().get("last_run"), 1800, "the start-up full scan")
        initial_s = time.monotonic() - t_start
        print(f"start-up full scan: run {first['seq']} {first['status']}, {initial_s:.1f} s after start", file=sys.stderr)
        time.sleep(2.0)  # let the last log lines and heartbeat go out

        pid = agent.pid
        cpu0, wall0 = cpu_seconds(pid), time.monotonic()
        rss_max = 0
        while time.monotonic() - wall0 < args.seconds:
            rss_max = max(rss_max, memory_kib(pid)["VmRSS"])
            time.sleep(1.0)
        cpu1, wall1 = cpu_seconds(pid), time.monotonic()
        mem = memory_kib(pid)
        idle_cpu = 100.0 * (cpu1 - cpu0) / (wall1 - wall0)
        runs_during_idle = status()["last_run"]["seq"] - first["seq"]

        # One change: how long until a watch run has it?
        target = next(data.glob("d0000/*.txt"))
        t_change = time.monotonic()
        target.write_text("changed\n")
        seq = wait_for(lambda: (s := status().get("last_run")) and s["seq"] > first["seq"] + runs_during_idle and s, 60,
                       "the watch run")
        watch_s = time.monotonic() - t_change

        result = {
            "files": args.files,
            "directories": (args.files + 99) // 100,
            "initial_scan_s": round(initial_s, 1),
            "idle_seconds": round(wall1 - wall0, 1),
            "idle_cpu_percent": round(idle_cpu, 3),
            "idle_rss_mb": round(rss_max / 1024, 1),
            "rss_mb_at_end": round(mem["VmRSS"] / 1024, 1),
            "peak_rss_mb_incl_initial_scan": round(mem["VmHWM"] / 1024, 1),
            "runs_while_idle": runs_during_idle,
            "change_to_backed_up_s": round(watch_s, 2),
            "watch_run": {"seq": seq["seq"], "trigger": seq["trigger"], "status": seq["status"]},
        }
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            for k, v in result.items():
                print(f"{k:32} {v}")
            ok = idle_cpu < 1.0 and rss_max / 1024 < 150
            print(f"{'targets (CPU < 1 %, RSS < 150 MB)':32} {'met' if ok else 'MISSED'}")
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
        if args.keep:
            print(f"kept {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
