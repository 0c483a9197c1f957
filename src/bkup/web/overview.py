"""Read models of the admin pages: per-client rows with status and sizes, totals, chart series, a run's changes.

Only reads, always scoped to what the principal may see (admins: everything;
users: their own clients and storage). Everything that changes state goes
through the server services (`bkup.server.accounts`, `bkup.server.agents`).

Sizes, as the dashboard shows them:

- **logical** bytes of a client: the sum of the sizes of its current files
  (what the machine holds now);
- **uploaded** bytes of a client: the sum of its runs' `bytes_uploaded`
  (compressed data it sent that the server did not have yet). Chunks are
  shared between the clients of one user, so "stored per client" has no
  exact meaning; this is the client's contribution;
- **stored** bytes (totals): the size of the packs in storage;
- **dedup ratio**: the size of every kept file version (each version
  once) divided by the stored bytes — what deduplication and compression
  save over keeping every version whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import and_, exists, func, select
from sqlalchemy.orm import aliased

from bkup import protocol
from bkup.catalog.models import Chunk, Client, Pack, Run, User, Version
from bkup.core.retention import Policy
from bkup.errors import NotFound, UsageError
from bkup.server import accounts, agents
from bkup.server.browse import version_info
from bkup.server.context import ServerContext
from bkup.server.principal import Principal, require_admin, visible_client
from bkup.server.runs import run_info

# Dashboard order: clients that need a human first.
ATTENTION = ("failing", "stale", "offline", "never")
STATE_ORDER = {s: i for i, s in enumerate((*ATTENTION, "running", "ok"))}
CHANGES_LIMIT = 500  # entries listed per kind of change on a run page


@dataclass
class ClientRow:
    info: protocol.ClientInfo
    status: protocol.ClientStatus
    logical_bytes: int
    uploaded_bytes: int
    files: int

    @property
    def needs_attention(self) -> bool:
        return self.status.state in ATTENTION


@dataclass
class Totals:
    clients: int
    attention: int
    stored_bytes: int
    logical_bytes: int
    kept_bytes: int

    @property
    def dedup_ratio(self) -> float | None:
        return self.kept_bytes / self.stored_bytes if self.stored_bytes else None


@dataclass
class Series:
    stored: list[tuple[datetime, int]] = field(default_factory=list)  # cumulative bytes uploaded, per day
    durations: list[tuple[str, float, str]] = field(default_factory=list)  # (label, seconds, status), oldest first


def _visible_ids(ctx: ServerContext, me: Principal) -> list[int]:
    with ctx.catalog.session() as s:
        q = select(Client.id)
        if not me.is_admin:
            q = q.where(Client.user_id == me.user_id)
        return list(s.execute(q).scalars())


def client_rows(ctx: ServerContext, me: Principal) -> list[ClientRow]:
    """Every client the principal may see, those needing attention first."""
    infos = accounts.list_clients(ctx, me)
    ids = [c.id for c in infos]
    logical: dict[int, tuple[int, int]] = {}
    uploaded: dict[int, int] = {}
    if ids:
        with ctx.catalog.session() as s:
            rows = s.execute(
                select(Version.client_id, func.coalesce(func.sum(Version.size), 0), func.count())
                .where(Version.client_id.in_(ids), Version.kind == "file", Version.valid_to.is_(None))
                .group_by(Version.client_id)
            )
            logical = {cid: (int(size), int(n)) for cid, size, n in rows}
            rows = s.execute(
                select(Run.client_id, func.coalesce(func.sum(Run.bytes_uploaded), 0))
                .where(Run.client_id.in_(ids))
                .group_by(Run.client_id)
            )
            uploaded = {cid: int(n) for cid, n in rows}
    out = [
        ClientRow(
            info=c,
            status=agents.client_status(ctx, c.id),
            logical_bytes=logical.get(c.id, (0, 0))[0],
            files=logical.get(c.id, (0, 0))[1],
            uploaded_bytes=uploaded.get(c.id, 0),
        )
        for c in infos
    ]
    out.sort(key=lambda r: (STATE_ORDER.get(r.status.state, 0), r.info.name))
    return out


def totals(ctx: ServerContext, me: Principal, rows: Sequence[ClientRow]) -> Totals:
    ids = [r.info.id for r in rows]
    with ctx.catalog.session() as s:
        q = select(func.coalesce(func.sum(Pack.size), 0))
        if not me.is_admin:
            q = q.where(Pack.user_id == me.user_id)
        stored = int(s.execute(q).scalar_one())
        kept = 0
        if ids:
            kept = int(
                s.execute(
                    select(func.coalesce(func.sum(Version.size), 0)).where(Version.client_id.in_(ids), Version.kind == "file")
                ).scalar_one()
            )
    return Totals(
        clients=len(rows),
        attention=sum(1 for r in rows if r.needs_attention),
        stored_bytes=stored,
        logical_bytes=sum(r.logical_bytes for r in rows),
        kept_bytes=kept,
    )


def series(ctx: ServerContext, me: Principal, *, client_id: int | None = None, runs: int = 40) -> Series:
    """Chart data: cumulative uploaded bytes per day, and the durations of the last `runs` finished runs."""
    with ctx.catalog.session() as s:
        if client_id is not None:
            visible_client(s, me, client_id)
            ids = [client_id]
        else:
            ids = _visible_ids(ctx, me)
        out = Series()
        if not ids:
            return out
        finished = and_(Run.client_id.in_(ids), Run.finished_at.is_not(None))
        day = func.date(Run.finished_at)
        daily = s.execute(
            select(day, func.coalesce(func.sum(Run.bytes_uploaded), 0)).where(finished).group_by(day).order_by(day)
        ).all()
        total = 0
        for d, n in daily:
            total += int(n)
            when = d if isinstance(d, datetime) else datetime.fromisoformat(str(d))
            out.stored.append((when.replace(tzinfo=UTC) if when.tzinfo is None else when, total))
        names = dict(s.execute(select(Client.id, Client.name).where(Client.id.in_(ids))).all())
        last = s.execute(
            select(Run.client_id, Run.seq, Run.started_at, Run.finished_at, Run.status)
            .where(finished)
            .order_by(Run.finished_at.desc())
            .limit(runs)
        ).all()
        for cid, seq, started, ended, status in reversed(last):
            label = f"{names.get(cid, cid)} #{seq}" if client_id is None else f"#{seq}"
            out.durations.append((label, max(0.0, (ended - started).total_seconds()), status))
        return out


# --- a run's changes -------------------------------------------------------------------------------------


@dataclass
class RunChanges:
    run: protocol.RunInfo
    added: list[protocol.VersionInfo]
    changed: list[protocol.VersionInfo]
    deleted: list[protocol.VersionInfo]  # the versions the run closed (download them as of seq - 1)
    counts: dict[str, int]
    limit: int


def run_changes(ctx: ServerContext, me: Principal, client_id: int, seq: int, limit: int = CHANGES_LIMIT) -> RunChanges:
    """What run `seq` added, changed and deleted: versions it opened (valid_from == seq) or closed (valid_to == seq)."""
    with ctx.catalog.session() as s:
        visible_client(s, me, client_id)
        run = s.execute(select(Run).where(Run.client_id == client_id, Run.seq == seq)).scalar_one_or_none()
        if run is None:
            raise NotFound(f"no run {seq}")
        other = aliased(Version)

        def same_path(col_cond):
            return exists().where(other.client_id == client_id, other.path == Version.path, col_cond)

        opened = and_(Version.client_id == client_id, Version.valid_from == seq)
        closed = and_(Version.client_id == client_id, Version.valid_to == seq)
        conds = {
            "added": and_(opened, ~same_path(other.valid_to == seq)),
            "changed": and_(opened, same_path(other.valid_to == seq)),
            "deleted": and_(closed, ~same_path(other.valid_from == seq)),
        }
        lists: dict[str, list[protocol.VersionInfo]] = {}
        counts: dict[str, int] = {}
        for name, cond in conds.items():
            counts[name] = int(s.execute(select(func.count()).select_from(Version).where(cond)).scalar_one())
            rows = s.execute(select(Version).where(cond).order_by(Version.path).limit(limit)).scalars()
            lists[name] = [version_info(v) for v in rows]
        return RunChanges(run=run_info(run), counts=counts, limit=limit, **lists)


# --- users and the server ----------------------------------------------------------------------------------


@dataclass
class UserRow:
    info: protocol.UserInfo
    clients: int
    stored_bytes: int
    policy: Policy | None  # None: the stored policy does not parse


def user_rows(ctx: ServerContext, me: Principal) -> list[UserRow]:
    require_admin(me)
    with ctx.catalog.session() as s:
        clients = dict(s.execute(select(Client.user_id, func.count()).group_by(Client.user_id)).all())
        stored = dict(s.execute(select(Pack.user_id, func.coalesce(func.sum(Pack.size), 0)).group_by(Pack.user_id)).all())
        users = s.execute(select(User).order_by(User.name)).scalars().all()
        return [
            UserRow(info=accounts.user_info(u), clients=int(clients.get(u.id, 0)), stored_bytes=int(stored.get(u.id, 0)), policy=_policy(u.policy))
            for u in users
        ]


def _policy(raw: dict | None) -> Policy | None:
    try:
        return Policy.parse(raw)
    except UsageError:
        return None


@dataclass
class ServerFacts:
    storage_url: str
    database_kind: str
    database_url: str
    users: int
    clients: int
    packs: int
    pack_bytes: int
    chunks: int
    versions: int
    runs_running: int


def server_facts(ctx: ServerContext, me: Principal) -> ServerFacts:
    require_admin(me)
    with ctx.catalog.session() as s:
        def count(model, *where) -> int:
            return int(s.execute(select(func.count()).select_from(model).where(*where)).scalar_one())

        pack_bytes = int(s.execute(select(func.coalesce(func.sum(Pack.size), 0))).scalar_one())
        return ServerFacts(
            storage_url=ctx.store.url,
            database_kind=ctx.catalog.kind,
            database_url=ctx.catalog.safe_url,
            users=count(User),
            clients=count(Client),
            packs=count(Pack),
            pack_bytes=pack_bytes,
            chunks=count(Chunk),
            versions=count(Version),
            runs_running=count(Run, Run.status == "running"),
        )
