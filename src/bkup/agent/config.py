"""The agent's effective configuration: the server's `ClientConfig`, checked again here, merged with the local defaults.

Precedence (docs/agent.md): what the server's configuration sets wins. Its
`paths` and `exclude` fall back to the agent's own `--path`/`--exclude`
(`BKUP_PATHS`/`BKUP_EXCLUDE`) while they are empty on the server, so an agent
started with `--path` backs up at once, and an admin takes over by setting
paths on the server. The server refuses bad configuration (400) where it is
entered; the agent checks again because a bad answer (an older server, a
database edited by hand) must never crash it: it logs a warning, once per
configuration version, and keeps running on the last good configuration,
which it also keeps in its state dir (`config.json`) across restarts.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import msgspec

from bkup import protocol
from bkup.core.clientconfig import check_client_config
from bkup.core.schedule import Schedule
from bkup.errors import UsageError

log = logging.getLogger("bkup.agent.config")

CONFIG_FILE = "config.json"


class ConfigProblem(UsageError):
    """A configuration from the server that the agent will not use; the message names the field."""


@dataclass(frozen=True)
class LocalDefaults:
    """What the agent's own flags and environment say to back up, until the server's configuration says it."""

    paths: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True)
class Effective:
    """The configuration a run uses."""

    version: int
    paths: tuple[str, ...]
    patterns: tuple[str, ...]  # exclude, then include as re-including ("!") patterns: the last match wins
    schedule: Schedule
    watch: bool
    commands: tuple[protocol.PreCommand, ...]
    bandwidth_limit_kbps: int | None
    paths_from_server: bool

    def scope(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """What decides which files are backed up: a change of it calls for a full scan."""
        return self.paths, self.patterns


def check_config(config: protocol.ClientConfig) -> protocol.ClientConfig:
    """The same checks as the server's (`core.clientconfig`), naming the field; raises ConfigProblem."""
    try:
        check_client_config(config)
    except UsageError as exc:
        raise ConfigProblem(str(exc)) from None
    return config


def effective(config: protocol.ClientConfig, local: LocalDefaults) -> Effective:
    """Merge a checked server configuration with the local defaults."""
    from_server = bool(config.paths)
    paths = tuple(os.path.normpath(p) for p in config.paths) if from_server else local.paths
    exclude = tuple(config.exclude) if config.exclude or from_server else local.exclude
    include = tuple(p[1:] if p.startswith("!") else "!" + p for p in config.include)
    return Effective(
        version=config.version,
        paths=paths,
        patterns=exclude + include,
        schedule=Schedule.parse(config.schedule),
        watch=config.watch,
        commands=tuple(config.commands),
        bandwidth_limit_kbps=config.bandwidth_limit_kbps,
        paths_from_server=from_server,
    )


class ConfigKeeper:
    """Holds the last good configuration; takes new ones from the server, refusing bad ones. Thread-safe."""

    def __init__(self, local: LocalDefaults, state_dir: str | os.PathLike[str] | None = None) -> None:
        self.local = local
        self._path = Path(state_dir) / CONFIG_FILE if state_dir is not None else None
        self._lock = threading.Lock()
        self.current: Effective | None = None
        self.seen_version = -1  # the newest version offered, good or bad: what the long-poll waits past
        self.problem: str | None = None  # why the newest configuration was refused
        self._load()

    def offer(self, config: protocol.ClientConfig) -> bool:
        """Take `config` if it is good; True when the effective configuration changed."""
        with self._lock:
            if self.current is not None and config.version == self.current.version and self.problem is None:
                self.seen_version = max(self.seen_version, config.version)
                return False
            try:
                new = effective(check_config(config), self.local)
            except (UsageError, ValueError) as exc:
                if config.version != self.seen_version or self.problem is None:
                    log.warning(
                        "configuration version %d from the server refused: %s; keeping %s",
                        config.version, exc,
                        f"version {self.current.version}" if self.current else "the local defaults",
                    )
                self.seen_version = max(self.seen_version, config.version)
                self.problem = str(exc)
                return False
            self.seen_version = max(self.seen_version, config.version)
            self.problem = None
            changed = new != self.current
            self.current = new
        if changed:
            self._save(config)
        return changed

    def _load(self) -> None:
        if self._path is None:
            return
        try:
            config = msgspec.json.decode(self._path.read_bytes(), type=protocol.ClientConfig)
            self.current = effective(check_config(config), self.local)
        except FileNotFoundError:
            pass
        except (OSError, ValueError, msgspec.DecodeError, UsageError) as exc:
            log.warning("%s: ignoring the saved configuration (%s)", self._path, exc)

    def _save(self, config: protocol.ClientConfig) -> None:
        if self._path is None:
            return
        tmp = self._path.with_name(f".{CONFIG_FILE}.{os.getpid()}.tmp")
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp.write_bytes(msgspec.json.encode(config))
            os.replace(tmp, self._path)
        except OSError as exc:
            log.warning("cannot save the configuration to %s: %s", self._path, exc)
