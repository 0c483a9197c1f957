"""bkup.runtime's allocator tuning, by its effect: page faults while big buffers come and go."""

from __future__ import annotations

import ctypes.util
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc" or not ctypes.util.find_library("c"),
    reason="mallopt is glibc's",
)

# Twenty 4 MiB buffers (a chunk at its largest) written through, every page touched, and freed, from two threads.
CHURN = """
import ctypes, ctypes.util, resource, sys, threading
from bkup import runtime
if sys.argv[1] == "bkup":
    runtime.tune_malloc()
else:  # what bkup did before: every buffer of 1 MiB or more mmapped
    ctypes.CDLL(ctypes.util.find_library("c")).mallopt(runtime.M_MMAP_THRESHOLD, 1 << 20)
def churn(n):
    for i in range(n):
        b = bytes([i % 256]) * (4 << 20); del b
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
churn(3)
before = faults()
threads = [threading.Thread(target=churn, args=(10,)) for _ in range(2)]
for t in threads: t.start()
for t in threads: t.join()
print(faults() - before)
"""


def _faults(profile: str) -> int:
    return int(subprocess.run([sys.executable, "-c", CHURN, profile], capture_output=True, text=True, check=True).stdout)


def test_big_buffers_are_reused_not_mapped_and_zeroed_afresh():
    pages = 20 * (4 << 20) // 4096
    assert _faults("mmap") > pages // 2  # the measure sees fresh pages: each buffer a new mapping
    assert _faults("bkup") < pages // 10  # the heap keeps freed buffers and hands them out again


# The bkup command's start-up, then a burst of short-lived containers like a backup's entries.
BURST = """
import gc, sys
import bkup.cli.main as m
sys.argv = ["bkup", "--help"]
try:
    m.main()
except SystemExit:
    pass
before = sum(s["collections"] for s in gc.get_stats())
keep = []
for i in range(200_000):
    keep.append({"path": f"/data/{i}", "size": i})
    if len(keep) > 1000:
        keep.clear()
print(sum(s["collections"] for s in gc.get_stats()) - before, gc.get_freeze_count())
"""


def test_the_cycle_collector_runs_seldom_and_skips_what_start_up_made():
    out = subprocess.run([sys.executable, "-c", BURST], capture_output=True, text=True, check=True).stdout.split()
    collections, frozen = int(out[-2]), int(out[-1])
    assert collections <= 20, collections  # ~200 at Python's default threshold of 700
    assert frozen > 10_000, frozen  # modules, classes and functions loaded by the start-up
