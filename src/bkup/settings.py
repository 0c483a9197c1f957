"""One settings object for server, agent and CLI: defaults < config file < environment < flags.

Every setting has one `BKUP_*` environment variable, named after the field in
upper case (`data_dir` → `BKUP_DATA_DIR`). The config file is TOML with the
same field names (`--config`, `BKUP_CONFIG`, or `bkup.toml` in the config dir).
docs/settings.md documents every field; a test fails when one is missing.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import platformdirs

from bkup.errors import ConfigError

APP = "bkup"


class SettingsError(ConfigError, ValueError):
    """A setting that cannot be read: unknown key, wrong type (a user error, exit 1)."""


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
    tls_cert: str = ""  # PEM certificate (chain) file: `bkup serve` speaks HTTPS itself (with tls_key)
    tls_key: str = ""  # PEM private key file of tls_cert
    # retention and garbage collection (docs/retention.md); durations in seconds
    gc_grace: int = 3600  # chunks touched and packs retired this recently are never collected
    gc_interval: int = 21600  # the server's own GC runs this often; 0 turns it off
    gc_repack_threshold: int = 20  # rewrite a pack once this percentage of it is dead
    run_stale_after: int = 3600  # a running run silent this long is marked failed
    # agent and client commands
    server: str = ""
    token: str = ""
    state_dir: str = field(default_factory=_default_state_dir)
    # operations: logs, metrics, alerts, scheduled jobs (docs/settings.md, docs/alerts.md)
    log_json: bool = False  # JSON lines on stderr instead of text
    log_level: str = "info"
    metrics_enabled: bool = True  # serve Prometheus text at /metrics
    metrics_token: str = ""  # if set, /metrics wants "Authorization: Bearer <metrics_token>"
    alert_webhooks: tuple[str, ...] = ()  # global webhook URLs; env: comma-separated
    alert_secret: str = ""  # signs each webhook body (X-Bkup-Signature: sha256=HMAC)
    alert_missed_margin: int = 3600  # seconds a scheduled backup may be late before schedule_missed
    alert_check_interval: int = 300  # seconds between two missed-schedule checks
    # the agent as a service (docs/agent.md)
    user: str = ""  # register this machine as a client of this user (with `password`)
    password: str = ""
    client_name: str = ""  # the client's name when registering; default: the host name
    paths: tuple[str, ...] = ()  # what to back up until the server's configuration names paths; env: comma- or colon-separated
    exclude: tuple[str, ...] = ()  # gitignore-style patterns, likewise; env: comma-separated
    setup_ui: bool = True  # an agent with no configuration at all opens its setup page
    setup_ui_listen: str = "127.0.0.1:8080"  # HOST:PORT of the setup page
    no_server_commands: bool = False  # refuse the pre-backup commands the server hands out
    quiet_period: float = 5.0  # seconds without file events before a watch run starts
    max_delay: float = 300.0  # seconds a watch run may be held back by events that keep coming
    retry_max_delay: float = 60.0  # the longest pause between two attempts to reach the server
    ca_bundle: str = ""  # PEM file of the CAs the agent and client commands trust for the server (default: the system's)
    allow_insecure_http: bool = False  # let the agent and client commands send tokens over plain http to a non-loopback host

    SECRET_FIELDS = ("master_key", "token", "metrics_token", "alert_secret", "password")
    # Given as seconds or as "90s", "30m", "2h", "1d" (config file and environment).
    DURATION_FIELDS = ("gc_grace", "gc_interval", "run_stale_after", "alert_missed_margin", "alert_check_interval")
    # Likewise, but fractions allowed ("0.5", "1.5s"): the agent's timers, which tests shorten.
    SECONDS_FIELDS = ("quiet_period", "max_delay", "retry_max_delay")
    # Lists of paths: in the environment separated by commas or colons (like PATH).
    PATH_LIST_FIELDS = ("paths",)

    def __post_init__(self) -> None:
        # A list from TOML or a caller becomes the (hashable, frozen) tuple.
        for name in ("alert_webhooks", "paths", "exclude"):
            if not isinstance(getattr(self, name), tuple):
                object.__setattr__(self, name, tuple(getattr(self, name)))

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{Path(self.data_dir) / 'catalog.db'}"

    @property
    def effective_storage_url(self) -> str:
        return self.storage_url or (Path(self.data_dir) / "store").as_uri()

    @property
    def effective_master_key_file(self) -> Path:
        return Path(self.master_key_file) if self.master_key_file else Path(self.config_dir) / "master.key"

    def masked(self) -> dict[str, Any]:
        """Every setting as plain data, safe to print or log: secrets and URL passwords hidden."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in self.SECRET_FIELDS:
                value = "***" if value else ""
            elif f.name == "alert_webhooks":
                value = [mask_url(u, keep_path=False) for u in value]
            elif f.name in ("database_url", "storage_url", "s3_endpoint_url", "server") and value:
                value = mask_url(value)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


