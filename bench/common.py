"""Shared bench plumbing: an isolated topic set on the configured broker, and result printing."""

from __future__ import annotations

import atexit
import uuid

from streams.settings import Settings
from streams.topics import create_topics, delete_deployment_topics


def isolated(settings: Settings, name: str, **updates: object) -> Settings:
    """Settings with a topic prefix and app id of their own; their topics are deleted when the bench exits."""
    tag = f"{name}-{uuid.uuid4().hex[:8]}"
    isolated_settings = settings.model_copy(update={"topic_prefix": f"bench-{tag}.", "app_id": f"bench-{tag}",
                                                    **updates})
    create_topics(isolated_settings)
    atexit.register(_delete_topics, isolated_settings)
    return isolated_settings


def _delete_topics(settings: Settings) -> None:
    try:
        delete_deployment_topics(settings)
    except Exception as exc:  # noqa: BLE001 -- the bench's numbers are printed; leftovers only cost broker start-up
        print(f"could not delete the bench's topics ({settings.topic_prefix}*): {exc}")


def print_table(rows: list[tuple[str, str]]) -> None:
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"  {label.ljust(width)}  {value}")


def histogram_mean_ms(after: dict[str, float], before: dict[str, float], name: str, labels: str = "") -> str:
    """Mean of a worker histogram between two `/metrics` snapshots (`WorkerProcess.metrics()`), as text."""
    count = after.get(f"{name}_count{labels}", 0) - before.get(f"{name}_count{labels}", 0)
    total = after.get(f"{name}_sum{labels}", 0) - before.get(f"{name}_sum{labels}", 0)
    return f"{1000 * total / count:,.0f} ms (mean of {count:,.0f})" if count else "none"
