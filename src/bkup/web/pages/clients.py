"""Clients: list and create (agent token shown once), the client page (status, runs, configuration, logs), a run's changes, delete."""

from __future__ import annotations

import shlex
from typing import Annotated

from litestar import Controller, Request, Response, get, post
from litestar.params import FromPath, QueryParameter
from litestar.response import Template

from bkup import protocol
from bkup.errors import UsageError
from bkup.server import accounts, agents, runs
from bkup.web import charts, overview, render, retention
from bkup.web.pages.common import Ctx, Form, Me, checkbox, lines, optional_int, text

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_LINES = 50
RUNS_SHOWN = 50


def agent_command(request: Request, token: str, paths: list[str]) -> str:
    """The ready-to-paste command that connects a machine as this client."""
    server = str(request.base_url).rstrip("/")
    parts = ["bkup", "agent", "--server", server, "--token", token]
    for p in paths or ["/path/to/back/up"]:
        parts += ["--path", p]
    return " ".join(shlex.quote(p) for p in parts)


def config_from_form(form: dict, current: protocol.ClientConfig) -> protocol.ClientConfig:
    """The configuration form as a ClientConfig; a command kept from before keeps its timeout and shell flag."""
    before = {c.command: c for c in current.commands}
    return protocol.ClientConfig(
        paths=lines(form, "paths"),
        include=lines(form, "include"),
        exclude=lines(form, "exclude"),
        schedule=text(form, "schedule").strip() or current.schedule,
        watch=checkbox(form, "watch"),
        commands=[before.get(c) or protocol.PreCommand(command=c) for c in lines(form, "commands")],
        bandwidth_limit_kbps=optional_int(form, "bandwidth_limit_kbps", label="bandwidth_limit_kbps"),
        version=current.version,
    )


def client_page(
    request: Request, ctx, me, client_id: int, *, level: str | None = None,
    config: protocol.ClientConfig | None = None, config_error: str | None = None, status: int = 200,
) -> Template:
    info = accounts.get_client(ctx, me, client_id)  # 404 for other users' clients
    if level not in LOG_LEVELS:
        level = None
    saved = agents.get_config(ctx, me, client_id)
    series = overview.series(ctx, me, client_id=client_id)
    return render.page(
        request, "client.html", status=status,
        client=info,
        state=agents.client_status(ctx, client_id),
        config=config or saved,
        config_error=config_error,
        runs=runs.list_runs(ctx, me, client_id, RUNS_SHOWN),
        logs=agents.list_logs(ctx, me, client_id, level=level, limit=LOG_LINES),
        level=level,
        levels=LOG_LEVELS,
        duration_chart=charts.bar_chart(series.durations, render.fmt_duration, "Duration of the last runs"),
        command=agent_command(request, "TOKEN", saved.paths),
        client_policy=retention.get_client_policy(ctx, me, client_id),
        policy_fields=retention.FIELDS,
    )


class ClientPages(Controller):
    path = "/clients"

    @get("/", sync_to_thread=True)
    def list_clients(self, request: Request, ctx: Ctx, me: Me) -> Template:
        users = [u.name for u in accounts.list_users(ctx)] if me.is_admin else []
        return render.page(request, "clients.html", rows=overview.client_rows(ctx, me), users=users)

    @post("/", sync_to_thread=True)
    def create_client(self, request: Request, ctx: Ctx, me: Me, data: Form) -> Template:
        owner = text(data, "owner").strip() or None
        created = accounts.create_client(ctx, me, text(data, "name").strip(), owner)
        return render.page(
            request, "client_token.html", status=201, created=created, new=True,
            command=agent_command(request, created.token, []),
        )

    @get("/{client_id:int}", sync_to_thread=True)
    def client(
        self, request: Request, ctx: Ctx, me: Me, client_id: FromPath[int],
        level: Annotated[str | None, QueryParameter()] = None,
    ) -> Template:
        return client_page(request, ctx, me, client_id, level=level)

    @post("/{client_id:int}/config", sync_to_thread=True)
    def save_config(self, request: Request, ctx: Ctx, me: Me, client_id: FromPath[int], data: Form) -> Response:
        current = agents.get_config(ctx, me, client_id)
        try:
            wanted = config_from_form(data, current)
        except UsageError as exc:
            return client_page(request, ctx, me, client_id, config=current, config_error=str(exc), status=400)
        try:
            saved = agents.set_config(ctx, me, client_id, wanted)
        except UsageError as exc:
            # Show the form as it was sent, so nothing typed is lost.
            return client_page(request, ctx, me, client_id, config=wanted, config_error=str(exc), status=400)
        return render.redirect(f"/clients/{client_id}#config", f"Configuration saved (version {saved.version}); the agent picks it up at its next check-in.")

    @post("/{client_id:int}/policy", sync_to_thread=True)
    def save_policy(self, request: Request, ctx: Ctx, me: Me, client_id: FromPath[int], data: Form) -> Response:
        policy = retention.policy_from_form(data)
        retention.set_client_policy(ctx, me, client_id, policy)
        return render.redirect(f"/clients/{client_id}#retention", "Retention override saved.")

    @post("/{client_id:int}/backup", sync_to_thread=True)
    def backup_now(self, request: Request, ctx: Ctx, me: Me, client_id: FromPath[int]) -> Response:
        agents.request_backup(ctx, me, client_id)
        return render.redirect(f"/clients/{client_id}", "Backup requested: the agent starts it at its next check-in.")

    @post("/{client_id:int}/token", sync_to_thread=True)
    def new_token(self, request: Request, ctx: Ctx, me: Me, client_id: FromPath[int]) -> Template:
        created = accounts.rotate_agent_token(ctx, me, client_id)
        config = agents.get_config(ctx, me, client_id)
        return render.page(
            request, "client_token.html", created=created, new=False,
            command=agent_command(request, created.token, config.paths),
        )

    @get("/{client_id:int}/delete", sync_to_thread=True)
    def confirm_delete(self, request: Request, ctx: Ctx, me: Me, client_id: FromPath[int]) -> Template:
        info = accounts.get_client(ctx, me, client_id)
        rows = [r for r in overview.client_rows(ctx, me) if r.info.id == client_id]
        return render.page(request, "client_delete.html", client=info, row=rows[0] if rows else None)

    @post("/{client_id:int}/delete", sync_to_thread=True)
    def delete(self, request: Request, ctx: Ctx, me: Me, client_id: FromPath[int], data: Form) -> Response:
        info = accounts.get_client(ctx, me, client_id)
        if text(data, "confirm").strip() != info.name:
            raise UsageError(f"type the client's name ({info.name}) to confirm")
        name = accounts.delete_client(ctx, me, client_id)
        return render.redirect("/clients", f"Client {name} and its backup history are deleted.")

    @get("/{client_id:int}/runs/{seq:int}", sync_to_thread=True)
    def run(self, request: Request, ctx: Ctx, me: Me, client_id: FromPath[int], seq: FromPath[int]) -> Template:
        info = accounts.get_client(ctx, me, client_id)
        return render.page(request, "run.html", client=info, changes=overview.run_changes(ctx, me, client_id, seq))
