#!/usr/bin/env python3
"""bkup against restic and borg on the same data, same machine, same run (run by hand; installs nothing).

    python bench/compare.py [--runs 3] [--only real,big,small] [--tools bkup,restic,borg]
                            [--data /work/bench-data] [--work /work/bench-work] [--keep]

Datasets are those of ../shared/bench/make_datasets.py, built into --data if
missing ("real", "big", "small"; the `_mod` twins are only used to check that
the modification applied here matches). For each dataset, each run and each
tool (interleaved, so machine noise hits all three alike), in a fresh folder:

1. copy the dataset to `src/` (make_datasets' mutate works in place), read it once (warm cache);
2. initial backup; 3. backup with nothing changed; 4. mutate `src/` in place, warm it, backup again;
5. full restore of the latest backup into a fresh folder, checked byte-identical with `src/`.

bkup runs as two processes on loopback (`bkup serve` with SQLite and local
file storage, encryption and zstd on; `bkup agent --once`; `bkup restore`),
restic with a local repository (RESTIC_PASSWORD, default compression), borg
with a local repository (`borg init -e repokey`, default compression lz4).
Peak RSS is each process's VmHWM polled from /proc (the bkup server's is
reset before each phase). Repository bytes: the restic/borg repository
folder; for bkup, storage plus the SQLite catalog. Also shown apart: the
repository without any local index (bkup: storage alone, from which the
catalog can be rebuilt) and the local index (bkup: the catalog; restic: its
cache of index and tree blobs; borg: its cache and security folders, under
BORG_BASE_DIR). Prints medians, writes
every measurement to WORK/compare-results.json. Restored trees are removed
only at the very end (deleting tens of thousands of files slows file
creation here for minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from harness import BkupServer, Measured, compare_trees, dir_bytes, run_measured  # noqa: E402

MAKE_DATASETS = HERE.parent.parent / "shared" / "bench" / "make_datasets.py"
DATASETS = ("real", "big", "small")
TOOLS = ("bkup", "restic", "borg")
PHASES = ("initial", "nochange", "modified", "restore")
PASSWORD = "bench-password-not-secret"


def warm(root: Path) -> None:
    """Read every file once, so each tool starts on a warm page cache (it lasts about a minute here)."""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = os.path.join(dirpath, name)
            if os.path.islink(p):
                continue
            try:
                fd = os.open(p, os.O_RDONLY)
            except OSError:
                continue
            try:
                while os.read(fd, 1 << 20):
                    pass
            finally:
                os.close(fd)


def restored_root(target: Path, src: Path) -> Path:
    return target / str(src).lstrip("/")


# --- one tool, one run ------------------------------------------------------------------------------


class Tool:
    name = ""

    def __init__(self, base: Path) -> None:
        self.base = base

    def setup(self) -> None: ...
    def backup(self, src: Path, n: int) -> Measured: ...
    def restore(self, target: Path) -> Measured: ...
    def repo_bytes(self) -> int: ...
    def storage_bytes(self) -> int:
        """The repository without the tool's local index or cache."""
        return self.repo_bytes()
    def index_bytes(self) -> int: ...
    def teardown(self) -> None: ...
    def server_peak(self, m: Measured) -> float | None:
        return None


class Bkup(Tool):
    name = "bkup"

    def setup(self) -> None:
        self.server = BkupServer(self.base / "bkup")
        self.server.start()

    def backup(self, src: Path, n: int) -> Measured:
        return self.server.agent(src)

    def restore(self, target: Path) -> Measured:
        return self.server.restore(target)

    def repo_bytes(self) -> int:
        return self.server.repo_bytes()

    def storage_bytes(self) -> int:
        return self.server.storage_bytes()

    def index_bytes(self) -> int:
        return self.server.catalog_bytes()

    def teardown(self) -> None:
        self.server.stop()

    def server_peak(self, m: Measured) -> float | None:
        return m.server_peak_mb


class Restic(Tool):
    name = "restic"

    def setup(self) -> None:
        self.repo = self.base / "restic-repo"
        self.env = {**os.environ, "RESTIC_PASSWORD": PASSWORD, "RESTIC_CACHE_DIR": str(self.base / "restic-cache")}
        subprocess.run(["restic", "init", "-q", "-r", str(self.repo)], env=self.env, check=True, capture_output=True)

    def backup(self, src: Path, n: int) -> Measured:
        return run_measured(["restic", "-q", "-r", str(self.repo), "backup", str(src)], env=self.env)

    def restore(self, target: Path) -> Measured:
        return run_measured(["restic", "-q", "-r", str(self.repo), "restore", "latest", "--target", str(target)], env=self.env)

    def repo_bytes(self) -> int:
        return dir_bytes(self.repo)

    def index_bytes(self) -> int:
        return dir_bytes(self.base / "restic-cache")


