"""The allocator profiles of bkup.runtime, by their effect: page faults when big buffers come and go."""

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

# Twenty 8 MiB buffers written through (every page touched) and freed, as a restore's batches are.
CHURN = """
import resource, sys
from bkup import runtime
getattr(runtime, sys.argv[1])()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    b = b"x" * (8 << 20); del b
before = faults()
for i in range(20):
    b = bytes([i]) * (8 << 20); del b
print(faults() - before)
"""


def _faults(profile: str) -> int:
    out = subprocess.run([sys.executable, "-c", CHURN, profile], capture_output=True, text=True, check=True).stdout
    return int(out)


def test_a_restore_reuses_its_buffers_where_the_start_up_profile_returns_them():
    pages = 20 * (8 << 20) // 4096
    start_up = _faults("tune_malloc")
    restore = _faults("tune_malloc_for_restore")
    assert start_up > pages // 2, start_up  # each buffer a fresh mapping: the memory went back to the kernel
    assert restore < pages // 20, restore  # the heap keeps and reuses it
