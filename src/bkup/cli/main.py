"""The `bkup` command: one typer app; each command group lives in its own module."""

from __future__ import annotations

import sys

# httpx imports its optional command-line client (click, rich, pygments: ~120 ms, a fifth of
# `bkup`'s start-up, paid by every agent run) whenever those happen to be installed; bkup never
# runs it. A None entry in sys.modules makes that import fail, and httpx defines a stub instead.
if "httpx" not in sys.modules:
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

import typer  # noqa: E402

from bkup.errors import BkupError  # noqa: E402
from bkup.runtime import tune_malloc  # noqa: E402

app = typer.Typer(
    name="bkup",
    help=(
        "Centrally managed, deduplicating, continuous backup.\n\n"
        "Exit codes (every command): 0 ok, 1 error, 2 usage error, 3 partial run or damage found. "
        "Shell completion: bkup --install-completion. See docs/cli.md."
    ),
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    # Imported here so `bkup --help` stays one import deep per group.
    from bkup.cli import agent, alert, catalog, check, client, config, login, ls, prune, restore, serve, user

    app.command("serve")(serve.serve)
    app.add_typer(user.app, name="user")
    app.add_typer(client.app, name="client")
    app.add_typer(agent.app, name="agent")
    app.command("login")(login.login)
    app.command("ls")(ls.ls)
    app.command("restore")(restore.restore)
    app.command("prune")(prune.prune)
    app.command("check")(check.check)
    app.add_typer(catalog.app, name="catalog")
    app.add_typer(config.app, name="config")
    app.add_typer(alert.app, name="alert")


def _optional_values(argv: list[str]) -> list[str]:
    """`--setup-ui HOST:PORT` as the contract spells it: click has no options with optional values,
    so an address right after the flag becomes `--setup-ui-listen HOST:PORT`."""
    out: list[str] = []
    it = iter(range(len(argv)))
    for i in it:
        out.append(argv[i])
        nxt = argv[i + 1] if i + 1 < len(argv) else ""
        if argv[i] == "--setup-ui" and ":" in nxt and not nxt.startswith("-"):
            out += ["--setup-ui-listen", nxt]
            next(it)
    return out


def main() -> None:
    tune_malloc()
    _register()
    try:
        app(args=_optional_values(sys.argv[1:]), prog_name="bkup")
    except BkupError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
