"""Documentation stays complete: every setting and every command is documented."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from bkup.settings import Settings, env_name

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_every_setting_is_documented():
    text = (DOCS / "settings.md").read_text()
    missing = [f.name for f in dataclasses.fields(Settings) if f"`{f.name}`" not in text or f"`{env_name(f.name)}`" not in text]
    assert missing == []


def test_every_command_is_documented():
    import typer.main

    from bkup.cli import main

    main._register()
    group = typer.main.get_command(main.app)
    text = (DOCS / "cli.md").read_text()
    missing = []

    def walk(cmd, prefix):
        for name, sub in getattr(cmd, "commands", {}).items():
            full = f"{prefix} {name}"
            if f"`{full}" not in text:
                missing.append(full)
            for param in sub.params:
                for opt in getattr(param, "opts", []):
                    if opt.startswith("--") and opt not in ("--help",) and f"`{opt}" not in text:
                        missing.append(f"{full} {opt}")
            walk(sub, full)

    walk(group, "bkup")
    assert missing == []
