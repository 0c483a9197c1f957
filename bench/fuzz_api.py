"""Long hostile-input run: schemathesis with many examples per operation, and the parser fuzz scaled up.

    python bench/fuzz_api.py [--examples 200]

Runs tests/security/test_security_schemathesis.py and
test_security_parser_fuzz.py with BKUP_FUZZ_EXAMPLES set; the schemathesis
figures (cases, server errors, statuses) are printed at the end.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=200)
    args = ap.parse_args()
    env = {**os.environ, "BKUP_FUZZ_EXAMPLES": str(args.examples)}
    tests = ["tests/security/test_security_schemathesis.py", "tests/security/test_security_parser_fuzz.py"]
    return subprocess.call([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:randomly", "--timeout", "0", *tests],
                           cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main())
