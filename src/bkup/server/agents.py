"""The agent as a service, seen from the server: central configuration, heartbeats, "backup now", logs, status."""

from __future__ import annotations

import os.path
from datetime import datetime, timedelta

import msgspec
from sqlmodel import select

from bkup import protocol
from bkup.catalog import queries
from bkup.catalog.models import Client, Log, Run
from bkup.core.clientconfig import check_client_config
from bkup.core.schedule import Schedule
from bkup.errors import UsageError
from bkup.server.accounts import iso, now
from bkup.server.context import ServerContext
from bkup.server.principal import Principal, manageable_client, require_agent, visible_client
from bkup.server.runs import run_info

HEARTBEAT_S = 30  # the agent's heartbeat period; three missed beats make it offline
LEVELS = ("debug", "info", "warning", "error")
MAX_LOG_MESSAGE = 8000


# --- configuration -------------------------------------------------------------------------


def validate_config(config: protocol.ClientConfig) -> protocol.ClientConfig:
    """Refuse bad configuration where it is entered, naming the field (`core.clientconfig`)."""
    check_client_config(config)
    return msgspec.structs.replace(config, paths=[os.path.normpath(p) for p in config.paths])


def _config_of(client: Client) -> protocol.ClientConfig:
    return msgspec.convert(client.config or {}, protocol.ClientConfig)


def get_config(ctx: ServerContext, principal: Principal, client_id: int) -> protocol.ClientConfig:
    with ctx.catalog.session() as s:
        return _config_of(visible_client(s, principal, client_id))


def set_config(ctx: ServerContext, principal: Principal, client_id: int, config: protocol.ClientConfig) -> protocol.ClientConfig:
    config = validate_config(config)
    with ctx.catalog.session() as s:
        client = manageable_client(s, principal, client_id)
        config = msgspec.structs.replace(config, version=_config_of(client).version + 1)
        client.config = msgspec.to_builtins(config)
        s.add(client)
        s.commit()
        return config


def agent_config(ctx: ServerContext, principal: Principal) -> protocol.ClientConfig:
    return get_config(ctx, principal, require_agent(principal))


# --- heartbeats and signals -------------------------------------------------------------------


def _signal(client: Client) -> protocol.AgentSignal:
    return protocol.AgentSignal(config_version=_config_of(client).version, backup_now=client.backup_requested_at is not None)


def heartbeat(ctx: ServerContext, principal: Principal, beat: protocol.Heartbeat) -> protocol.AgentSignal:
    client_id = require_agent(principal)
    with ctx.catalog.session() as s:
        client = s.get(Client, client_id)
        client.last_seen = now()
        client.agent_version = beat.agent_version[:64]
        client.hostname = beat.hostname[:255]
        client.os = beat.os[:255]
        client.state = beat.state
        s.add(client)
        s.commit()
        return _signal(client)


def poll(ctx: ServerContext, principal: Principal, *, seen: bool = True) -> protocol.AgentSignal:
    """One look at the client's signals (the long-poll loop lives in the API layer).

    `seen` records the agent as alive: once per poll request is enough, the
    re-checks of a long-poll every half second are reads only.
    """
    client_id = require_agent(principal)
    with ctx.catalog.session() as s:
        client = s.get(Client, client_id)
        if seen:
            client.last_seen = now()
            s.add(client)
            s.commit()
        return _signal(client)


def request_backup(ctx: ServerContext, principal: Principal, client_id: int) -> None:
    with ctx.catalog.session() as s:
        client = manageable_client(s, principal, client_id)
        client.backup_requested_at = now()
        s.add(client)
        s.commit()


# --- logs ---------------------------------------------------------------------------------------


def add_logs(ctx: ServerContext, principal: Principal, entries: list[protocol.LogEntry]) -> int:
    client_id = require_agent(principal)
    with ctx.catalog.session() as s:
        runs = {}
        for e in entries:
            ts = _parse_ts(e.ts)
            run_id = None
            if e.run_seq is not None:
                if e.run_seq not in runs:
                    row = s.exec(select(Run.id).where(Run.client_id == client_id, Run.seq == e.run_seq)).first()
                    runs[e.run_seq] = row
                run_id = runs[e.run_seq]
            queries.add_log(s, client_id, e.level, e.message[:MAX_LOG_MESSAGE], run_id=run_id, ts=ts)
        s.commit()
    return len(entries)


def _parse_ts(ts: str) -> datetime:
    from bkup.server.browse import parse_at

    try:
        return parse_at(ts) or now()
    except UsageError:
        return now()


def list_logs(
    ctx: ServerContext, principal: Principal, client_id: int, *, level: str | None = None, limit: int = 50
) -> list[protocol.LogEntry]:
    if level is not None and level not in LEVELS:
        raise UsageError(f"level: one of {', '.join(LEVELS)}")
    with ctx.catalog.session() as s:
        visible_client(s, principal, client_id)
        q = select(Log, Run.seq).join(Run, Run.id == Log.run_id, isouter=True).where(Log.client_id == client_id)
        if level is not None:
            q = q.where(Log.level.in_(LEVELS[LEVELS.index(level):]))
        rows = s.exec(q.order_by(Log.ts.desc(), Log.id.desc()).limit(max(1, min(limit, 1000))))
        return [protocol.LogEntry(ts=iso(log.ts), level=log.level, message=log.message, run_seq=seq) for log, seq in rows]


# --- status ---------------------------------------------------------------------------------------


def client_status(ctx: ServerContext, client_id: int, at: datetime | None = None) -> protocol.ClientStatus:
    """online/offline from heartbeats; ok/running/failing/stale/never from runs and the schedule."""
    t = at or now()
    with ctx.catalog.session() as s:
        client = s.get(Client, client_id)
        last = s.exec(select(Run).where(Run.client_id == client_id).order_by(Run.seq.desc()).limit(1)).first()
        last_ok = s.exec(
            select(Run).where(Run.client_id == client_id, Run.status.in_(("ok", "partial"))).order_by(Run.seq.desc()).limit(1)
        ).first()
        online = client.last_seen is not None and t - client.last_seen < timedelta(seconds=3 * HEARTBEAT_S)
        try:
            period = Schedule.parse(_config_of(client).schedule).period(t)
        except UsageError:
            period = timedelta(days=1)
        if last is None:
            state = "never"
        elif last.status == "running" and online:
            state = "running"
        elif last.status == "failed":
            state = "failing"
        elif last_ok is None or t - (last_ok.finished_at or last_ok.started_at) > 2 * period + timedelta(hours=1):
            state = "stale"
        elif not online and client.state is not None:
            state = "offline"
        else:
            state = "ok"
        return protocol.ClientStatus(
            state=state,
            online=online,
            last_seen=iso(client.last_seen),
            last_ok_at=iso(last_ok.finished_at) if last_ok else None,
            last_run=run_info(last) if last else None,
            agent_state=client.state,
            hostname=client.hostname,
            agent_version=client.agent_version,
        )
