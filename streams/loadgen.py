"""Synthetic interaction events for load tests and benchmarks: seeded, MovieLens-shaped (Zipf item popularity)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from itertools import accumulate

from streams.records import InteractionEvent


def synthetic_events(
    count: int,
    users: int = 1_000,
    items: int = 1_700,
    seed: int = 13,
    start_ts: float = 881_250_949.0,
    mean_gap_s: float = 30.0,
    user_prefix: str = "",
) -> Iterator[InteractionEvent]:
    """`count` valid rating events in event-time order; the same seed gives the same events."""
    rng = random.Random(seed)
    # Zipf-like popularity: a few items get most of the engagement, as in real catalogues.
    cumulative = list(accumulate(1.0 / (rank + 1) for rank in range(items)))
    ts = start_ts
    for n in range(count):
        ts += rng.expovariate(1.0 / mean_gap_s)
        user = f"{user_prefix}{rng.randrange(users) + 1}"
        item = str(rng.choices(range(1, items + 1), cum_weights=cumulative)[0])
        yield InteractionEvent(
            event_id=f"gen-{seed}-{n}",
            user_id=user,
            item_id=item,
            ts=round(ts, 3),
            event_type="rating",
            value=float(rng.randint(1, 5)),
        )
