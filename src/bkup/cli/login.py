"""`bkup login`: log in to a server as a user and store the API token for `ls` and `restore`.

The token goes to credentials.json in the config dir (mode 0600), keyed by
server URL. Exit codes: 0 ok, 1 wrong user or password / server error, 2 usage error.
"""

from __future__ import annotations

import getpass
import sys
from typing import Annotated

import typer

from bkup.agent import credentials
from bkup.cli.common import read_password_stdin
from bkup.errors import UsageError
from bkup.settings import load_settings


def login(
    server: Annotated[str | None, typer.Option("--server", help="Server URL (env BKUP_SERVER).", show_default=False)] = None,
    user: Annotated[str, typer.Option("--user", help="User name.")] = ...,  # type: ignore[assignment]
    password_stdin: Annotated[bool, typer.Option("--password-stdin", help="Read the password from standard input.")] = False,
) -> None:
    """Log in and store an API token for this server (used by ls and restore).

    Exit codes: 0 ok, 1 wrong user or password / server error, 2 usage error.
    """
    settings = load_settings(server=server)
    if password_stdin:
        password = read_password_stdin()
    elif sys.stdin.isatty():
        password = getpass.getpass(f"password for {user}: ")
    else:
        raise UsageError("no terminal to ask for the password: use --password-stdin")
    answer = credentials.login(settings, user, password)
    typer.echo(f"logged in to {credentials.require_server(settings.server)} as {answer.user}" + (" (admin)" if answer.is_admin else ""))
