"""Long crash-consistency run: SIGKILL `bkup serve` N times (default 200) during ingest, commit, prune and GC.

    python bench/crash.py [--kills 200] [--mode exec|cli|app] [--seed 1] [--max-delay 1.0]

`--mode exec` (the default here) starts a real `python -m bkup serve` process
each round; CI's tests/security/test_security_crash.py forks prebuilt apps to
fit 50 kills in ~70 s. Prints the figures as JSON; exits 1 on any loss.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "security"))

from crash_kit import crash_rounds  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=200)
    ap.add_argument("--mode", choices=["exec", "cli", "app"], default="exec")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--max-delay", type=float, default=1.0)
    args = ap.parse_args()
    t = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bkup-crash-") as folder:
        def progress(i, f):
            if (i + 1) % 10 == 0:
                print(f"{i + 1} kills, {f.runs_ok if f.runs_ok else '…'} runs, problems {f.check_problems}", file=sys.stderr)
        figures = crash_rounds(Path(folder), args.kills, seed=args.seed, max_delay=args.max_delay, mode=args.mode,
                               progress=progress)
    out = {**asdict(figures), "phases": dict(figures.phases), "mode": args.mode, "seconds": round(time.monotonic() - t, 1)}
    print(json.dumps(out, indent=2))
    return 0 if (figures.check_problems, figures.lost_versions, figures.bad_bytes) == (0, 0, 0) else 1


if __name__ == "__main__":
    sys.exit(main())
