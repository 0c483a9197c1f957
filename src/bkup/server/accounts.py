"""Users, their API tokens, and clients with their agent tokens."""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete
from sqlmodel import Session, select

from bkup import protocol
from bkup.catalog.models import (
    Chunk,
    Client,
    Content,
    Log,
    Pack,
    Run,
    Token,
    User,
    Version,
)
from bkup.errors import AuthError, Conflict, NotFound, UsageError
from bkup.server.context import ServerContext
from bkup.server.principal import (
    Principal,
    manageable_client,
    require_admin,
    require_user,
    visible_client,
)
from bkup.server.security import (
    hash_password,
    hash_token,
    new_password,
    new_token,
    verify_password,
)

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


# --- account administration -----------------------------------------------------------


def _user_by_id(s: Session, user_id: int) -> User:
    user = s.get(User, user_id)
    if user is None:
        raise NotFound(f"no user {user_id}")
    return user


def get_user_by_id(ctx: ServerContext, principal: Principal, user_id: int) -> protocol.UserInfo:
    """A user as an admin sees it; a user may also look at themselves."""
    if principal.user_id != user_id:
        require_admin(principal)
    with ctx.catalog.session() as s:
        return user_info(_user_by_id(s, user_id))


def _other_admins(s: Session, user_id: int) -> int:
    return len(s.exec(select(User.id).where(User.is_admin == True, User.id != user_id)).all())


def set_password(ctx: ServerContext, principal: Principal, user_id: int, password: str, *, keep_token: str | None = None) -> None:
    """Set a user's password (an admin for anyone, a user for themselves) and sign them out everywhere.

    Every API token and web session of the user is revoked, except `keep_token`
    (the session of a user changing their own password). Agent tokens stay:
    machines keep backing up.
    """
    require_user(principal)
    if principal.user_id != user_id:
        require_admin(principal)
    if len(password) < MIN_PASSWORD:
        raise UsageError(f"password too short: at least {MIN_PASSWORD} characters")
    keep = hash_token(keep_token) if keep_token else None
    with ctx.catalog.session() as s:
        user = _user_by_id(s, user_id)
        user.password_hash = hash_password(password)
        s.add(user)
        for tok in s.exec(select(Token).where(Token.user_id == user_id, Token.kind.in_(("api", WEB_KIND)))):
            if tok.token_hash != keep:
                s.delete(tok)
        s.commit()


def change_own_password(ctx: ServerContext, principal: Principal, current: str, password: str, *, keep_token: str | None = None) -> None:
    """A user changes their own password: the current one must be right (a stolen session alone cannot)."""
    require_user(principal)
    with ctx.catalog.session() as s:
        user = _user_by_id(s, principal.user_id)
        if not verify_password(user.password_hash, current):
            raise UsageError("the current password is wrong")
    set_password(ctx, principal, principal.user_id, password, keep_token=keep_token)


def set_admin(ctx: ServerContext, principal: Principal, user_id: int, is_admin: bool) -> protocol.UserInfo:
    """Grant or withdraw admin rights; the last admin cannot be demoted (nobody could manage the server)."""
    require_user(principal)
    require_admin(principal)
    with ctx.catalog.session() as s:
        user = _user_by_id(s, user_id)
        if user.is_admin and not is_admin and _other_admins(s, user_id) == 0:
            raise Conflict(f"{user.name!r} is the last admin: make another user admin first")
        user.is_admin = is_admin
        s.add(user)
        s.commit()
        s.refresh(user)
        return user_info(user)


def _delete_client_rows(s: Session, client_id: int) -> None:
    # Explicit order instead of relying on ON DELETE CASCADE alone: big tables first, each one statement.
    for model in (Version, Log, Run, Token):
        s.execute(delete(model).where(model.client_id == client_id))
    s.execute(delete(Client).where(Client.id == client_id))


def _delete_prefix(ctx: ServerContext, prefix: str) -> int:
    n = 0
    for key in list(ctx.store.list(prefix)):
        ctx.store.delete(key)
        n += 1
    return n


def delete_client(ctx: ServerContext, principal: Principal, client_id: int) -> str:
    """Forget a client and its whole history (owner or admin; never its agent). Returns the client's name.

    The catalog forgets it first; the run manifests in storage go next. Its
    chunks stay with the user until garbage collection finds them unreferenced
    (other clients of the same user may share them).
    """
    with ctx.catalog.session() as s:
        client = manageable_client(s, principal, client_id)
        name = client.name
        _delete_client_rows(s, client.id)
        s.commit()
    # Client ids can be reused (SQLite reuses the highest rowid): leave no manifests behind.
    _delete_prefix(ctx, f"manifests/{client_id}/")
    return name


