"""The agent's setup page: a small local web page that registers an unconfigured agent, then shows only its status.

Served by the standard library (`http.server`, one thread per request) on
`setup_ui_listen` (default 127.0.0.1:8080). The form asks for the server
URL, a user and password, the client's name and the paths to back up; it is
locked by a one-time setup code that only the agent's log shows. A good
submission registers the client (`credentials.register`), puts the paths
into the client's configuration on the server with the user's token (the
agent's own token may not change it), and saves the agent's identity; from
then on the page shows the agent's status and refuses new credentials. The
password is used once and kept nowhere. Wrong codes cost a second each, one
attempt at a time.
"""

from __future__ import annotations

import hmac
import html
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import msgspec

from bkup.agent.api import ApiClient, normalize_server
from bkup.agent.config import LocalDefaults
from bkup.agent.credentials import default_client_name, register
from bkup.agent.state import save_identity
from bkup.errors import AuthError, BkupError, ServerError, UsageError

log = logging.getLogger("bkup.agent.setup")

CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I: read from a log, typed by hand
MAX_BODY = 64 * 1024
WRONG_CODE_DELAY_S = 1.0

HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
}
STYLE = "body{font:15px system-ui,sans-serif;max-width:40em;margin:2em auto;padding:0 1em}label{display:block;margin:.8em 0 .2em}" \
    "input,textarea{width:100%;padding:.4em;box-sizing:border-box}button{margin-top:1em;padding:.5em 1.5em}" \
    ".err{color:#a00}.ok{color:#070}dt{font-weight:bold;margin-top:.5em}"


def new_code() -> str:
    raw = "".join(secrets.choice(CODE_ALPHABET) for _ in range(8))
    return f"{raw[:4]}-{raw[4:]}"


def _normal_code(code: str) -> str:
    return "".join(code.split()).replace("-", "").upper()


