"""The `bkup` command: one typer app; each command group lives in its own module."""

from __future__ import annotations

import sys

import typer

from bkup.errors import BkupError
from bkup.runtime import freeze_imports, tune_gc, tune_malloc

# Modules that libraries import whenever they happen to be installed, and that bkup never uses:
# httpx's own command-line client (click, rich, pygments) and trio (an async backend of httpcore;
# bkup's HTTP client is synchronous). On the benchmark machine they were ~120 and ~80 ms of the
# ~0.6 s every `bkup agent --once` spends starting (docs/performance.md, "Start-up").
UNUSED_IMPORTS = ("httpx._main", "trio")

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


def skip_unused_imports() -> None:
    """A None entry in sys.modules makes `import name` raise ImportError, which both libraries expect and handle.
    Already imported, a module stays."""
    for name in UNUSED_IMPORTS:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]


def main() -> None:
    tune_malloc()
    tune_gc()
    skip_unused_imports()
    _register()
    freeze_imports()
    try:
        app(args=_optional_values(sys.argv[1:]), prog_name="bkup")
    except BkupError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
