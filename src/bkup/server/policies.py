"""Retention policies as stored in the catalog: per user, overridable per client; who may read and set them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlmodel import Session

from bkup import protocol
from bkup.catalog.models import Client, User
from bkup.core.retention import Policy, merge
from bkup.errors import Forbidden, NotFound
from bkup.server.context import ServerContext
from bkup.server.principal import Principal, manageable_client, require_user

__all__ = [
    "effective_policy",
    "get_client_policy",
    "get_user_policy",
    "policy_info",
    "set_client_policy",
    "set_user_policy",
]


def _stored(data: Any) -> Policy:
    # Stored policies were validated on the way in; a hand-edited bad one still fails loudly here.
    return Policy.parse(data) if data else Policy()


def _as_policy(policy: Policy | Mapping[str, Any] | None) -> Policy:
    if policy is None:
        return Policy()
    return policy if isinstance(policy, Policy) else Policy.parse(policy)


def effective_policy(s: Session, client: Client) -> Policy:
    """The policy prune applies to a client: its user's, with the client's rules replacing theirs."""
    user = s.get(User, client.user_id)
    client_rules = _stored(client.policy)
    return merge(_stored(user.policy if user else None), client_rules if not client_rules.is_empty else None)


def _user_for(s: Session, me: Principal, user_id: int) -> User:
    require_user(me)
    if not me.is_admin and me.user_id != user_id:
        raise Forbidden("you can read and set only your own retention policy")
    user = s.get(User, user_id)
    if user is None:
        raise NotFound(f"no user {user_id}")
    return user


def get_user_policy(ctx: ServerContext, me: Principal, user_id: int) -> Policy:
    with ctx.catalog.session() as s:
        return _stored(_user_for(s, me, user_id).policy)


def set_user_policy(ctx: ServerContext, me: Principal, user_id: int, policy: Policy | Mapping[str, Any] | None) -> Policy:
    """Replace the user's policy (validated: PolicyError names a bad field); an empty one keeps everything."""
    parsed = _as_policy(policy)
    with ctx.catalog.session() as s:
        user = _user_for(s, me, user_id)
        user.policy = parsed.to_dict() or None
        s.add(user)
        s.commit()
    return parsed


def get_client_policy(ctx: ServerContext, me: Principal, client_id: int) -> Policy:
    """The client's own rules (its override; empty: it follows its user's policy)."""
    with ctx.catalog.session() as s:
        return _stored(manageable_client(s, me, client_id).policy)


def set_client_policy(ctx: ServerContext, me: Principal, client_id: int, policy: Policy | Mapping[str, Any] | None) -> Policy:
    """Replace the client's override; None or an empty policy makes it follow its user's policy."""
    parsed = _as_policy(policy)
    with ctx.catalog.session() as s:
        client = manageable_client(s, me, client_id)
        client.policy = parsed.to_dict() or None
        s.add(client)
        s.commit()
    return parsed


def policy_info(ctx: ServerContext, me: Principal, *, user_id: int | None = None, client_id: int | None = None) -> protocol.PolicyInfo:
    """What GET /users/{id}/policy and /clients/{id}/policy answer."""
    with ctx.catalog.session() as s:
        if client_id is not None:
            client = manageable_client(s, me, client_id)
            own, effective = _stored(client.policy), effective_policy(s, client)
        else:
            assert user_id is not None
            own = effective = _stored(_user_for(s, me, user_id).policy)
    return protocol.PolicyInfo(policy=own.to_dict(), effective=effective.to_dict(), description=effective.describe())
