"""One settings object for server, agent and CLI: defaults < config file < environment < flags.

Every setting has one `BKUP_*` environment variable, named after the field in
upper case (`data_dir` → `BKUP_DATA_DIR`). The config file is TOML with the
same field names (`--config`, `BKUP_CONFIG`, or `bkup.toml` in the config dir).
docs/settings.md documents every field; a test fails when one is missing.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import platformdirs

APP = "bkup"


def _default_data_dir() -> str:
    return platformdirs.user_data_dir(APP)


def _default_config_dir() -> str:
    return platformdirs.user_config_dir(APP)


def _default_state_dir() -> str:
    return platformdirs.user_state_dir(APP)


@dataclass(frozen=True)
class Settings:
    # server
    data_dir: str = field(default_factory=_default_data_dir)
    config_dir: str = field(default_factory=_default_config_dir)
    database_url: str = ""  # default: sqlite file in data_dir
    storage_url: str = ""  # default: file:// folder in data_dir
    s3_endpoint_url: str = ""  # for MinIO and other S3-compatible stores
    master_key: str = ""  # base64 of 32 bytes; wins over master_key_file
    master_key_file: str = ""  # default: <config_dir>/master.key
    host: str = "127.0.0.1"
    port: int = 8200
    # agent and client commands
    server: str = ""
    token: str = ""
    state_dir: str = field(default_factory=_default_state_dir)

    SECRET_FIELDS = ("master_key", "token")

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{Path(self.data_dir) / 'catalog.db'}"

    @property
    def effective_storage_url(self) -> str:
        return self.storage_url or (Path(self.data_dir) / "store").as_uri()

    @property
    def effective_master_key_file(self) -> Path:
        return Path(self.master_key_file) if self.master_key_file else Path(self.config_dir) / "master.key"

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


def env_name(field_name: str) -> str:
    return "BKUP_" + field_name.upper()


def _coerce(value: str, type_name: str) -> Any:
    return int(value) if type_name == "int" else value


def load_settings(config_file: str | None = None, env: dict[str, str] | None = None, **flags: Any) -> Settings:
    """Build the effective settings. `flags` set to None are "not given"."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    path = config_file or env.get("BKUP_CONFIG")
    if not path:
        config_dir = flags.get("config_dir") or env.get("BKUP_CONFIG_DIR") or _default_config_dir()
        candidate = Path(config_dir) / "bkup.toml"
        path = str(candidate) if candidate.is_file() else None
    known = {f.name: f for f in fields(Settings)}
    if path:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"{path}: unknown setting(s): {', '.join(unknown)}")
        values.update(data)
    for name, f in known.items():
        if env_name(name) in env and env[env_name(name)] != "":
            values[name] = _coerce(env[env_name(name)], str(f.type))
    values.update({k: v for k, v in flags.items() if v is not None})
    return Settings(**values)
