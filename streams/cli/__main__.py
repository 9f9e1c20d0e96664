"""`python -m streams.cli`: the `explorer` command (worker processes and tests start it so)."""

from streams.cli import main

main()
