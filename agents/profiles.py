"""The profiles processor: recent items per user (models/profiles.py), a batch processor of the ingest agent.

Its Faust Table's changelog partition p holds the users of interactions partition p (explicit partition, as for the
transitions state), so the worker that owns a user's interactions also owns the profile, and — requests being
co-partitioned with interactions — serves the user's requests from memory. Writes are coalesced per batch (one
changelog record per user per batch) and awaited before the ingest agent acks the batch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from models.profiles import applied, auto_request_due
from streams.records import RecommendationRequest

if TYPE_CHECKING:
    import faust

    from agents.ingest import SourcedEvent
    from streams.app import AppContext

log = logging.getLogger(__name__)

TABLE = "profiles"


@dataclass
class Profiles:
    """Read access for the recommender: a user's profile on this worker (None when unknown or not ours)."""

    table: Any
    auto_requests_sent: int = 0

    def get(self, user_id: str) -> dict[str, Any] | None:
        return self.table.data.get(user_id)


def register(app: "faust.App", context: "AppContext") -> Profiles:
    settings = context.settings
    table = app.Table(TABLE, default=None, partitions=settings.interactions_partitions, key_type=str,
                      help="Recent items per user (models/profiles.py)")
    profiles = Profiles(table)
    requests = context.topics.requests

    async def update_profiles(batch: "Sequence[SourcedEvent]") -> "list[tuple[SourcedEvent, str]]":
        data = table.data
        pending: dict[str, tuple[int, dict[str, Any]]] = {}
        due: list[RecommendationRequest] = []
        for sourced in batch:
            event = sourced.event
            before = data.get(event.user_id)
            after = applied(before, event, sourced.offset, settings)
            if after is None:
                continue
            data[event.user_id] = after
            pending[event.user_id] = (sourced.partition, after)
            if auto_request_due(before, after, settings.auto_request_every):
                # Deterministic id: a redelivered event asks again with the same id and gets the same answer.
                due.append(RecommendationRequest(f"auto-{event.event_id}", event.user_id, event.ts))
        changelog = table.changelog_topic
        for user_id, (partition, value) in pending.items():
            await changelog.send(key=user_id, value=value, partition=partition, key_serializer=table.key_serializer,
                                 value_serializer=table.value_serializer)
        for request in due:
            await requests.send(key=request.user_id.encode(), value=orjson.dumps(request))
            profiles.auto_requests_sent += 1
        return []

    context.processors.append(update_profiles)
    return profiles
