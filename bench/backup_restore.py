#!/usr/bin/env python3
"""Back up a folder with real `bkup` processes on loopback, restore it, check it, print MB/s (run by hand).

    python bench/backup_restore.py /work/bench-data/real [--work DIR] [--keep]

Starts `bkup serve` (SQLite + local file storage in a temp dir, a random
BKUP_MASTER_KEY), creates a user and a client, runs `bkup agent --once` on
the folder, then `bkup restore` into a fresh folder, and checks the restore
byte-identical (names, kinds, link targets, file bytes). The temp dir is
created next to `--work` (default: a sibling of the folder, so on the same
file system) and removed at the end unless `--keep`.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import BkupServer, compare_trees, tree_stats  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path)
    ap.add_argument("--work", type=Path, default=None, help="where the temp dir goes (default: next to the folder)")
    ap.add_argument("--keep", action="store_true", help="keep the server data and the restored tree")
    a = ap.parse_args()
    src = a.folder.resolve()
    if not src.is_dir():
        ap.error(f"{src} is not a folder")
    files, size = tree_stats(src)
    tmp = Path(tempfile.mkdtemp(prefix="bkup-bench-", dir=a.work or src.parent))
    server = BkupServer(tmp / "server")
    try:
        server.start()
        backup = server.agent(src)
        target = tmp / "restore"
        restore = server.restore(target)
        t = time.perf_counter()
        problem = compare_trees(src, target / str(src).lstrip("/"))
        check = time.perf_counter() - t
        mb = size / 1e6
        print(f"folder   {src}: {files} files, {mb:.1f} MB")
        print(f"backup   {backup.wall:7.2f} s  {mb / backup.wall:7.1f} MB/s  {files / backup.wall:8.0f} files/s"
              f"  agent peak {backup.peak_mb:.0f} MB, server peak {backup.server_peak_mb:.0f} MB")
        print(f"restore  {restore.wall:7.2f} s  {mb / restore.wall:7.1f} MB/s  {files / restore.wall:8.0f} files/s"
              f"  restore peak {restore.peak_mb:.0f} MB, server peak {restore.server_peak_mb:.0f} MB")
        print(f"stored   {server.repo_bytes() / 2**20:.1f} MiB (storage + catalog)")
        print(f"verify   {'byte-identical' if problem is None else 'MISMATCH: ' + problem} ({check:.1f} s)")
        return 0 if problem is None else 1
    finally:
        server.stop()
        if a.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
