"""Options and helpers shared by the CLI command groups."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import msgspec
import typer

from bkup.settings import Settings, load_settings

DataDir = Annotated[str | None, typer.Option("--data-dir", help="Server data folder (env BKUP_DATA_DIR).", show_default=False)]
DatabaseUrl = Annotated[
    str | None, typer.Option("--database-url", help="Catalog database URL (env BKUP_DATABASE_URL); default SQLite in the data dir.", show_default=False)
]
StorageUrl = Annotated[
    str | None, typer.Option("--storage-url", help="file:///… or s3://bucket/prefix (env BKUP_STORAGE_URL); default a folder in the data dir.", show_default=False)
]
ConfigFile = Annotated[str | None, typer.Option("--config", help="TOML config file (env BKUP_CONFIG).", show_default=False)]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]

def server_settings(config: str | None = None, **flags: Any) -> Settings:
    return load_settings(config, **flags)


def print_json(obj: Any) -> None:
    if isinstance(obj, (msgspec.Struct, list)) or hasattr(obj, "__struct_fields__"):
        sys.stdout.write(msgspec.json.encode(obj).decode() + "\n")
    else:
        sys.stdout.write(json.dumps(obj, default=str) + "\n")


def read_password_stdin() -> str:
    password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        from bkup.errors import UsageError

        raise UsageError("--password-stdin: no password on standard input")
    return password
