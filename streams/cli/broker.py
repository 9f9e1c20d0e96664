"""`explorer broker start|stop|status` (the local KRaft broker) and `explorer topics create`."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from streams.cli.common import _fail, check_kafka_or_exit, console, out
from streams.settings import get_settings

broker_app = typer.Typer(help="Run the local single-node Apache Kafka broker (KRaft) under $EXPLORER_DATA_DIR/kafka.")
topics_app = typer.Typer(help="Provision the contract's topics on the configured cluster.")


@broker_app.command("start")
def broker_start(
    timeout: Annotated[Optional[float], typer.Option(help="Seconds to wait for the broker to answer")] = None,
) -> None:
    """Fetch Apache Kafka once (Maven Central), format storage the first time, start it and wait until ready."""
    from infra.broker import BrokerError, LocalBroker

    broker = LocalBroker(get_settings())
    try:
        with console.status("Fetching Apache Kafka from Maven Central (first time only)..."):
            broker.ensure_distribution()
        with console.status("Starting the Kafka broker..."):
            status = broker.start(timeout_s=timeout)
    except BrokerError as exc:
        raise _fail(str(exc)) from exc
    out.print(f"Kafka {status.version} running (pid {status.pid}) at {status.bootstrap}; log: {status.log_file}")


@broker_app.command("stop")
def broker_stop() -> None:
    """Stop the local broker gracefully (its data stays for the next start)."""
    from infra.broker import BrokerError, LocalBroker

    try:
        was_running = LocalBroker(get_settings()).stop()
    except BrokerError as exc:
        raise _fail(str(exc)) from exc
    out.print("Kafka broker stopped" if was_running else "Kafka broker was not running")


@broker_app.command("status")
def broker_status() -> None:
    """Say whether the local broker runs; exit code 0 when it does, 3 when it does not."""
    from infra.broker import LocalBroker

    status = LocalBroker(get_settings()).status()
    state = f"running (pid {status.pid})" if status.running else "stopped"
    out.print(f"Kafka {status.version}: {state} at {status.bootstrap}; data: {status.data_dir}")
    if not status.running:
        raise typer.Exit(3)


@topics_app.command("create")
def topics_create(
    partitions: Annotated[
        Optional[int], typer.Option(help="Partitions for `interactions` (default EXPLORER_INTERACTIONS_PARTITIONS)")
    ] = None,
) -> None:
    """Create the contract's topics; idempotent (existing topics are kept as they are)."""
    from confluent_kafka import KafkaException

    from streams.acls import provisioning_access
    from streams.topics import create_topics

    settings = get_settings()
    if partitions is not None:
        settings = settings.model_copy(update={"interactions_partitions": partitions})
    check_kafka_or_exit(settings, provisioning_access(settings))
    try:
        result = create_topics(settings)
    except KafkaException as exc:
        raise _fail(f"could not create topics on {settings.kafka_bootstrap}: {exc}") from exc
    for name in result.created:
        out.print(f"created  {name}")
    for name in result.existing:
        out.print(f"exists   {name}")
    for name, (wanted, actual) in result.partition_mismatch.items():
        console.print(f"[yellow]warning:[/] {name} has {actual} partitions, settings ask for {wanted} (left unchanged)")
