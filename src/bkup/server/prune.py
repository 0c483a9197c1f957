"""Prune: plan which versions each client's retention policy removes, estimate what that frees, then remove them.

Plan, then act: `plan()` reads the catalog and returns a `PrunePlan`
(`bkup.core.prune`); `execute()` removes exactly the versions the plan names.
Removing a version deletes its row: it leaves the history. Before the rows go,
a prune manifest listing them reaches storage, so a catalog rebuilt from
storage never brings them back (docs/retention.md). After a run finishes,
`prune_after_run` applies the policy to the paths that run changed.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlmodel import Session

from bkup.catalog import garbage, history
from bkup.catalog.models import Chunk, Client, User, Version
from bkup.catalog.queries import _pieces
from bkup.core.prune import ClientPrune, Freed, PrunableVersion, PrunePlan, PruneTarget, plan_client
from bkup.core.retention import VersionSpan
from bkup.errors import NotFound, UsageError
from bkup.server import manifests
from bkup.server.context import ServerContext
from bkup.server.policies import effective_policy
from bkup.server.principal import Principal, require_admin

log = logging.getLogger("bkup.server.prune")

PAGE = 20_000  # versions the planner holds per step


def _now() -> datetime:
    return datetime.now(UTC)


def _clients(s: Session, user: str | int | None, client: str | int | None) -> list[tuple[Client, User]]:
    """The clients in scope, checked: an unknown user or client is NotFound before anything happens."""
    q = select(Client, User).join(User, User.id == Client.user_id).order_by(User.name, Client.name)
    if user is not None:
        found = s.get(User, user) if isinstance(user, int) else s.scalars(select(User).where(User.name == user)).first()
        if found is None:
            raise NotFound(f"no user {user!r}")
        q = q.where(Client.user_id == found.id)
    if client is not None:
        cl = s.get(Client, client) if isinstance(client, int) else s.scalars(select(Client).where(Client.name == client)).first()
        if cl is None:
            raise NotFound(f"no client {client!r}")
        if user is not None and cl.user_id != found.id:
            raise UsageError(f"client {cl.name!r} does not belong to user {found.name!r}")
        q = q.where(Client.id == cl.id)
    return [(c, u) for c, u in s.execute(q)]


def _prunable(rows: list[history.HistoryRow]) -> list[PrunableVersion]:
    return [
        PrunableVersion(
            span=VersionSpan(r.id, r.path, r.from_time, r.to_time, r.valid_to is None),
            valid_from=r.valid_from, valid_to=r.valid_to, kind=r.kind, size=r.size, content_id=r.content_id,
        )
        for r in rows
    ]


def _pages(s: Session, client_id: int) -> Iterator[list[history.HistoryRow]]:
    after: str | None = None
    while True:
        rows = history.history_page(s, client_id, after, PAGE)
        if not rows:
            return
        yield rows
        after = rows[-1].path


def _plan_client(s: Session, client: Client, user: User, now: datetime, paths: list[str] | None = None) -> ClientPrune:
    policy = effective_policy(s, client)
    base = dict(client_id=client.id, client_name=client.name, user_id=user.id, user_name=user.name, policy=policy)
    if policy.is_empty:  # keeps everything: nothing to read
        if paths is None:
            examined = s.execute(select(func.count()).select_from(Version).where(Version.client_id == client.id)).scalar_one()
        else:
            examined = 0
        return ClientPrune(**base, examined=examined, removals=())
    pages = [history.path_history(s, client.id, paths)] if paths is not None else _pages(s, client.id)
    removals, examined = [], 0
    for rows in pages:
        part = plan_client(PruneTarget(**base, versions=_prunable(rows)), now)
        removals.extend(part.removals)
        examined += part.examined
    return ClientPrune(**base, examined=examined, removals=tuple(removals))


def plan(
    ctx: ServerContext, user: str | int | None = None, client: str | int | None = None,
    now: datetime | None = None, *, estimate: bool = True,
) -> PrunePlan:
    """What a prune of these clients (all, a user's, or one) removes as of `now`, and what that frees."""
    now = now or _now()
    with ctx.catalog.session() as s:
        clients = tuple(_plan_client(s, c, u, now) for c, u in _clients(s, user, client))
        result = PrunePlan(now=now, clients=clients)
        if estimate:
            result = result.with_freed({uid: estimate_freed(s, uid, result) for uid in result.user_ids})
    return result


def estimate_freed(s: Session, user_id: int, plan_: PrunePlan) -> Freed:
    """Chunks that no version would reference once the plan's versions of this user are gone."""
    removed = Counter(
        r.content_id for c in plan_.clients if c.user_id == user_id for r in c.removals if r.content_id is not None
    )
    if not removed:
        return Freed()
    uses = history.content_use_counts(s, user_id, list(removed))
    dead = {cid for cid, n in removed.items() if uses.get(cid, 0) <= n}
    if not dead:
        return Freed()
    candidates: set[bytes] = set()
    for blob in history.content_chunks(s, user_id, list(dead)).values():
        candidates.update(blob[i : i + 32] for i in range(0, len(blob), 32))
    candidates -= garbage.referenced_chunk_ids(s, user_id, excluding=dead)
    freed = Freed()
    for piece in _pieces(sorted(c.hex() for c in candidates)):
        q = select(func.count(), func.coalesce(func.sum(Chunk.raw_len), 0), func.coalesce(func.sum(Chunk.length), 0)).where(
            Chunk.user_id == user_id, Chunk.id.in_(piece)  # type: ignore[union-attr]
        )
        n, raw, stored = s.execute(q).one()
        freed = freed + Freed(n, raw, stored)
    return freed


def execute(ctx: ServerContext, plan_: PrunePlan) -> int:
    """Remove the plan's versions; returns how many rows went. The prune manifest is written first."""
    removed = 0
    for cp in plan_.clients:
        if not cp.removals:
            continue
        manifests.write_prune_manifest(ctx, cp, plan_.now)
        for piece in _pieces([r.version_id for r in cp.removals]):
            with ctx.catalog.session() as s:  # short transactions: backups keep committing meanwhile
                removed += history.delete_versions(s, cp.client_id, piece)
                s.commit()
    return removed


def prune_after_run(ctx: ServerContext, client_id: int, run_seq: int, now: datetime | None = None) -> int:
    """Apply the client's policy to the paths run `run_seq` closed a version of; returns versions removed."""
    now = now or _now()
    with ctx.catalog.session() as s:
        client = s.get(Client, client_id)
        if client is None:
            return 0
        user = s.get(User, client.user_id)
        if effective_policy(s, client).is_empty:
            return 0
        paths = history.paths_closed_by(s, client_id, run_seq)
        if not paths:
            return 0
        cp = _plan_client(s, client, user, now, paths=paths)
    return execute(ctx, PrunePlan(now=now, clients=(cp,)))


@dataclass
class PruneResult:
    plan: PrunePlan
    dry_run: bool
    removed: int
    gc: object | None = None  # bkup.server.gc.GcReport

    def summary(self) -> str:
        freed = self.plan.freed or Freed()
        verb = "would remove" if self.dry_run else "removed"
        n = self.plan.removal_count if self.dry_run else self.removed
        text = f"{verb} {n} version(s) of {len(self.plan.clients)} client(s), freeing {freed.chunks} chunk(s), {freed.stored_bytes} bytes stored"
        if self.gc is not None:
            text += f"; {self.gc.summary()}"  # type: ignore[attr-defined]
        return text

    def to_dict(self) -> dict:
        out = {**self.plan.to_dict(), "dry_run": self.dry_run, "removed": self.plan.removal_count if self.dry_run else self.removed}
        if self.gc is not None:
            out["gc"] = self.gc.to_dict()  # type: ignore[attr-defined]
        return out


def prune(
    ctx: ServerContext, principal: Principal | None = None, *, user: str | int | None = None,
    client: str | int | None = None, dry_run: bool = False, gc: bool = True, now: datetime | None = None,
) -> PruneResult:
    """`bkup prune`: plan, then (unless a dry run) execute and collect garbage for the users concerned."""
    if principal is not None:
        require_admin(principal)
    the_plan = plan(ctx, user, client, now)
    if dry_run:
        return PruneResult(plan=the_plan, dry_run=True, removed=0)
    removed = execute(ctx, the_plan)
    report = None
    if gc and the_plan.clients:
        from bkup.server import gc as gc_

        report = gc_.collect(ctx, user_ids=the_plan.user_ids, now=now)
    return PruneResult(plan=the_plan, dry_run=False, removed=removed, gc=report)
