"""Login and logout: the session cookie is set and cleared here; failed logins are rate-limited like the API's."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, Request, Response, get, post
from litestar.datastructures import Cookie
from litestar.params import QueryParameter

from bkup.errors import AuthError
from bkup.server import accounts
from bkup.server.ratelimit import TooManyAttempts
from bkup.web import render, session
from bkup.web.pages.common import Ctx, Form, text


def _login_page(request: Request, *, status: int = 200, error: str | None = None, user: str = "", next_: str = "/") -> Response:
    cookie = session.login_cookie(request)
    return render.page(
        request, "login.html", status=status, cookies=[cookie] if cookie else [],
        csrf=session.login_csrf_token(request), error=error, user=user, next=next_,
    )


class AuthPages(Controller):
    path = "/"

    @get("/login", sync_to_thread=True)
    def login_form(self, request: Request, ctx: Ctx, next: Annotated[str | None, QueryParameter()] = None) -> Response:
        try:
            accounts.web_session_principal(ctx, request.cookies.get(session.SESSION_COOKIE))
        except AuthError:
            return _login_page(request, next_=session.safe_next(next))
        return render.redirect(session.safe_next(next))

    @post("/login", sync_to_thread=True, opt={"csrf": session.LOGIN_FORM})
    def login(self, request: Request, ctx: Ctx, data: Form) -> Response:
        name = text(data, "user").strip()
        next_ = session.safe_next(text(data, "next"))
        key = f"{request.client.host if request.client else '-'}:{name}"
        try:
            with ctx.login_limiter.attempt(key):
                token, _ = accounts.start_web_session(ctx, name, text(data, "password"))
        except TooManyAttempts as exc:
            return _login_page(request, status=429, error=str(exc), user=name, next_=next_)
        except AuthError as exc:
            return _login_page(request, status=401, error=str(exc), user=name, next_=next_)
        gone = Cookie(key=session.LOGIN_COOKIE, value="", path="/", max_age=0, httponly=True, samesite="lax")
        return render.redirect(next_, cookies=[session.session_cookie(request, token), gone])

    @post("/logout", sync_to_thread=True)
    def logout(self, request: Request, ctx: Ctx) -> Response:
        accounts.end_web_session(ctx, request.cookies.get(session.SESSION_COOKIE))
        return render.redirect("/login", "You are signed out.", cookies=[session.clear_session_cookie()])
