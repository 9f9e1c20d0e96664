"""Per-user recent items: the sequence recommender's input and the "already had" filter of a recommendation.

Kept per source partition like the transitions state (a user's events all reach one partition, in order). A
profile is ``{"offset": int, "items": [item_id, ...] (oldest first, at most recent_items_kept), "positives": int}``.
An event whose offset is not above the profile's is a redelivery after a crash and changes nothing, so the profile
is idempotent over Faust's at-least-once delivery, like the counts. Every interaction counts as history (the
sequence model learns from every interaction); ``positives`` counts positive engagements for the optional automatic
requests (`auto_request_every`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from streams.records import InteractionEvent
from streams.settings import Settings


def applied(profile: Mapping[str, Any] | None, event: InteractionEvent, offset: int, settings: Settings
            ) -> dict[str, Any] | None:
    """The profile after `event` at source `offset`, or None when the event was already applied."""
    if profile is not None and profile["offset"] >= offset:
        return None
    items = [i for i in (profile["items"] if profile else []) if i != event.item_id]  # a re-engagement moves up
    items.append(event.item_id)
    positives = (profile["positives"] if profile else 0) + settings.is_positive(event.event_type, event.value)
    return {"offset": offset, "items": items[-settings.recent_items_kept:], "positives": positives}


def auto_request_due(before: Mapping[str, Any] | None, after: Mapping[str, Any], every: int) -> bool:
    """True when this event made the user's positive engagements reach a multiple of `every` (0: never)."""
    previous = before["positives"] if before else 0
    return every > 0 and after["positives"] != previous and after["positives"] % every == 0
