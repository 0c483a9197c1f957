"""Who is looking at a page, and whether a form really came from us: the session cookie and CSRF tokens.

The session cookie carries a random token whose hash is a `tokens` row of
kind "web" (`accounts.start_web_session`), so any replica on the same
database resolves it; it is HttpOnly and SameSite=Lax (Secure over HTTPS).

Every form carries a CSRF token, checked in one place (`csrf_guard`, a
guard on the whole web router) for every method that is not GET/HEAD. The
token is an HMAC of the session token, so it needs no storage and dies with
the session. The login form, which has no session yet, uses the same scheme
over a random pre-session cookie.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.datastructures import Cookie
from litestar.di import NamedDependency
from litestar.handlers.base import BaseRouteHandler

from bkup.errors import Forbidden
from bkup.server import accounts
from bkup.server.context import ServerContext
from bkup.server.principal import Principal

SESSION_COOKIE = "bkup_session"
LOGIN_COOKIE = "bkup_login"  # the pre-session CSRF secret of the login form
CSRF_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOGIN_FORM = "login"  # route `opt["csrf"]` value for forms posted before a session exists


class CsrfRefused(Forbidden):
    pass


def csrf_for(secret: str) -> str:
    return hmac.new(secret.encode(), b"bkup-web-csrf", hashlib.sha256).hexdigest()


def _secure(request: Request | ASGIConnection) -> bool:
    return request.url.scheme == "https"


def csrf_token(request: Request) -> str:
    """The token the forms of a signed-in page send back (empty without a session)."""
    secret = request.cookies.get(SESSION_COOKIE)
    return csrf_for(secret) if secret else ""


def login_csrf_token(request: Request) -> str:
    """The token of the login form: bound to the pre-session cookie (see `login_cookie`)."""
    secret = request.state.get("login_secret") or request.cookies.get(LOGIN_COOKIE)
    return csrf_for(secret) if secret else ""


async def csrf_guard(connection: ASGIConnection, route_handler: BaseRouteHandler) -> None:
    """Refuse (403) any state-changing request whose form does not carry this session's CSRF token."""
    if connection.scope["method"] in SAFE_METHODS:
        return
    cookie = LOGIN_COOKIE if route_handler.opt.get("csrf") == LOGIN_FORM else SESSION_COOKIE
    secret = connection.cookies.get(cookie)
    request = connection if isinstance(connection, Request) else Request(connection.scope, connection.receive)
    form = await request.form()
    sent = form.get(CSRF_FIELD)
    if not secret or not isinstance(sent, str) or not hmac.compare_digest(sent, csrf_for(secret)):
        raise CsrfRefused("this form has expired or did not come from this site; reload the page and try again")


def provide_me(request: Request, ctx: NamedDependency[ServerContext]) -> Principal:
    """The signed-in user (AuthError sends the browser to the login page)."""
    me = accounts.web_session_principal(ctx, request.cookies.get(SESSION_COOKIE))
    request.state.me = me
    return me


def session_cookie(request: Request, token: str) -> Cookie:
    # No max_age: the browser forgets it on exit; the server ends it after idle/max time anyway.
    return Cookie(key=SESSION_COOKIE, value=token, path="/", httponly=True, samesite="lax", secure=_secure(request))


def clear_session_cookie() -> Cookie:
    return Cookie(key=SESSION_COOKIE, value="", path="/", max_age=0, httponly=True, samesite="lax")


def login_cookie(request: Request) -> Cookie | None:
    """A pre-session secret for the login form, if the browser has none yet (and remember it for this render)."""
    if request.cookies.get(LOGIN_COOKIE):
        return None
    secret = secrets.token_urlsafe(32)
    request.state.login_secret = secret
    return Cookie(key=LOGIN_COOKIE, value=secret, path="/", httponly=True, samesite="lax", secure=_secure(request))


def safe_next(target: str | None) -> str:
    """Only local paths: no open redirect through `?next=`."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target
