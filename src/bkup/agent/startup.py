"""Starting the agent service: make sure it is configured (or open the setup page), reach the server, start the threads.

"Configured" means: an identity in the state dir (`agent.json`), or a server
URL with an agent token or a user and password to register with. An agent
with none of these opens its setup page, unless that is turned off
(`--no-setup-ui`, `BKUP_SETUP_UI=false`): then it exits 2 naming the
missing settings. The server being down at start-up is no error: the agent
retries with backoff until it answers (or the agent is stopped).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import msgspec

from bkup.agent.api import ApiClient
from bkup.agent.credentials import agent_api
from bkup.agent.logship import LogShipper
from bkup.agent.signals import Backoff, Signals
from bkup.agent.state import StateCache, load_identity
from bkup.errors import BkupError, ConfigError, ServerError, UsageError

if TYPE_CHECKING:
    from bkup.agent.service import Service

log = logging.getLogger("bkup.agent.service")
setup_log = logging.getLogger("bkup.agent.setup")  # never shipped: it prints the setup code


def is_configured(service: Service) -> bool:
    s = service.settings
    if load_identity(s.state_dir) is not None:
        return True
    return bool(s.server and (s.token or (service.user and service.password)))


def missing_settings(service: Service) -> str:
    s = service.settings
    missing = []
    if not s.server:
        missing.append("BKUP_SERVER (--server)")
    if not (s.token or (service.user and service.password)):
        missing.append("BKUP_TOKEN (--token) or BKUP_USER and BKUP_PASSWORD (--user, --password-stdin)")
    if not service.local.paths:
        missing.append("BKUP_PATHS (--path), unless the server's configuration for this client names the paths")
    return (
        "this agent is not configured; missing: " + "; ".join(missing)
        + ". Set them, or let the agent open its setup page (BKUP_SETUP_UI=true, the default)."
    )


def prepare(service: Service) -> bool:
    """Everything before the main loop; False if the agent was stopped meanwhile."""
    if not is_configured(service):
        if service.setup_ui is False or (service.setup_ui is None and not service.settings.setup_ui):
            raise UsageError(missing_settings(service))
        if not _wait_for_setup(service):
            return False
        service._first_trigger = "setup"
    elif service.setup_ui:
        _open_page(service)
    if not _connect(service):
        return False
    _start_threads(service)
    return True


def _open_page(service: Service) -> str:
    from bkup.agent.setup_ui import SetupPage

    page = SetupPage(
        service.settings.setup_ui_listen, state_dir=service.settings.state_dir, status=service.status.snapshot,
        local=service.local, transport=service.transport, configured=is_configured(service),
    )
    try:
        url = page.start()
    except OSError as exc:
        raise ConfigError(f"cannot open the setup page on {service.settings.setup_ui_listen}: {exc.strerror or exc}") from None
    service.setup_page = page
    service.status.update(setup_url=url)
    return url


def _wait_for_setup(service: Service) -> bool:
    url = _open_page(service)
    page = service.setup_page
    setup_log.warning("this agent is not configured yet: open %s and enter the setup code %s", url, page.code)
    setup_log.warning(
        "(or configure it with BKUP_SERVER and BKUP_TOKEN, BKUP_PATHS; --no-setup-ui or BKUP_SETUP_UI=false turns this page off)"
    )
    service.status.update(state="setup")
    while not service.stop.is_set():
        if page.configured.wait(0.5):
            setup_log.info("configured through the setup page")
            return True
    return False


def _connect(service: Service) -> bool:
    from bkup.agent.service import ServiceApi

    s = service.settings
    password = service.password
    backoff = Backoff(cap=s.retry_max_delay)
    while not service.stop.is_set():
        try:
            api, identity = agent_api(
                s, user=service.user, password=(lambda: password) if password else None, name=service.name,
                transport=service.transport, configure=lambda a, client_id: push_defaults(service, a, client_id),
            )
        except ServerError as exc:
            delay = backoff.next_delay()
            if backoff.failures == 1:
                log.warning("cannot reach the server: %s; retrying with backoff", exc)
            service.status.update(state="error", last_error=str(exc))
            service.stop.wait(delay)
            continue
        api.close()
        service.api = ServiceApi(
            identity.server, identity.token, transport=service.transport, stop=service.stop, on_start=service._run_started
        )
        service.cache = StateCache.open(s.state_dir, server=identity.server, client_id=identity.client_id)
        service.status.update(
            state="idle", last_error=None, server=identity.server, client=identity.client_name, client_id=identity.client_id
        )
        log.info("agent for client %s (id %d) on %s", identity.client_name, identity.client_id, identity.server)
        return True
    return False


def _start_threads(service: Service) -> None:
    s = service.settings
    assert service.api is not None and service.api.token and service._queue is not None
    service.shipper = LogShipper(
        service._queue, service.api.server, service.api.token, service.stop, retry_max_delay=s.retry_max_delay,
        transport=service.transport,
    )
    service.shipper.start()
    service.signals = Signals(
        service.api.server, service.api.token, service, service.stop, retry_max_delay=s.retry_max_delay,
        transport=service.transport,
    )
    service.signals.start()


def push_defaults(service: Service, api: ApiClient, client_id: int) -> None:
    """While registering (as the user): the agent's --path/--exclude become the server's configuration, unless it has paths."""
    local = service.local
    if not local.paths:
        return
    try:
        current = api.client_config(client_id)
        if current.paths:
            return  # the server's configuration wins once it names paths
        new = msgspec.structs.replace(current, paths=list(local.paths), exclude=current.exclude or list(local.exclude))
        api.put_client_config(client_id, new)
        log.info("saved --path/--exclude as this client's configuration on the server")
    except BkupError as exc:
        log.warning("could not save --path/--exclude to the server's configuration: %s", exc)
