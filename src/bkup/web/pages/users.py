"""Users (admin): create, set password, grant or withdraw admin, delete with everything they own; retention per user. Your own account."""

from __future__ import annotations

from litestar import Controller, Request, Response, get, post
from litestar.params import FromPath
from litestar.response import Template

from bkup.errors import UsageError
from bkup.server import accounts
from bkup.server.principal import require_admin
from bkup.web import overview, render, retention, session
from bkup.web.pages.common import Ctx, Form, Me, checkbox, text


class UserPages(Controller):
    path = "/users"

    @get("/", sync_to_thread=True)
    def users(self, request: Request, ctx: Ctx, me: Me) -> Template:
        require_admin(me)
        return render.page(request, "users.html", rows=overview.user_rows(ctx, me), policy_fields=retention.FIELDS)

    @post("/", sync_to_thread=True)
    def create(self, request: Request, ctx: Ctx, me: Me, data: Form) -> Response:
        require_admin(me)
        user = accounts.create_user(ctx, text(data, "name").strip(), text(data, "password"), is_admin=checkbox(data, "is_admin"))
        return render.redirect("/users", f"{'Admin' if user.is_admin else 'User'} {user.name} created.")

    @post("/{user_id:int}/password", sync_to_thread=True)
    def password(self, request: Request, ctx: Ctx, me: Me, user_id: FromPath[int], data: Form) -> Response:
        require_admin(me)
        info = accounts.get_user_by_id(ctx, me, user_id)
        keep = request.cookies.get(session.SESSION_COOKIE) if user_id == me.user_id else None
        accounts.set_password(ctx, me, user_id, text(data, "password"), keep_token=keep)
        return render.redirect("/users", f"Password of {info.name} changed; their other sessions and API tokens are revoked.")

    @post("/{user_id:int}/admin", sync_to_thread=True)
    def admin(self, request: Request, ctx: Ctx, me: Me, user_id: FromPath[int], data: Form) -> Response:
        info = accounts.set_admin(ctx, me, user_id, checkbox(data, "is_admin"))
        return render.redirect("/users", f"{info.name} is {'now an admin' if info.is_admin else 'no longer an admin'}.")

    @post("/{user_id:int}/policy", sync_to_thread=True)
    def policy(self, request: Request, ctx: Ctx, me: Me, user_id: FromPath[int], data: Form) -> Response:
        require_admin(me)
        info = accounts.get_user_by_id(ctx, me, user_id)
        retention.set_user_policy(ctx, me, user_id, retention.policy_from_form(data))
        return render.redirect("/users", f"Retention policy of {info.name} saved.")

    @get("/{user_id:int}/delete", sync_to_thread=True)
    def confirm_delete(self, request: Request, ctx: Ctx, me: Me, user_id: FromPath[int]) -> Template:
        require_admin(me)
        rows = [r for r in overview.user_rows(ctx, me) if r.info.id == user_id]
        if not rows:
            accounts.get_user_by_id(ctx, me, user_id)  # raises NotFound
        return render.page(request, "user_delete.html", row=rows[0])

    @post("/{user_id:int}/delete", sync_to_thread=True)
    def delete(self, request: Request, ctx: Ctx, me: Me, user_id: FromPath[int], data: Form) -> Response:
        require_admin(me)
        info = accounts.get_user_by_id(ctx, me, user_id)
        if text(data, "confirm").strip() != info.name:
            raise UsageError(f"type the user's name ({info.name}) to confirm")
        name = accounts.delete_user(ctx, me, user_id)
        return render.redirect("/users", f"User {name}, their clients and all their backups are deleted.")


class AccountPage(Controller):
    path = "/account"

    @get("/", sync_to_thread=True)
    def account(self, request: Request, ctx: Ctx, me: Me) -> Template:
        return render.page(request, "account.html", user=accounts.get_user_by_id(ctx, me, me.user_id))

    @post("/password", sync_to_thread=True)
    def password(self, request: Request, ctx: Ctx, me: Me, data: Form) -> Response:
        if text(data, "password") != text(data, "confirm"):
            raise UsageError("the two new passwords differ")
        accounts.change_own_password(
            ctx, me, text(data, "current"), text(data, "password"), keep_token=request.cookies.get(session.SESSION_COOKIE)
        )
        return render.redirect("/account", "Password changed; your other sessions and API tokens are revoked.")
