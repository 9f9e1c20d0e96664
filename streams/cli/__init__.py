"""The `explorer` command line. Every command reads the one Settings object (EXPLORER_* environment variables).

One module per command group (streams/cli/*.py); this one builds the app from them, in the order `--help` lists.
"""

from __future__ import annotations

import sys

import typer
from rich.table import Table

from streams.cli import acls as cli_acls
from streams.cli import eval as cli_eval
from streams.cli import finetune as cli_finetune
from streams.cli import serving as cli_serving
from streams.cli.broker import broker_app, topics_app
from streams.cli.clusters import clusters_app
from streams.cli.common import out
from streams.cli.demo import demo
from streams.cli.knowledge import knowledge_app
from streams.cli.replay import loadgen, replay_app
from streams.cli.worker import backfill, worker
from streams.settings import get_settings

app = typer.Typer(
    name="explorer",
    help="LLM-powered user interest exploration, kept fresh in real time over Kafka.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(broker_app, name="broker")
app.add_typer(knowledge_app, name="knowledge")
app.add_typer(clusters_app, name="clusters")
app.add_typer(topics_app, name="topics")
app.add_typer(replay_app, name="replay")
cli_serving.register(app)
cli_finetune.register(app)
cli_eval.register(app)
cli_acls.register(app)
for command in (worker, loadgen, demo, backfill):
    app.command()(command)


@app.command("settings")
def show_settings() -> None:
    """Print the effective settings (secrets hidden)."""
    from pydantic import SecretStr

    table = Table("setting", "value")
    for name, value in get_settings().model_dump().items():
        shown = "***" if isinstance(value, SecretStr) else str(value)  # set: masked; unset: None
        table.add_row(f"EXPLORER_{name.upper()}", shown)
    out.print(table)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)

