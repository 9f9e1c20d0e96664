"""`explorer demo`: the main job on the embedded default, end to end."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from streams.cli.common import _fail, _progress, console, out
from streams.settings import get_settings


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
        llm = _ensure_llm(settings)
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
    table.add_row("LLM served", llm.summary())
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


def _ensure_llm(settings):  # -> streams.demo_model.ServingLLM
    from streams.demo_model import ensure_released_model

    with _progress() as progress:
        return ensure_released_model(settings, progress=progress, say=console.print)


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

    from streams.cli.serving import print_recommendation

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
