"""`python -m bkup` is the `bkup` command."""

from bkup.cli.main import main

main()
