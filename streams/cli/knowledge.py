"""`explorer knowledge export`: the transition counts and trends, read from the durable state."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from streams.cli.common import _fail, _write_output, check_kafka_or_exit
from streams.settings import get_settings

knowledge_app = typer.Typer(help="The streaming knowledge: transition and trend counts.")


@knowledge_app.command("export")
def knowledge_export(
    out_file: Annotated[Optional[str], typer.Option("--out", help="Write to this file instead of stdout")] = None,
    fmt: Annotated[str, typer.Option("--format", help="json or csv")] = "json",
    clusters_version: Annotated[Optional[str], typer.Option(help="Default: the serving clusters version")] = None,
    now: Annotated[Optional[float], typer.Option(help="Event time that windows end at (default: latest event)")] = None,
) -> None:
    """Export the current transition counts (all-time and per window) and trends, read from the durable state."""
    from models.clusters import ClustersNotBuilt, load_serving
    from streams.acls import reader_access
    from streams.knowledge_export import render_export
    from streams.state_reader import StateNotFound, read_state_counts
    from streams.topics import changelog_topic_name, consumer_group

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
