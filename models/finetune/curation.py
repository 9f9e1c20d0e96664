"""Supervised examples for fine-tuning: prompt(c1, c2 [, retrieved knowledge]) -> c3, for novel next clusters.

Source: transition counts with daily buckets (`AllCounts`, the same shape the streaming state and the knowledge
store hold; here computed from raw ratings by models/reference.py). A period is a range of daily buckets (by the day
of the c3 engagement), so the training period is every day before `split_day` and the held-out test set is every
day from it on -- strictly time-later, and user histories still run across the split, as they do in the stream.

The prompt is the server's own (models/prompts.py), built for each example either without knowledge or with what
the knowledge store would have retrieved at the end of the training period (the pair's top next clusters with their
counts, and the trending clusters of the last window), so the model learns both formats the server sends.

Balancing against the long tail: a handful of next clusters dominate MovieLens transitions (the most common one is
~10% of them, the rarest ~0.03%), and a model trained on raw counts learns to answer those few whatever the prompt.
So only each pair's `finetune_targets_per_pair` most common next clusters (its mode first, the best recall@1 answer)
become examples, each next cluster is capped at `finetune_target_cap` x the mean number of examples per
next cluster (the examples kept for a capped cluster are those where it ranks highest in its pair), and an
example's loss weight is tempered: count ** temper.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from models.clusters import ClusterSet
from models.prompts import (
    MAX_TOP_NEXT,
    MAX_TRENDING,
    Knowledge,
    PromptSegments,
    prompt_segments,
)
from models.reference import reference_counts
from models.counts import AllCounts, day_of
from streams.settings import Settings

Pair = tuple[str, str]
TransitionCounts = dict[Pair, dict[str, int]]


@dataclass(frozen=True)
class Example:
    history: Pair
    target: str
    knowledge: Knowledge | None  # None: the prompt carries no retrieved knowledge
    count: int  # training-period transitions history -> target
    weight: float  # loss weight, count ** temper

    def segments(self, clusters: ClusterSet) -> PromptSegments:
        return prompt_segments(self.history, self.knowledge, clusters)


@dataclass(frozen=True)
class HeldOutPair:
    history: Pair
    next_counts: dict[str, int]  # test-period transitions history -> c3 (c3 novel: never in history)
    knowledge: Knowledge  # what the store held at the split: training-period counts and trends

    @property
    def total(self) -> int:
        return sum(self.next_counts.values())


@dataclass(frozen=True)
class Period:
    first_day: int
    split_day: int  # training: [first_day, split_day), test: [split_day, last_day]
    last_day: int

    def as_dict(self) -> dict[str, int]:
        return {"first_day": self.first_day, "split_day": self.split_day, "last_day": self.last_day}


@dataclass
class Curated:
    examples: list[Example]
    held_out: list[HeldOutPair]  # the seeded sample the gates evaluate
    period: Period
    popular: list[str]  # next clusters by training-period count, most common first (a baseline)
    stats: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------- periods
def transition_counts(ratings: Iterable[Any], cluster_of: Callable[[str], str | None], settings: Settings
                      ) -> AllCounts:
    """All counts of the ratings with their daily buckets; restrict to a period with `period_counts`."""
    return reference_counts(ratings, cluster_of, settings)


def split_day_of(ratings: Sequence[Any], fraction: float) -> int:
    """The day of the first rating after the first `fraction` of them (ratings in event-time order): the clusters'
    training period ends there too (models/embeddings.training_ratings), so the test period is unseen by both."""
    if not ratings:
        raise ValueError("no ratings to split")
    index = min(len(ratings) - 1, int(len(ratings) * fraction))
    return day_of(ratings[index].ts)


def period_counts(counts: AllCounts, first_day: int, end_day: int) -> TransitionCounts:
    """Transitions whose c3 engagement falls on a day in [first_day, end_day)."""
    out: TransitionCounts = {}
    for day, bucket in counts.daily.items():
        if first_day <= day < end_day:
            for pair, row in bucket.items():
                target = out.setdefault(pair, {})
                for c3, n in row.items():
                    target[c3] = target.get(c3, 0) + n
    return out


def trending_before(counts: AllCounts, end_day: int, days: int, n: int = MAX_TRENDING) -> list[str]:
    """Clusters by positive engagements in the `days` daily buckets before `end_day`, most first (ties by id)."""
    totals: Counter[str] = Counter()
    for day in range(end_day - days, end_day):
        totals.update(counts.trends.get(day, {}))
    return [c for c, _ in sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))[:n]]


def knowledge_for(pair: Pair, train: TransitionCounts, trending: list[str], order: dict[str, int]) -> Knowledge:
    row = train.get(pair, {})
    ranked = sorted(((c, n) for c, n in row.items() if c in order and c not in pair), key=lambda kv: (-kv[1], order[kv[0]]))
    return Knowledge(top_next=ranked[:MAX_TOP_NEXT], trending=list(trending))


def knowledge_at(counts: AllCounts, clusters: ClusterSet, day: int, settings: Settings) -> Callable[[Pair], Knowledge]:
    """What a prompt shows for a pair at the start of `day`: the counts of the days before it and the trends of
    the window before it (as the held-out pairs' knowledge)."""
    order = {cid: i for i, cid in enumerate(clusters.clusters)}
    train = _known(period_counts(counts, min(counts.daily), day), order)
    trending = trending_before(counts, day, settings.window_days[0])
    return lambda pair: knowledge_for(pair, train, trending, order)


# ---------------------------------------------------------------------------------------------------- curation
def curate(counts: AllCounts, clusters: ClusterSet, split_day: int, settings: Settings) -> Curated:
    """Training examples from the days before `split_day`, the held-out sample from the days from it on."""
    if not counts.daily:
        raise ValueError("no transitions to curate from")
    period = Period(first_day=min(counts.daily), split_day=split_day, last_day=max(counts.daily))
    order = {cid: i for i, cid in enumerate(clusters.clusters)}
    train = _known(period_counts(counts, period.first_day, split_day), order)
    test = _known(period_counts(counts, split_day, period.last_day + 1), order)
    if not train:
        raise ValueError(f"no transitions before day {split_day}: nothing to train on")
    trending = trending_before(counts, split_day, settings.window_days[0])
    rng = random.Random(settings.finetune_seed)

    candidates = _ranked_candidates(train, order, settings.finetune_min_pair_count, settings.finetune_targets_per_pair)
    kept = cap_per_target(candidates, settings.finetune_target_cap)
    examples: list[Example] = []
    for pair, target, n, _rank in kept:
        with_knowledge = rng.random() < settings.finetune_knowledge_share
        knowledge = knowledge_for(pair, train, trending, order) if with_knowledge else None
        examples.append(Example(pair, target, knowledge, n, _weight(n, settings.finetune_count_temper)))
    examples, merged = deduplicate(examples, clusters, settings.finetune_count_temper)

    held_out = [HeldOutPair(pair, row, knowledge_for(pair, train, trending, order)) for pair, row in sorted(test.items())]
    # its own generator: the held-out sample must not change when the training examples do (before/after runs)
    sampler = random.Random(f"held-out-{settings.finetune_seed}")
    sample = sorted(sampler.sample(range(len(held_out)), min(settings.finetune_eval_pairs, len(held_out))))
    popular = [c for c, _ in sorted(_next_totals(train).items(), key=lambda kv: (-kv[1], order[kv[0]]))]

    before, after = Counter(c[1] for c in candidates), Counter(e.target for e in examples)
    stats = {
        "train_pairs": len(train), "train_transitions": sum(sum(r.values()) for r in train.values()),
        "candidates": len(candidates), "capped_out": len(candidates) - len(kept), "duplicates_merged": merged,
        "examples": len(examples), "with_knowledge": sum(e.knowledge is not None for e in examples),
        "targets": len(after),
        "top_target_share_before": round(max(before.values()) / max(1, len(candidates)), 4) if before else 0.0,
        "top_target_share_after": round(max(after.values()) / max(1, len(examples)), 4) if after else 0.0,
        "held_out_pairs": len(held_out), "held_out_transitions": sum(p.total for p in held_out),
        "eval_pairs": len(sample),
    }
    return Curated(examples=examples, held_out=[held_out[i] for i in sample], period=period, popular=popular,
                   stats=stats)


def cap_per_target(candidates: Sequence[tuple[Pair, str, int, int]], cap_factor: float
                   ) -> list[tuple[Pair, str, int, int]]:
    """At most ceil(cap_factor x mean examples per target) examples per target; a capped target keeps the examples
    where it ranks highest in its pair (then the largest counts), so it is taught where it is the best answer."""
    per_target: dict[str, list[tuple[Pair, str, int, int]]] = {}
    for candidate in candidates:
        per_target.setdefault(candidate[1], []).append(candidate)
    if not per_target:
        return []
    cap = max(1, math.ceil(cap_factor * len(candidates) / len(per_target)))
    kept: set[int] = set()
    index = {id(c): i for i, c in enumerate(candidates)}
    for group in per_target.values():
        for candidate in sorted(group, key=lambda c: (c[3], -c[2], c[0]))[:cap]:
            kept.add(index[id(candidate)])
    return [c for i, c in enumerate(candidates) if i in kept]  # original order: deterministic


def deduplicate(examples: Sequence[Example], clusters: ClusterSet, temper: float) -> tuple[list[Example], int]:
    """One example per (prompt text, answer): duplicates merge their counts (and the weight is recomputed)."""
    by_key: dict[tuple[str, str], Example] = {}
    for example in examples:
        key = (example.segments(clusters).text, example.target)
        seen = by_key.get(key)
        if seen is None:
            by_key[key] = example
        else:
            count = seen.count + example.count
            by_key[key] = Example(seen.history, seen.target, seen.knowledge, count, _weight(count, temper))
    return list(by_key.values()), len(examples) - len(by_key)


def _ranked_candidates(train: TransitionCounts, order: dict[str, int], min_pair_count: int, per_pair: int
                       ) -> list[tuple[Pair, str, int, int]]:
    """(pair, target, count, rank in the pair) for each pair's most common novel next clusters."""
    out = []
    for pair in sorted(train, key=lambda p: (order[p[0]], order[p[1]])):
        row = train[pair]
        if sum(row.values()) < min_pair_count:
            continue
        ranked = sorted(((c, n) for c, n in row.items() if c not in pair), key=lambda kv: (-kv[1], order[kv[0]]))
        out.extend((pair, c3, n, rank) for rank, (c3, n) in enumerate(ranked[:per_pair]))
    return out


def _known(counts: TransitionCounts, order: dict[str, int]) -> TransitionCounts:
    """Only clusters of this cluster set, novel targets only (the contract's transitions already are)."""
    out: TransitionCounts = {}
    for pair, row in counts.items():
        if pair[0] in order and pair[1] in order and pair[0] != pair[1]:
            kept = {c: n for c, n in row.items() if c in order and c not in pair and n > 0}
            if kept:
                out[pair] = kept
    return out


def _next_totals(counts: TransitionCounts) -> dict[str, int]:
    totals: Counter[str] = Counter()
    for row in counts.values():
        totals.update(row)
    return dict(totals)


def _weight(count: int, temper: float) -> float:
    return float(count) ** temper
