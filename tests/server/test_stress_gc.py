"""Short stress run (bench/stress_gc.py has the long one): backups, prune + GC and reads at once lose nothing."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from retention_kit import fast_passwords, make_settings  # noqa: F401

pytestmark = pytest.mark.usefixtures("fast_passwords")
BENCH = Path(__file__).resolve().parents[2] / "bench" / "stress_gc.py"


def _engine():
    if "stress_gc" not in sys.modules:
        spec = importlib.util.spec_from_file_location("stress_gc", BENCH)
        module = importlib.util.module_from_spec(spec)
        sys.modules["stress_gc"] = module  # dataclasses look their module up while the file runs
        spec.loader.exec_module(module)
    return sys.modules["stress_gc"]


@pytest.mark.parametrize("db", ["sqlite", "postgresql"])
def test_backups_prune_and_gc_at_once_lose_nothing(request, tmp_path, db):
    url = None if db == "sqlite" else request.getfixturevalue("pg_url")
    report = _engine().run_stress(make_settings(tmp_path, gc_grace=2), seconds=5, database_url=url)
    print(report.line())
    assert report.errors == []
    assert report.runs >= 6 and report.prune_rounds >= 3 and report.prune_manifests > 0
    assert report.chunks_collected > 0 and report.versions_verified > 0 and report.chunks_verified > 0
