"""The entry point: `--setup-ui HOST:PORT` as the contract spells it, errors as messages."""

from __future__ import annotations

import subprocess
import sys

from bkup.cli.main import _optional_values


def test_setup_ui_takes_an_optional_address():
    assert _optional_values(["agent", "--setup-ui", "0.0.0.0:9090", "--once"]) == [
        "agent", "--setup-ui", "--setup-ui-listen", "0.0.0.0:9090", "--once"]
    assert _optional_values(["agent", "--setup-ui", "--server", "http://h:1"]) == ["agent", "--setup-ui", "--server", "http://h:1"]
    assert _optional_values(["agent", "--setup-ui"]) == ["agent", "--setup-ui"]


def test_errors_are_messages_not_tracebacks(tmp_path):
    r = subprocess.run([sys.executable, "-m", "bkup", "ls", "--server", "http://127.0.0.1:9", "--token", "t", "--client", "x"],
                       capture_output=True, text=True, env={"BKUP_CONFIG_DIR": str(tmp_path), "BKUP_STATE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1].startswith("error: cannot reach server") and "Traceback" not in r.stderr


def test_the_command_does_not_load_what_it_never_uses():
    """Every agent run starts a process: httpx's own CLI (rich, pygments) and trio stay unloaded, and httpx still works."""
    code = ("import sys; sys.argv = ['bkup', 'agent', '--help']; import bkup.cli.main as m\n"
            "try: m.main()\nexcept SystemExit: pass\n"
            "import httpx, httpcore; httpcore.ConnectionPool().close()\n"
            "print(sys.modules.get('httpx._main') is None, sys.modules.get('trio') is None, callable(httpx.Client))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[-3:] == ["True", "True", "True"]
