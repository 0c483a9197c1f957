"""Catalog rebuild from storage and the master key alone, into an empty database (`bkup catalog rebuild`).

Order: users from `keys/*` (same ids and names, new random passwords);
packs and chunks from every pack's own index; then per client its run
manifests in run order (closes before opens, as written) and finally its
prune manifests, whose removals delete what later prunes took away. Runs
that had not finished (no manifest yet) and agent tokens are not in storage:
machines need a new agent token.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Table, bindparam, func, select, text, update
from sqlmodel import Session

from bkup.catalog import queries
from bkup.catalog.models import Chunk, Client, Content, Pack, Run, User, Version
from bkup.catalog.queries import _insert, _pieces
from bkup.core import hashing, paths
from bkup.errors import BkupError, Conflict
from bkup.server import manifests
from bkup.server.context import ServerContext
from bkup.server.security import hash_password, new_password
from bkup.storage.packs import parse_pack_key

log = logging.getLogger("bkup.server.rebuild")

_versions: Table = Version.__table__  # type: ignore[assignment]
_contents: Table = Content.__table__  # type: ignore[assignment]
BATCH = 1000


@dataclass
class RebuildReport:
    users: list[tuple[str, str, bool]] = field(default_factory=list)  # (name, new password, admin)
    packs: int = 0
    chunks: int = 0
    clients: int = 0
    runs: int = 0
    versions: int = 0
    removed: int = 0
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{len(self.users)} user(s), {self.packs} pack(s) with {self.chunks} chunk(s), {self.clients} client(s), "
            f"{self.runs} run(s), {self.versions} version(s) ({self.removed} removed by prunes)"
            + (f"; {len(self.warnings)} warning(s)" if self.warnings else "")
        )


def _time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value).astimezone(UTC)


def ensure_empty(ctx: ServerContext) -> None:
    with ctx.catalog.session() as s:
        for model in (User, Client, Pack, Chunk, Run, Version):
            if s.execute(select(func.count()).select_from(model)).scalar_one():
                raise Conflict(
                    f"the database at {ctx.catalog.safe_url} is not empty ({model.__tablename__} has rows): "
                    "rebuild only into an empty database"
                )


def rebuild(ctx: ServerContext, *, admins: Sequence[str] = ()) -> RebuildReport:
    """Recreate the catalog from storage; `admins` (default: a user named "admin") become admins."""
    ensure_empty(ctx)
    report = RebuildReport()
    users = ctx.keys.list_users()
    names = {name for _, name in users}
    admin_names = set(admins) if admins else ({"admin"} & names)
    with ctx.catalog.session() as s:
        for user_id, name in users:
            ctx.keys.user_key(user_id)  # fails loudly on a wrong master key, before anything is written
            password = new_password()
            s.add(User(id=user_id, name=name, password_hash=hash_password(password), is_admin=name in admin_names))
            report.users.append((name, password, name in admin_names))
        s.commit()
    for user_id, _ in users:
        _packs(ctx, user_id, report)
    user_ids = {uid for uid, _ in users}
    for client_id, names_ in sorted(manifests.list_manifests(ctx).items()):
        try:
            _client(ctx, client_id, names_, user_ids, report)
        except BkupError as e:
            report.warnings.append(f"client {client_id}: {e}; its history is incomplete")
    _fix_sequences(ctx)
    return report


def _packs(ctx: ServerContext, user_id: int, report: RebuildReport) -> None:
    for key in ctx.store.list(f"packs/{user_id}"):
        try:
            _, pack_id = parse_pack_key(key)
            entries = ctx.packs.read_index(user_id, pack_id)
            size = ctx.store.size(key)
        except (BkupError, ValueError) as e:
            report.warnings.append(f"{key}: skipped ({e})")
            continue
        with ctx.catalog.session() as s:
            report.chunks += queries.record_pack(s, user_id, pack_id, size, entries)
            s.commit()
        report.packs += 1


def _client(ctx: ServerContext, client_id: int, names: list[str], user_ids: set[int], report: RebuildReport) -> None:
    runs = sorted((int(n), n) for n in names if n.isdigit())
    prunes = sorted(n for n in names if n.startswith("prune-"))
    latest: tuple[str, dict[str, Any]] | None = None
    created = False
    for name in [n for _, n in runs] + prunes:
        try:
            records = manifests.read_manifest(ctx, client_id, name)
            header = next(records)
        except BkupError as e:
            report.warnings.append(f"manifest {client_id}/{name}: skipped ({e})")
            continue
        user_id = header["user"]["id"]
        if user_id not in user_ids or header["client"]["id"] != client_id:
            report.warnings.append(f"manifest {client_id}/{name}: names user {user_id}, client {header['client']['id']}: skipped")
            continue
        when = header.get("written_at") or header.get("time") or ""
        if latest is None or when >= latest[0]:
            latest = (when, header)
        if not created:
            _create_client(ctx, header)
            created = True
            report.clients += 1
        if header["type"] == "run":
            _replay_run(ctx, client_id, user_id, header, records, report)
        elif header["type"] == "prune":
            _replay_prune(ctx, client_id, records, report)
    if latest is not None:
        h = latest[1]
        with ctx.catalog.session() as s:
            s.execute(update(Client).where(Client.id == client_id).values(
                name=h["client"]["name"], policy=h["client"].get("policy"), config=h["client"].get("config")))
            s.execute(update(User).where(User.id == h["user"]["id"]).values(policy=h["user"].get("policy")))
            s.commit()


def _create_client(ctx: ServerContext, header: dict[str, Any]) -> None:
    c = header["client"]
    with ctx.catalog.session() as s:
        s.add(Client(id=c["id"], user_id=header["user"]["id"], name=c["name"], created_at=_time(c.get("created_at")) or datetime.now(UTC)))
        s.commit()


def _replay_run(ctx: ServerContext, client_id: int, user_id: int, header: dict, records, report: RebuildReport) -> None:
    r = header["run"]
    seq = r["seq"]
    with ctx.catalog.session() as s:
        s.add(Run(
            client_id=client_id, seq=seq, trigger=r["trigger"], status=r["status"], started_at=_time(r["started_at"]),
            finished_at=_time(r.get("finished_at")), last_activity=_time(r.get("finished_at") or r["started_at"]),
            error=r.get("error"), manifest_at=datetime.now(UTC), **r.get("stats", {}),
        ))
        s.commit()
    report.runs += 1
    batch: list[dict] = []
    op = None
    for record in records:
        if record["op"] != op and batch:
            _apply(ctx, client_id, user_id, seq, op, batch, report)
            batch = []
        op = record["op"]
        batch.append(record)
        if len(batch) >= BATCH:
            _apply(ctx, client_id, user_id, seq, op, batch, report)
            batch = []
    if batch:
        _apply(ctx, client_id, user_id, seq, op, batch, report)


def _apply(ctx: ServerContext, client_id: int, user_id: int, seq: int, op: str | None, batch: list[dict], report: RebuildReport) -> None:
    with ctx.catalog.session() as s:
        if op == "close":
            stmt = (
                update(_versions)
                .where(_versions.c.client_id == client_id, _versions.c.path == bindparam("p"),
                       _versions.c.valid_from == bindparam("f"), _versions.c.valid_to.is_(None))
                .values(valid_to=seq)
            )
            s.execute(stmt.execution_options(synchronize_session=False), [{"p": r["path"], "f": r["valid_from"]} for r in batch])
        elif op == "open":
            _open(s, client_id, user_id, seq, batch)
            report.versions += len(batch)
        s.commit()


def _open(s: Session, client_id: int, user_id: int, seq: int, batch: list[dict]) -> None:
    # A close that never reached storage (a lost manifest) must not break "one current version per path".
    for piece in _pieces([r["path"] for r in batch]):
        s.execute(update(_versions).where(_versions.c.client_id == client_id, _versions.c.valid_to.is_(None),
                                          _versions.c.path.in_(piece)).values(valid_to=seq))
    rows, contents = [], {}
    for r in batch:
        chunks = r.get("chunks")
        if chunks is not None:
            cid = hashing.content_id(chunks)
            contents[cid] = {"user_id": user_id, "id": cid, "size": r["size"], "n_chunks": len(chunks),
                             "chunk_ids": b"".join(bytes.fromhex(c) for c in chunks), "created_at": datetime.now(UTC)}
        rows.append({
            "client_id": client_id, "path": r["path"], "parent": paths.parent_of(r["path"]), "name": paths.name_of(r["path"]),
            "kind": r["kind"], "size": r["size"], "mtime_ns": r["mtime_ns"], "mode": r["mode"], "uid": r["uid"], "gid": r["gid"],
            "content_id": r.get("content_id"), "link_target": r.get("link_target"), "valid_from": seq, "valid_to": None,
        })
    if contents:
        s.execute(_insert(s, _contents).on_conflict_do_nothing(), [contents[k] for k in sorted(contents)])
    s.execute(_versions.insert(), rows)


def _replay_prune(ctx: ServerContext, client_id: int, records, report: RebuildReport) -> None:
    stmt = _versions.delete().where(
        _versions.c.client_id == client_id, _versions.c.path == bindparam("p"), _versions.c.valid_from == bindparam("f"),
        _versions.c.valid_to.is_not(None),
    )
    batch = [{"p": r["path"], "f": r["valid_from"]} for r in records if r.get("op") == "remove"]
    for piece in _pieces(batch, BATCH):
        with ctx.catalog.session() as s:
            report.removed += s.execute(stmt, list(piece)).rowcount
            s.commit()


def _fix_sequences(ctx: ServerContext) -> None:
    """Explicit ids went into users and clients: move PostgreSQL's sequences past them."""
    if ctx.catalog.kind != "postgresql":
        return
    with ctx.catalog.session() as s:
        for table in ("users", "clients"):
            s.execute(text(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), COALESCE((SELECT max(id) FROM {table}), 1), "
                f"(SELECT max(id) FROM {table}) IS NOT NULL)"
            ))
        s.commit()
