"""Prune planning: from each client's versions and effective policy, the exact list of versions to remove and why.

Plan, then act (restic's habit): `plan_prune` is pure and returns a
`PrunePlan`; the server's executor (`bkup.server.prune.execute`) removes
exactly the versions the plan names, so `bkup prune --dry-run` prints what a
real run does. The executor fills in how many bytes the plan frees.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from bkup.core.retention import Policy, VersionSpan, apply_policy


@dataclass(frozen=True, slots=True)
class PrunableVersion:
    """A version as the planner sees it: its span plus what a human (and a manifest) needs to name it."""

    span: VersionSpan
    valid_from: int  # run seq that opened it
    valid_to: int | None  # run seq that closed it
    kind: str = "file"
    size: int = 0
    content_id: str | None = None


@dataclass(frozen=True, slots=True)
class PruneTarget:
    """One client to prune: its versions (all of them, or all versions of some paths) and its effective policy."""

    client_id: int
    client_name: str
    user_id: int
    user_name: str
    policy: Policy
    versions: Sequence[PrunableVersion]


@dataclass(frozen=True, slots=True)
class Removal:
    version_id: int
    path: str
    kind: str
    size: int
    valid_from: int
    valid_to: int | None
    content_id: str | None
    reasons: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "version_id": self.version_id,
            "path": self.path,
            "kind": self.kind,
            "size": self.size,
            "valid_from": self.valid_from,
            "valid_to": self.valid_to,
            "reasons": list(self.reasons),
        }


@dataclass(frozen=True, slots=True)
class ClientPrune:
    client_id: int
    client_name: str
    user_id: int
    user_name: str
    policy: Policy
    examined: int  # versions the policy looked at
    removals: tuple[Removal, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id,
            "client": self.client_name,
            "user_id": self.user_id,
            "user": self.user_name,
            "policy": self.policy.to_dict(),
            "policy_text": self.policy.describe(),
            "examined": self.examined,
            "kept": self.examined - len(self.removals),
            "removed": len(self.removals),
            "removals": [r.to_dict() for r in self.removals],
        }


@dataclass(frozen=True, slots=True)
class Freed:
    """What removing a plan's versions frees: chunks no remaining version references."""

    chunks: int = 0
    raw_bytes: int = 0
    stored_bytes: int = 0

    def __add__(self, other: Freed) -> Freed:
        return Freed(self.chunks + other.chunks, self.raw_bytes + other.raw_bytes, self.stored_bytes + other.stored_bytes)


@dataclass(frozen=True, slots=True)
class PrunePlan:
    now: datetime
    clients: tuple[ClientPrune, ...]
    freed: Freed | None = None  # filled in by the executor's estimate (None: not estimated)
    freed_by_user: dict[int, Freed] = field(default_factory=dict)

    @property
    def removal_count(self) -> int:
        return sum(len(c.removals) for c in self.clients)

    @property
    def user_ids(self) -> list[int]:
        return sorted({c.user_id for c in self.clients})

    def with_freed(self, by_user: dict[int, Freed]) -> PrunePlan:
        total = sum(by_user.values(), Freed())
        return replace(self, freed=total, freed_by_user=dict(by_user))

    def to_dict(self) -> dict[str, Any]:
        freed = self.freed or Freed()
        return {
            "now": self.now.isoformat(),
            "removed": self.removal_count,
            "freed_chunks": freed.chunks,
            "freed_raw_bytes": freed.raw_bytes,
            "freed_stored_bytes": freed.stored_bytes,
            "clients": [c.to_dict() for c in self.clients],
        }


def plan_client(target: PruneTarget, now: datetime) -> ClientPrune:
    """The removals of one client: the versions its policy does not keep, oldest path first."""
    decision = apply_policy((v.span for v in target.versions), target.policy, now)
    removals = [
        Removal(
            version_id=v.span.id,
            path=v.span.path,
            kind=v.kind,
            size=v.size,
            valid_from=v.valid_from,
            valid_to=v.valid_to,
            content_id=v.content_id,
            reasons=tuple(decision.reasons.get(v.span.id, ())),
        )
        for v in target.versions
        # A current version is never removed, whatever a caller's spans claim.
        if v.span.id in decision.remove and v.valid_to is not None
    ]
    removals.sort(key=lambda r: (r.path, r.valid_from))
    return ClientPrune(
        client_id=target.client_id,
        client_name=target.client_name,
        user_id=target.user_id,
        user_name=target.user_name,
        policy=target.policy,
        examined=len(target.versions),
        removals=tuple(removals),
    )


def plan_prune(targets: Iterable[PruneTarget], now: datetime) -> PrunePlan:
    """The plan for these clients as of `now` (aware; naive means UTC)."""
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    clients = tuple(plan_client(t, now) for t in sorted(targets, key=lambda t: (t.user_name, t.client_name)))
    return PrunePlan(now=now, clients=clients)
