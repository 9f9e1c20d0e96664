"""`explorer worker` (a Faust worker, after its start-up checks) and `explorer backfill`."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from streams.cli.common import _fail, _progress, check_kafka_or_exit, out
from streams.settings import get_settings


def worker(
    loglevel: Annotated[str, typer.Option(help="Log level")] = "info",
    web_port: Annotated[Optional[int], typer.Option(help="Port of /health and /metrics")] = None,
) -> None:
    """Run a Faust worker: validation, the agents, /health and /metrics. Start more for more partitions."""
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
    faust_app.explorer.metrics.watch_gc()  # type: ignore[attr-defined]
    try:
        faust_worker(faust_app, loglevel).execute_from_commandline()
    except SystemExit as exit_:
        report_crash(exit_)
        raise


def faust_worker(app, loglevel: str):  # type: ignore[no-untyped-def]  # -> faust.Worker
    """A Faust worker without its start-up spinner. At a level of WARNING or above Faust keeps the spinner by setting
    the root logger to DEBUG for the worker's whole life (each record, debug ones included, turns the spinner), so
    every `log.debug` of aiokafka, Faust and mode on the hot paths built a LogRecord and walked the stack to drop it:
    ~3% of a worker's samples under a replay (py-spy). Without the spinner the root logger keeps `loglevel`."""
    import faust

    worker = faust.Worker(app, loglevel=loglevel)
    worker.spinner = None
    return worker


def report_crash(exit_: SystemExit) -> None:
    """Say why a crashed worker exits: mode re-raises the crash reason and turns it into exit code 1 without a
    word (`mode.worker.exiting`), so the reason is only the SystemExit's context."""
    import logging

    reason = exit_.__context__
    if exit_.code in (0, None) or reason is None:
        return
    logging.getLogger("streams.worker").critical("the worker exits (code %s) after a crash: %r", exit_.code, reason,
                                                 exc_info=reason)


def prepare_worker(settings, group: str, topics: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    """Before Faust starts: the worker's internal topics exist and every size limit agrees (streams/limits.py)."""
    from streams.limits import check_limits
    from streams.topics import create_topics, internal_topics

    if not topics:
        return
    create_topics(settings, specs=internal_topics(settings, group))
    check_limits(settings, topics["dlq"], [(topics["interactions"], topics["interactions_repartition"]),
                                           (topics["requests"], topics["requests_repartition"])])


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