class SetupPage:
    """The page and its one piece of logic, `submit` (called by the HTTP handler, and by tests directly)."""

    def __init__(
        self,
        listen: str,
        *,
        state_dir: str | os.PathLike[str],
        status: Callable[[], dict[str, Any]],
        local: LocalDefaults | None = None,
        transport: Any = None,
        configured: bool = False,
    ) -> None:
        self.listen = listen
        self.state_dir = state_dir
        self.status = status
        self.local = local or LocalDefaults()
        self.transport = transport
        self.code: str | None = None if configured else new_code()
        self.configured = threading.Event()
        if configured:
            self.configured.set()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.url = ""

    def start(self) -> str:
        host, _, port = self.listen.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        if not port.isdigit():
            raise UsageError(f"setup page address {self.listen!r}: expected HOST:PORT")
        page = self

        class Handler(_Handler):
            owner = page

        self._server = ThreadingHTTPServer((host, int(port)), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="bkup-setup-page", daemon=True).start()
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{self._server.server_address[1]}/"
        return self.url

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def submit(self, form: dict[str, str]) -> tuple[int, str]:
        """Check the code, register, save: (HTTP status, message for the page)."""
        with self._lock:  # one attempt at a time: guessing the code takes a second per try
            if self.configured.is_set() or self.code is None:
                return 409, "This agent is already configured: it accepts no new credentials."
            if not hmac.compare_digest(_normal_code(form.get("code", "")).encode(), _normal_code(self.code).encode()):
                time.sleep(WRONG_CODE_DELAY_S)
                log.warning("setup page: wrong setup code entered")
                return 403, "Wrong setup code. It is printed in the agent's log."
            try:
                server = normalize_server(form.get("server", ""))
                user, password = form.get("user", "").strip(), form.get("password", "")
                if not user or not password:
                    raise UsageError("user and password are needed to register this machine")
                name = form.get("name", "").strip() or default_client_name()
                paths = [p.strip() for p in form.get("paths", "").replace(",", "\n").splitlines() if p.strip()]
                for p in paths:
                    if not p.startswith("/"):
                        raise UsageError(f"{p!r} is not an absolute path")
                with ApiClient(server, transport=self.transport, retries=1) as api:
                    identity = register(api, user, password, name, configure=lambda a, cid: self._configure(a, cid, paths))
            except AuthError as exc:
                return 401, f"The server refused the login: {exc}"
            except ServerError as exc:
                return 502, str(exc)
            except BkupError as exc:
                return 400, str(exc)
            save_identity(self.state_dir, identity)
            self.code = None  # used up
            self.configured.set()
            log.info("setup page: registered as client %s (id %d) on %s", identity.client_name, identity.client_id, server)
            return 200, f"Configured: this machine is client {identity.client_name} on {server}. Backing up now."

    def _configure(self, api: ApiClient, client_id: int, paths: list[str]) -> None:
        wanted = paths or list(self.local.paths)
        current = api.client_config(client_id)
        if wanted and (paths or not current.paths):  # typed here: they win; defaults only fill an empty config
            api.put_client_config(client_id, msgspec.structs.replace(current, paths=wanted))

    # --- pages ------------------------------------------------------------------------------------------

    def render(self, message: str = "", ok: bool = False, form: dict[str, str] | None = None) -> str:
        note = f'<p class="{"ok" if ok else "err"}">{html.escape(message)}</p>' if message else ""
        if self.configured.is_set():
            return _page("bkup agent", note + self._status_html(), refresh=not message)
        f = form or {}
        v = lambda k, d="": html.escape(f.get(k, d), quote=True)
        paths = v("paths", "\n".join(self.local.paths))
        body = f"""{note}<p>This agent is not configured yet. The setup code is printed in the agent's log.</p>
<form method="post" action="/setup">
<label>Setup code</label><input name="code" autocomplete="off" required>
<label>Server URL</label><input name="server" value="{v('server')}" placeholder="https://backup.example.org" required>
<label>User</label><input name="user" value="{v('user')}" autocomplete="username" required>
<label>Password</label><input name="password" type="password" autocomplete="current-password" required>
<label>Client name</label><input name="name" value="{v('name', default_client_name())}">
<label>Paths to back up (one per line)</label><textarea name="paths" rows="4">{paths}</textarea>
<button type="submit">Register and start backing up</button></form>"""
        return _page("Set up the bkup agent", body)

    def _status_html(self) -> str:
        st = self.status()
        last = st.get("last_run") or {}
        rows = [
            ("State", st.get("state")), ("Client", st.get("client")), ("Server", st.get("server")),
            ("Last run", f"{last.get('seq')} ({last.get('trigger')}) {last.get('status')} at {last.get('finished_at')}" if last else "none yet"),
            ("Next full scan", st.get("next_full_at")), ("Watching", ", ".join(st.get("watching") or []) or None),
            ("Last error", st.get("last_error")),
        ]
        items = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(str(val))}</dd>" for k, val in rows if val)
        return f"<p>This agent is configured. New credentials are not accepted here.</p><dl>{items}</dl>"


def _page(title: str, body: str, refresh: bool = False) -> str:
    meta = '<meta http-equiv="refresh" content="10">' if refresh else ""
    return (
        f'<!doctype html><html><head><meta charset="utf-8">{meta}<title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )


class _Handler(BaseHTTPRequestHandler):
    owner: SetupPage
    server_version = "bkup-agent"
    sys_version = ""

    def do_GET(self) -> None:
        if self.path in ("/", "/index.html"):
            self._send(200, self.owner.render())
        elif self.path == "/status":
            st = {k: v for k, v in self.owner.status().items() if k != "setup_url"}
            self._send(200, json.dumps({**st, "configured": self.owner.configured.is_set()}), "application/json")
        else:
            self._send(404, _page("Not found", ""))

    def do_POST(self) -> None:
        if self.path != "/setup":
            self._send(404, _page("Not found", ""))
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._send(413, _page("Too large", ""))
            return
        fields = parse_qs(self.rfile.read(length).decode("utf-8", "replace"), keep_blank_values=True)
        form = {k: v[0] for k, v in fields.items()}
        status, message = self.owner.submit(form)
        form.pop("password", None)
        self._send(status, self.owner.render(message, ok=status == 200, form=form))

    def _send(self, status: int, body: str, content_type: str = "text/html; charset=utf-8") -> None:
        data = body.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for k, v in HEADERS.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("setup page: " + format, *args)
