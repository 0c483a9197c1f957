"""Which server, token and client a client-side command uses: stored logins, agent registration, name lookup.

Two secrets live on a machine, both in 0600 JSON files: the user API tokens of
`bkup login` (`credentials.json` in the config dir, keyed by server URL) and
the agent's own token (`agent.json` in the state dir, see `agent.state`).
`ls` and `restore` take the first of: --token, BKUP_TOKEN, the stored login
for that server, the agent's token for that server.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from pathlib import Path

import httpx

from bkup import protocol
from bkup.agent.api import ApiClient, normalize_server
from bkup.agent.state import AgentIdentity, load_identity, save_identity, write_secret_json
from bkup.errors import AuthError, ConfigError, Conflict, Forbidden, NotFound, UsageError
from bkup.settings import Settings

CREDENTIALS_FILE = "credentials.json"


# --- stored logins ----------------------------------------------------------------------


def _credentials_path(config_dir: str | os.PathLike[str]) -> Path:
    return Path(config_dir) / CREDENTIALS_FILE


def load_credentials(config_dir: str | os.PathLike[str]) -> dict[str, dict[str, str]]:
    """server URL → {"user": …, "token": …}."""
    path = _credentials_path(config_dir)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: unreadable credentials ({exc})") from None
    servers = data.get("servers") if isinstance(data, dict) else None
    if not isinstance(servers, dict):
        raise ConfigError(f"{path}: unreadable credentials (no 'servers' table)")
    return servers


def store_credentials(config_dir: str | os.PathLike[str], server: str, user: str, token: str) -> Path:
    servers = load_credentials(config_dir)
    servers[normalize_server(server)] = {"user": user, "token": token}
    Path(config_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
    path = _credentials_path(config_dir)
    write_secret_json(path, {"servers": servers})
    return path


def login(settings: Settings, user: str, password: str, *, transport: httpx.BaseTransport | None = None) -> protocol.LoginResponse:
    """Log in and store the API token for `settings.server` (what `bkup login` does)."""
    server = require_server(settings.server)
    with ApiClient(server, transport=transport) as api:
        answer = api.login(user, password)
    store_credentials(settings.config_dir, server, answer.user, answer.token)
    return answer


# --- ls and restore -------------------------------------------------------------------------


def require_server(server: str | None, fallback: str | None = None) -> str:
    url = server or fallback
    if not url:
        raise UsageError("no server: give --server URL or set BKUP_SERVER")
    return normalize_server(url)


def client_api(settings: Settings, *, transport: httpx.BaseTransport | None = None) -> ApiClient:
    """An API client for `ls`/`restore`: the server and token from flags, env, stored login or agent identity."""
    identity = load_identity(settings.state_dir)
    server = require_server(settings.server, identity.server if identity else None)
    token = settings.token or None
    if token is None:
        stored = load_credentials(settings.config_dir).get(server)
        token = stored.get("token") if stored else None
    if token is None and identity is not None and normalize_server(identity.server) == server:
        token = identity.token
    if token is None:
        raise AuthError(f"no token for {server}: pass --token, set BKUP_TOKEN, or run 'bkup login'")
    return ApiClient(server, token, transport=transport)


def find_client(api: ApiClient, name: str) -> protocol.ClientInfo:
    """The client called `name` among those this token may see (its own, for an agent token)."""
    try:
        found = api.list_clients(name=name)
    except Forbidden:
        me = api.me()
        found = [me] if me.name == name else []
    if not found:
        raise NotFound(f"no client {name!r} (or this token may not see it)")
    return found[0]


# --- the agent's own identity ------------------------------------------------------------------


def default_client_name() -> str:
    return socket.gethostname().split(".")[0] or "localhost"


Configure = Callable[[ApiClient, int], None]


def register(api: ApiClient, user: str, password: str, name: str, *, configure: Configure | None = None) -> AgentIdentity:
    """Log in as `user`, create client `name` (or take over the user's existing one: new token).

    `configure(api, client_id)` runs while `api` still holds the user's token:
    the agent's own token may not change its configuration, the owner may.
    """
    account = api.login(user, password)
    api.token = account.token
    existing = api.list_clients(name=name)
    if existing:
        client = existing[0]
        if client.user != account.user:
            raise Conflict(f"client {name!r} belongs to user {client.user!r}, not {account.user!r}")
        created = api.rotate_token(client.id)
    else:
        created = api.create_client(name)
    if configure is not None:
        configure(api, created.id)
    api.token = created.token
    return AgentIdentity(server=api.server, client_id=created.id, client_name=created.name, token=created.token)


def agent_api(
    settings: Settings,
    *,
    user: str | None = None,
    password: Callable[[], str] | None = None,
    name: str | None = None,
    transport: httpx.BaseTransport | None = None,
    configure: Configure | None = None,
) -> tuple[ApiClient, AgentIdentity]:
    """The agent's API client and identity: --token, else the stored agent token, else registration.

    The identity is saved to the state dir, so later runs (and `ls`/`restore`
    on this machine) need no token. `password` is only called when
    registration is needed; `configure` too (see `register`).
    """
    stored = load_identity(settings.state_dir)
    server = require_server(settings.server, stored.server if stored else None)
    if stored is not None and normalize_server(stored.server) != server:
        stored = None
    if stored is not None and user is not None and name is not None and name != stored.client_name:
        stored = None  # registering under another name
    api = ApiClient(server, transport=transport)
    try:
        if settings.token:
            api.token = settings.token
            identity = _identify(api, settings.token)
        elif stored is not None:
            api.token = stored.token
            try:
                identity = _identify(api, stored.token)
            except AuthError:
                if user is None:
                    raise AuthError(
                        f"the stored agent token for {server} was refused (revoked?); "
                        "register again with --user U --password-stdin, or pass --token"
                    ) from None
                identity = _register(api, user, password, name, configure)
        elif user is not None:
            identity = _register(api, user, password, name, configure)
        else:
            raise UsageError("no agent token: give --token T, or --user U --password-stdin to register this machine")
    except BaseException:
        api.close()
        raise
    save_identity(settings.state_dir, identity)
    return api, identity


def _identify(api: ApiClient, token: str) -> AgentIdentity:
    try:
        me = api.me()
    except Forbidden:
        raise UsageError(
            "that token is not an agent token: use the token 'bkup client add' printed, "
            "or --user U --password-stdin to register this machine"
        ) from None
    return AgentIdentity(server=api.server, client_id=me.id, client_name=me.name, token=token)


def _register(
    api: ApiClient, user: str, password: Callable[[], str] | None, name: str | None, configure: Configure | None = None
) -> AgentIdentity:
    if password is None:
        raise UsageError("--user needs --password-stdin")
    return register(api, user, password(), name or default_client_name(), configure=configure)
