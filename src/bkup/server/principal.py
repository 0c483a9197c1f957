"""Who is calling: a bearer token resolved to a user (API token) or to a client (agent token), and what they may touch."""

from __future__ import annotations

from dataclasses import dataclass

from sqlmodel import Session, select

from bkup.catalog.models import Client, Token, User
from bkup.errors import AuthError, Forbidden, NotFound
from bkup.server.security import hash_token


@dataclass(frozen=True)
class Principal:
    user_id: int
    user_name: str
    is_admin: bool
    client_id: int | None = None  # set for agent tokens: the one client it speaks for

    @property
    def is_agent(self) -> bool:
        return self.client_id is not None


def principal_for_token(s: Session, token: str | None) -> Principal:
    if not token:
        raise AuthError("authentication required: send 'Authorization: Bearer TOKEN'")
    row = s.exec(select(Token, User).join(User, User.id == Token.user_id).where(Token.token_hash == hash_token(token))).first()
    if row is None:
        raise AuthError("invalid or revoked token")
    tok, user = row
    if tok.kind not in ("api", "agent"):
        # Web session tokens live in a cookie guarded by CSRF checks; as bearer tokens they would skip those.
        raise AuthError("invalid or revoked token")
    if tok.kind == "agent":
        # An agent token speaks for its client only, never with its owner's admin rights.
        return Principal(user_id=user.id, user_name=user.name, is_admin=False, client_id=tok.client_id)
    return Principal(user_id=user.id, user_name=user.name, is_admin=user.is_admin)


def require_admin(p: Principal) -> None:
    if not p.is_admin:
        raise Forbidden("this needs an admin account")


def require_user(p: Principal) -> None:
    if p.is_agent:
        raise Forbidden("agent tokens cannot do this; log in as a user")


def require_agent(p: Principal) -> int:
    if p.client_id is None:
        raise Forbidden("only a client's agent token can do this")
    return p.client_id


def visible_client(s: Session, p: Principal, client_id: int) -> Client:
    """The client if the caller may read it; NotFound otherwise (no hint that it exists)."""
    client = s.get(Client, client_id)
    if client is None:
        raise NotFound(f"no client {client_id}")
    if p.is_agent:
        if client.id != p.client_id:
            raise NotFound(f"no client {client_id}")
    elif not p.is_admin and client.user_id != p.user_id:
        raise NotFound(f"no client {client_id}")
    return client


def manageable_client(s: Session, p: Principal, client_id: int) -> Client:
    """The client if the caller may manage it (owner or admin, never an agent)."""
    require_user(p)
    return visible_client(s, p, client_id)
