"""The hybrid scheduler: when to fine-tune again, while RAG (the streaming knowledge) carries the changes between.

A cycle (models/finetune/cycle.py) is due when either

* **cadence**: `finetune_cadence_s` of wall time passed since the last cycle ended (released or not), or
* **drift**: the knowledge the serving model was trained on no longer matches the streaming knowledge — the overlap
  of each pair's top `n` next clusters between the model's training snapshot (`trained_top_next` in its metadata)
  and the knowledge store now, weighted by the pair's current transition count, fell below
  `finetune_drift_threshold`. The base model has no snapshot: its overlap is 0, so the first check fine-tunes.

Failed cycles wait for the cadence (no retry storm when the gates keep refusing). RAG needs no scheduling: the
workers refresh the knowledge and the pair table continuously.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from streams.settings import Settings

log = logging.getLogger(__name__)

Pair = tuple[str, str]


def top_next_snapshot(counts: Mapping[Pair, Mapping[str, int]], n: int = 3) -> dict[str, list[str]]:
    """Each pair's top `n` next clusters (count, then id), keyed "c1|c2": what a model is trained to know."""
    return {f"{c1}|{c2}": [c3 for c3, _ in sorted(row.items(), key=lambda kv: (-kv[1], kv[0]))[:n] if row[c3] > 0]
            for (c1, c2), row in counts.items() if any(v > 0 for v in row.values())}


def knowledge_overlap(current: Mapping[Pair, Sequence[tuple[str, int]]], trained: Mapping[str, Sequence[str]],
                      n: int = 3) -> float:
    """Count-weighted mean share of each pair's current top-`n` next clusters that the model was trained on (1.0:
    nothing changed; pairs the model never saw count as 0). No current knowledge: 1.0 (nothing to drift from)."""
    weighted = total = 0.0
    for (c1, c2), rows in current.items():
        top = [c3 for c3, _ in rows[:n]]
        weight = float(sum(count for _, count in rows))
        if not top or weight <= 0:
            continue
        known = set(trained.get(f"{c1}|{c2}", ()))
        weighted += weight * len(known.intersection(top)) / len(top)
        total += weight
    return weighted / total if total else 1.0


@dataclass(frozen=True)
class Decision:
    run: bool
    reason: str


def decide(now: float, last_cycle_at: float | None, overlap: float, settings: Settings) -> Decision:
    if last_cycle_at is None:
        return Decision(True, "no fine-tuning cycle has run yet")
    since = now - last_cycle_at
    if since >= settings.finetune_cadence_s:
        return Decision(True, f"cadence: {since:.0f}s since the last cycle >= {settings.finetune_cadence_s:g}s")
    if overlap < settings.finetune_drift_threshold and since >= settings.finetune_min_gap_s:
        return Decision(True, f"drift: knowledge overlap {overlap:.2f} < {settings.finetune_drift_threshold:g}")
    return Decision(False, f"overlap {overlap:.2f}, {since:.0f}s since the last cycle")


def serving_snapshot(settings: Settings) -> dict[str, list[str]]:
    """The released model's training snapshot ({} for the base model)."""
    from models.finetune import registry

    version = registry.current_version(settings)
    if version is None:
        return {}
    return dict(registry.get_version(settings, version).metadata.get("trained_top_next", {}))


def run_scheduler(settings: Settings, cycle: Callable[[Settings], Any], overlap_now: Callable[[], float],
                  iterations: int | None = None, clock: Callable[[], float] = time.time,
                  sleep: Callable[[float], None] = time.sleep) -> list[Decision]:
    """Check every `finetune_check_interval_s`; run `cycle` when due. Returns the decisions (for tests and logs)."""
    decisions: list[Decision] = []
    last_cycle_at: float | None = None
    while iterations is None or len(decisions) < iterations:
        decision = decide(clock(), last_cycle_at, overlap_now(), settings)
        decisions.append(decision)
        log.info("fine-tuning %s: %s", "due" if decision.run else "not due", decision.reason)
        if decision.run:
            try:
                cycle(settings)
            except Exception:  # a failed cycle waits for the cadence, like a refused one
                log.exception("fine-tuning cycle failed")
            last_cycle_at = clock()
        if iterations is None or len(decisions) < iterations:
            sleep(settings.finetune_check_interval_s)
    return decisions