def delete_user(ctx: ServerContext, principal: Principal, user_id: int) -> str:
    """Delete a user with all their clients and backups (admin only). Returns the user's name.

    Order: the catalog forgets the user in one transaction; then the data key
    is destroyed (every pack of the user becomes unreadable at once); then the
    packs and manifests are removed from storage. If storage fails halfway, the
    leftovers are unreadable and unreferenced, and a retry of GC removes them.
    """
    require_user(principal)
    require_admin(principal)
    if principal.user_id == user_id:
        raise Conflict("you cannot delete your own account; ask another admin")
    with ctx.catalog.session() as s:
        user = _user_by_id(s, user_id)
        name = user.name
        if user.is_admin and _other_admins(s, user_id) == 0:
            raise Conflict(f"{name!r} is the last admin")
        client_ids = list(s.exec(select(Client.id).where(Client.user_id == user_id)))
        for cid in client_ids:
            _delete_client_rows(s, cid)
        for model in (Chunk, Content, Pack, Token):
            s.execute(delete(model).where(model.user_id == user_id))
        s.execute(delete(User).where(User.id == user_id))
        s.commit()
    ctx.keys.delete_user_key(user_id)
    _delete_prefix(ctx, f"packs/{user_id}/")
    for cid in client_ids:
        _delete_prefix(ctx, f"manifests/{cid}/")
    return name


# --- web sessions ---------------------------------------------------------------------------
#
# A web session is a row in `tokens` (kind "web"), so every replica on one
# database knows it; the browser holds the token in an HttpOnly cookie.

WEB_KIND = "web"
WEB_PREFIX = "bkup_s_"
SESSION_IDLE = timedelta(hours=12)  # signed out after this long without a request
SESSION_MAX = timedelta(days=7)  # and after this long in any case
_TOUCH_EVERY = timedelta(minutes=5)  # last_used_at is written at most this often


def start_web_session(ctx: ServerContext, name: str, password: str) -> tuple[str, Principal]:
    """Check the password and open a session: (token for the cookie, principal)."""
    with ctx.catalog.session() as s:
        user = s.exec(select(User).where(User.name == name)).first()
        if user is None or not verify_password(user.password_hash, password):
            raise AuthError("wrong user name or password")
        t = now()
        token = WEB_PREFIX + secrets.token_urlsafe(32)
        s.add(Token(user_id=user.id, kind=WEB_KIND, token_hash=hash_token(token), created_at=t, last_used_at=t))
        # Sweep this user's expired sessions while we are here.
        for old in s.exec(select(Token).where(Token.user_id == user.id, Token.kind == WEB_KIND)):
            if _session_expired(old, t):
                s.delete(old)
        s.commit()
        return token, Principal(user_id=user.id, user_name=user.name, is_admin=user.is_admin)


def _session_expired(tok: Token, t: datetime) -> bool:
    last = tok.last_used_at or tok.created_at
    return t - tok.created_at > SESSION_MAX or t - last > SESSION_IDLE


def web_session_principal(ctx: ServerContext, token: str | None) -> Principal:
    """The user behind a session cookie; AuthError if it is missing, unknown or expired."""
    if not token or not token.startswith(WEB_PREFIX):
        raise AuthError("please log in")
    with ctx.catalog.session() as s:
        row = s.exec(
            select(Token, User).join(User, User.id == Token.user_id).where(Token.token_hash == hash_token(token))
        ).first()
        if row is None or row[0].kind != WEB_KIND:
            raise AuthError("your session has ended; please log in again")
        tok, user = row
        t = now()
        if _session_expired(tok, t):
            s.delete(tok)
            s.commit()
            raise AuthError("your session has expired; please log in again")
        if tok.last_used_at is None or t - tok.last_used_at > _TOUCH_EVERY:
            tok.last_used_at = t
            s.add(tok)
            s.commit()
        return Principal(user_id=user.id, user_name=user.name, is_admin=user.is_admin)


def end_web_session(ctx: ServerContext, token: str | None) -> None:
    if not token:
        return
    with ctx.catalog.session() as s:
        for tok in s.exec(select(Token).where(Token.token_hash == hash_token(token), Token.kind == WEB_KIND)):
            s.delete(tok)
        s.commit()