class Borg(Tool):
    name = "borg"

    def setup(self) -> None:
        self.repo = self.base / "borg-repo"
        self.env = {**os.environ, "BORG_PASSPHRASE": PASSWORD, "BORG_BASE_DIR": str(self.base / "borg-base")}
        subprocess.run(["borg", "init", "-e", "repokey", str(self.repo)], env=self.env, check=True, capture_output=True)

    def backup(self, src: Path, n: int) -> Measured:
        return run_measured(["borg", "create", f"{self.repo}::v{n}", str(src)], env=self.env)

    def restore(self, target: Path) -> Measured:
        target.mkdir(parents=True)
        return run_measured(["borg", "extract", f"{self.repo}::v3"], env=self.env, cwd=str(target))

    def repo_bytes(self) -> int:
        return dir_bytes(self.repo)

    def index_bytes(self) -> int:
        return dir_bytes(self.base / "borg-base")


TOOL_CLASSES = {"bkup": Bkup, "restic": Restic, "borg": Borg}


def one_run(tool_name: str, dataset: str, data: Path, base: Path) -> dict:
    base.mkdir(parents=True)
    src = base / "src"
    subprocess.run(["cp", "-a", str(data / dataset), str(src)], check=True)
    tool = TOOL_CLASSES[tool_name](base)
    tool.setup()
    out: dict = {}
    try:
        size0 = tool.repo_bytes()
        for phase, n in (("initial", 1), ("nochange", 2), ("modified", 3)):
            if phase == "modified":
                subprocess.run([sys.executable, str(MAKE_DATASETS), "mutate", dataset, str(src)], check=True, capture_output=True)
            warm(src)
            m = tool.backup(src, n)
            size = tool.repo_bytes()
            out[phase] = {"wall": m.wall, "peak_mb": m.peak_mb, "server_peak_mb": tool.server_peak(m), "added": size - size0}
            size0 = size
        out["repo_bytes"] = size0
        out["storage_bytes"] = tool.storage_bytes()
        out["index_bytes"] = tool.index_bytes()
        target = base / "restore"
        m = tool.restore(target)
        out["restore"] = {"wall": m.wall, "peak_mb": m.peak_mb, "server_peak_mb": tool.server_peak(m), "added": 0}
        problem = compare_trees(src, restored_root(target, src))
        out["restore_identical"] = problem is None
        if problem:
            print(f"  !! {tool_name} {dataset}: restore differs: {problem}", flush=True)
    finally:
        tool.teardown()
    return out


# --- the table ----------------------------------------------------------------------------------------


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "-"