_URL_PASSWORD = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*://[^/@:]*:)[^/@]*@")


def mask_url(url: str, *, keep_path: bool = True) -> str:
    """`url` without its password (and, unless `keep_path`, without path and query, where webhook secrets live)."""
    if keep_path:
        url = _URL_PASSWORD.sub(r"\1***@", url)
        return url.split("?", 1)[0] + "?***" if "?" in url else url
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    hidden = "/***" if parts.path.strip("/") or parts.query else parts.path
    return urlunsplit((parts.scheme, host, hidden, "", ""))


def env_name(field_name: str) -> str:
    return "BKUP_" + field_name.upper()


_DURATION = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def parse_duration(value: str | int) -> int:
    """Seconds from `90`, `"90s"`, `"30m"`, `"2h"` or `"1d"`."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    m = _DURATION.match(str(value).lower())
    if not m:
        raise ValueError(f"{value!r} is not a duration (e.g. 90, 90s, 30m, 2h, 1d)")
    return int(m.group(1)) * _UNITS[m.group(2)]


_SECONDS = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([smhd]?)\s*$")


def parse_seconds(value: str | float) -> float:
    """Seconds, fractions allowed, from `0.5`, `"1.5s"`, `"30m"`, `"2h"` or `"1d"`."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    m = _SECONDS.match(str(value).lower())
    if not m:
        raise ValueError(f"{value!r} is not a duration (e.g. 0.5, 90s, 30m, 2h)")
    return float(m.group(1)) * _UNITS[m.group(2)]


def _coerce(value: Any, type_name: str, name: str = "") -> Any:
    """A value from the environment (always text) or the config file, as the field's type."""
    if name in Settings.DURATION_FIELDS:
        return parse_duration(value)
    if name in Settings.SECONDS_FIELDS:
        return parse_seconds(value)
    if name in Settings.PATH_LIST_FIELDS and isinstance(value, str):
        return tuple(p.strip() for p in re.split(r"[,:]", value) if p.strip())
    if type_name == "bool":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text not in _TRUE + _FALSE:
            raise ValueError(f"{value!r} is not a boolean (true/false, 1/0, yes/no, on/off)")
        return text in _TRUE
    if type_name == "int":
        return int(value)
    if type_name.startswith("tuple"):
        items = value.split(",") if isinstance(value, str) else value
        return tuple(str(i).strip() for i in items if str(i).strip())
    return value


def load_settings(config_file: str | None = None, env: dict[str, str] | None = None, **flags: Any) -> Settings:
    """Build the effective settings. `flags` set to None are "not given"."""
    return Settings(**collect_settings(config_file, env, **flags)[0])


def collect_settings(
    config_file: str | None = None, env: dict[str, str] | None = None, **flags: Any
) -> tuple[dict[str, Any], dict[str, str], str | None]:
    """The given values, where each came from ("file", "env", "flag"), and the config file read."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
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
            raise SettingsError(f"{path}: unknown setting(s): {', '.join(unknown)}")
        for name, value in data.items():
            values[name] = _checked(name, value, str(known[name].type), path)
            sources[name] = "file"
    for name, f in known.items():
        if env_name(name) in env and env[env_name(name)] != "":
            values[name] = _checked(name, env[env_name(name)], str(f.type), env_name(name))
            sources[name] = "env"
    for name, value in flags.items():
        if value is not None:
            values[name] = value
            sources[name] = "flag"
    return values, sources, path


def _checked(name: str, value: Any, type_name: str, where: str) -> Any:
    try:
        return _coerce(value, type_name, name)
    except (TypeError, ValueError) as e:
        raise SettingsError(f"{where}: setting {name}: {e}") from None
