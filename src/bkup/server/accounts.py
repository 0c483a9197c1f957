"""Users, their API tokens, and clients with their agent tokens."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from sqlmodel import Session, select

from bkup import protocol
from bkup.catalog.models import Client, Run, Token, User
from bkup.errors import AuthError, Conflict, NotFound, UsageError
from bkup.server.context import ServerContext
from bkup.server.principal import Principal, require_admin, require_user, visible_client
from bkup.server.security import hash_password, hash_token, new_password, new_token, verify_password

_USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_CLIENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MIN_PASSWORD = 8


def now() -> datetime:
    return datetime.now(UTC)


def iso(t: datetime | None) -> str | None:
    if t is None:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.isoformat()


# --- users ---------------------------------------------------------------


def create_user(ctx: ServerContext, name: str, password: str, *, is_admin: bool = False) -> User:
    if not _USER_NAME.match(name):
        raise UsageError(
            f"invalid user name {name!r}: use 1-64 letters, digits, '.', '_', '@' or '-', starting with a letter or digit"
        )
    if len(password) < MIN_PASSWORD:
        raise UsageError(f"password too short: at least {MIN_PASSWORD} characters")
    with ctx.catalog.session() as s:
        if s.exec(select(User).where(User.name == name)).first():
            raise Conflict(f"user {name!r} already exists")
        user = User(name=name, password_hash=hash_password(password), is_admin=is_admin, created_at=now())
        s.add(user)
        s.flush()
        # The data key goes to storage before the catalog commits: a user never exists without one.
        ctx.keys.create_user_key(user.id, name)
        s.commit()
        s.refresh(user)
        return user


def ensure_first_admin(ctx: ServerContext) -> tuple[str, str] | None:
    """On an empty catalog create `admin` with a random password; return (name, password) once."""
    with ctx.catalog.session() as s:
        if s.exec(select(User.id)).first() is not None:
            return None
    password = new_password()
    create_user(ctx, "admin", password, is_admin=True)
    return "admin", password


def list_users(ctx: ServerContext) -> list[User]:
    with ctx.catalog.session() as s:
        return list(s.exec(select(User).order_by(User.name)))


def get_user(s: Session, name: str) -> User:
    user = s.exec(select(User).where(User.name == name)).first()
    if user is None:
        raise NotFound(f"no user {name!r}")
    return user


def user_info(user: User) -> protocol.UserInfo:
    return protocol.UserInfo(id=user.id, name=user.name, is_admin=user.is_admin, created_at=iso(user.created_at))


def login(ctx: ServerContext, name: str, password: str) -> protocol.LoginResponse:
    with ctx.catalog.session() as s:
        user = s.exec(select(User).where(User.name == name)).first()
        # Same answer for an unknown user and a wrong password: no account probing.
        if user is None or not verify_password(user.password_hash, password):
            raise AuthError("wrong user name or password")
        token = new_token("api")
        s.add(Token(user_id=user.id, kind="api", token_hash=hash_token(token), created_at=now()))
        s.commit()
        return protocol.LoginResponse(token=token, user=user.name, is_admin=user.is_admin)


# --- clients ----------------------------------------------------------------


def create_client(ctx: ServerContext, principal: Principal, name: str, owner: str | None = None) -> protocol.ClientCreated:
    require_user(principal)
    if not _CLIENT_NAME.match(name):
        raise UsageError(
            f"invalid client name {name!r}: use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    with ctx.catalog.session() as s:
        if owner is not None and owner != principal.user_name:
            require_admin(principal)
            user = get_user(s, owner)
        else:
            user = s.get(User, principal.user_id)
        if s.exec(select(Client).where(Client.name == name)).first():
            raise Conflict(f"client name {name!r} is taken")
        client = Client(user_id=user.id, name=name, created_at=now())
        s.add(client)
        s.flush()
        token = _issue_agent_token(s, client)
        s.commit()
        return protocol.ClientCreated(id=client.id, name=client.name, user=user.name, token=token)


def _issue_agent_token(s: Session, client: Client) -> str:
    token = new_token("agent")
    s.add(Token(user_id=client.user_id, client_id=client.id, kind="agent", token_hash=hash_token(token), created_at=now()))
    return token


def rotate_agent_token(ctx: ServerContext, principal: Principal, client_id: int) -> protocol.ClientCreated:
    """Revoke the client's agent tokens and issue a new one (a reinstalled machine re-registers)."""
    require_user(principal)
    with ctx.catalog.session() as s:
        client = visible_client(s, principal, client_id)
        for old in s.exec(select(Token).where(Token.client_id == client.id, Token.kind == "agent")):
            s.delete(old)
        token = _issue_agent_token(s, client)
        owner = s.get(User, client.user_id)
        s.commit()
        return protocol.ClientCreated(id=client.id, name=client.name, user=owner.name, token=token)


def client_info(s: Session, client: Client) -> protocol.ClientInfo:
    from bkup.server.runs import run_info  # runs imports accounts for time helpers

    owner = s.get(User, client.user_id)
    last = s.exec(select(Run).where(Run.client_id == client.id).order_by(Run.seq.desc()).limit(1)).first()
    return protocol.ClientInfo(
        id=client.id,
        name=client.name,
        user=owner.name,
        created_at=iso(client.created_at),
        last_seen=iso(client.last_seen),
        last_run=run_info(last) if last else None,
    )


def list_clients(ctx: ServerContext, principal: Principal, name: str | None = None) -> list[protocol.ClientInfo]:
    with ctx.catalog.session() as s:
        q = select(Client).order_by(Client.name)
        if principal.is_agent:
            q = q.where(Client.id == principal.client_id)
        elif not principal.is_admin:
            q = q.where(Client.user_id == principal.user_id)
        if name is not None:
            q = q.where(Client.name == name)
        return [client_info(s, c) for c in s.exec(q)]


def get_client(ctx: ServerContext, principal: Principal, client_id: int) -> protocol.ClientInfo:
    with ctx.catalog.session() as s:
        return client_info(s, visible_client(s, principal, client_id))


def find_client(s: Session, name: str) -> Client:
    client = s.exec(select(Client).where(Client.name == name)).first()
    if client is None:
        raise NotFound(f"no client {name!r}")
    return client


def admin_principal(ctx: ServerContext, user_name: str) -> Principal:
    """The principal of a local admin command acting as `user_name` (CLI on the server's own database)."""
    with ctx.catalog.session() as s:
        user = get_user(s, user_name)
        return Principal(user_id=user.id, user_name=user.name, is_admin=True)
