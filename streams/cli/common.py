"""What every command group shares: the consoles, the error exit, the Kafka start-up check, progress bars, output."""

from __future__ import annotations

import sys

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


console = Console(stderr=True)
out = Console()


def _fail(message: str, code: int = 1) -> typer.Exit:
    from rich.markup import escape

    # escaped: broker and TLS errors carry [brackets]; soft-wrapped: one line a test or log grep can match
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def check_kafka_or_exit(settings, access=None, *, aiokafka: bool = False) -> None:  # noqa: ANN001
    """The start-up check (streams.kafka_check): a misconfigured or unauthorized client exits here, with the
    reason, instead of retrying in the background."""
    from streams.kafka_check import Access, KafkaAccessError, check_kafka

    try:
        check_kafka(settings, access or Access(), aiokafka=aiokafka)
    except KafkaAccessError as exc:
        raise _fail(f"Kafka start-up check failed: {exc}") from exc


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=console, transient=False,
    )


def _write_output(data: bytes, out_file: str | None) -> None:
    if out_file is None:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        with open(out_file, "wb") as handle:
            handle.write(data)
        console.print(f"wrote {len(data):,} bytes to {out_file}")