def table(results: dict, tools: list[str]) -> str:
    lines = []
    head = "| dataset | case | " + " | ".join(tools)
    if "bkup" in tools:
        head += " | " + " | ".join(f"bkup/{t}" for t in tools if t != "bkup")
    lines += [head + " |", "|" + "---|" * (head.count("|") - 0)]
    for dataset, per_tool in results.items():
        def phase_vals(tool: str, phase: str, key: str) -> list[float]:
            return [r[phase][key] for r in per_tool.get(tool, []) if r[phase].get(key) is not None]

        rows: list[tuple[str, dict[str, float], callable]] = []
        for phase in PHASES:
            rows.append((f"{phase} (s)", {t: med(phase_vals(t, phase, "wall")) for t in tools}, lambda v: f"{v:.2f}"))
        for phase in ("initial", "modified"):
            rows.append((f"bytes added, {phase}", {t: med(phase_vals(t, phase, "added")) for t in tools}, mib))
        rows.append(("repository after both versions", {t: med([r["repo_bytes"] for r in per_tool.get(t, [])]) for t in tools}, mib))
        if all("storage_bytes" in r for t in tools for r in per_tool.get(t, [])):
            rows.append(("repository without local index", {t: med([r["storage_bytes"] for r in per_tool.get(t, [])]) for t in tools}, mib))
            rows.append(("local index (bkup catalog; restic, borg cache)", {t: med([r["index_bytes"] for r in per_tool.get(t, [])]) for t in tools}, mib))
        rows.append(("peak RSS, backup (MB)", {t: max([max(phase_vals(t, p, "peak_mb") or [0]) for p in PHASES[:3]]) for t in tools}, lambda v: f"{v:.0f}"))
        rows.append(("peak RSS, restore (MB)", {t: max(phase_vals(t, "restore", "peak_mb") or [0]) for t in tools}, lambda v: f"{v:.0f}"))
        for label, vals, fmt in rows:
            cells = [fmt(vals[t]) for t in tools]
            line = f"| {dataset} | {label} | " + " | ".join(cells)
            if "bkup" in tools:
                line += " | " + " | ".join(ratio(vals["bkup"], vals[t]) for t in tools if t != "bkup")
            lines.append(line + " |")
        if "bkup" in tools:
            sp = max([max(phase_vals("bkup", p, "server_peak_mb") or [0]) for p in PHASES])
            lines.append(f"| {dataset} | bkup server peak RSS (MB) | {sp:.0f} |" + " |" * (len(tools) - 1 + len(tools) - 1))
        ok = all(r["restore_identical"] for t in tools for r in per_tool.get(t, []))
        n = min(len(per_tool.get(t, [])) for t in tools)
        lines.append(f"| {dataset} | restores byte-identical ({n} runs each) | {'all' if ok else 'NO'} |" + " |" * (len(tools) - 1 + len(tools) - 1))
    return "\n".join(lines)


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    mem = next((line.split()[1] for line in open("/proc/meminfo") if line.startswith("MemTotal")), "0")
    versions = []
    for cmd in (["restic", "version"], ["borg", "--version"]):
        versions.append(subprocess.run(cmd, capture_output=True, text=True).stdout.strip().split(" compiled")[0])
    return (f"{os.cpu_count()} CPUs ({cpu}), {int(mem) / 2**20:.1f} GiB RAM, Linux {platform.release()}, "
            f"Python {platform.python_version()}, {', '.join(versions)}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--only", default=",".join(DATASETS))
    ap.add_argument("--tools", default=",".join(TOOLS))
    ap.add_argument("--data", type=Path, default=Path("/work/bench-data"))
    ap.add_argument("--work", type=Path, default=Path("/work/bench-work"))
    ap.add_argument("--keep", action="store_true", help="keep the work folder (repositories, copies, restores)")
    a = ap.parse_args()
    datasets = [d for d in a.only.split(",") if d]
    tools = [t for t in a.tools.split(",") if t]
    for t in tools:
        if t not in TOOLS:
            ap.error(f"unknown tool {t}")
        if t != "bkup" and shutil.which(t) is None:
            sys.exit(f"{t} is not on PATH: install it first (apt-get install {'borgbackup' if t == 'borg' else t})")
    for d in datasets:
        if d not in DATASETS:
            ap.error(f"unknown dataset {d}")
        if not (a.data / d).exists() or not (a.data / f"{d}_mod").exists():
            print(f"building dataset {d} into {a.data} …", flush=True)
            subprocess.run([sys.executable, str(MAKE_DATASETS), "build", "--out", str(a.data), "--only", d], check=True,
                           stdout=subprocess.DEVNULL)
    if a.work.exists() and any(a.work.iterdir()):
        sys.exit(f"{a.work} is not empty: remove it or pass another --work")
    a.work.mkdir(parents=True, exist_ok=True)
    print(machine(), flush=True)
    results: dict = {}
    out_file = a.work / "compare-results.json"
    try:
        for d in datasets:
            results[d] = {}
            for r in range(a.runs):
                for t in tools:
                    base = a.work / f"{d}-{t}-{r}"
                    t0 = time.perf_counter()
                    res = one_run(t, d, a.data, base)
                    results[d].setdefault(t, []).append(res)
                    print(f"{d} run {r + 1} {t}: " + ", ".join(f"{p} {res[p]['wall']:.2f}s" for p in PHASES)
                          + f", +{mib(res['modified']['added'])}, repo {mib(res['repo_bytes'])}"
                          + f" ({time.perf_counter() - t0:.0f} s)", flush=True)
                    if d == "big":  # one huge file: safe to delete now, and it saves disk
                        shutil.rmtree(base, ignore_errors=True)
                    out_file.write_text(json.dumps({"machine": machine(), "results": results}, indent=1))
        print()
        print(table(results, tools))
    finally:
        if not a.keep:
            for child in a.work.iterdir():
                if child != out_file:
                    shutil.rmtree(child, ignore_errors=True)
    return 0 if all(r["restore_identical"] for d in results.values() for rs in d.values() for r in rs) else 1


if __name__ == "__main__":
    sys.exit(main())
