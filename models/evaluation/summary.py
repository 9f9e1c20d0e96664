"""Every strategy's outcomes turned into the report's numbers: overall metrics with intervals, paired differences
to the count baseline (and, for an LLM strategy, to the best LLM-free one), the same per stratum, exploration and
costs. One set of user resamples serves every metric
and strategy, so all differences are paired."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from models.evaluation import metrics as m
from models.evaluation.strata import DIMENSIONS

METRICS = ("hit", "hit3", "log_loss", "item_hit", "long_tail", "novelty")
PAIRED = ("hit", "hit3")  # differences to the count baseline
REFERENCE = "count"


@dataclass
class StrategyResult:
    name: str
    label: str
    cadence: str
    uses_llm: bool
    streaming: bool
    skipped: str | None
    outcomes: list[m.Outcome] = field(default_factory=list)
    metrics: dict[str, m.Interval] = field(default_factory=dict)  # only those the strategy defines
    vs_count: dict[str, m.Interval] = field(default_factory=dict)
    # LLM strategies: paired hit@1 difference to the LLM-free strategy with the best hit@1 (overall, and per stratum
    # the best there) -- the strongest competitor, picked after the fact, so it only makes the LLM's case harder
    vs_best_free: dict[str, Any] = field(default_factory=dict)  # {"against": name, "hit": Interval}
    strata: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # dimension -> value -> numbers
    validity: float | None = None
    exact_match: float | None = None
    exact_match_n: int = 0
    distinct: int = 0
    coverage: float = 0.0
    by_point: dict[int, float] = field(default_factory=dict)
    cpu_s: float = 0.0
    inferences: int = 0
    model_updates: int = 0
    pairs_changed: int = 0
    lags_s: list[float | None] = field(default_factory=list)

    @property
    def hit(self) -> m.Interval | None:
        return self.metrics.get("hit")


def summarise(results: Sequence[StrategyResult], n_clusters: int, bootstrap: int, seed: int) -> list[str]:
    """Fill every result's numbers in place; returns the evaluated users (the bootstrap's units)."""
    evaluated = [r for r in results if not r.skipped and r.outcomes]
    users = sorted({o.user_id for r in evaluated for o in r.outcomes})
    draws = m.resample_users(len(users), bootstrap, seed)
    reference = next((r for r in evaluated if r.name == REFERENCE), None)
    for result in evaluated:
        outcomes = result.outcomes
        result.metrics = {name: m.rate_interval(outcomes, draws, users, name) for name in METRICS
                          if m.defined(outcomes, name)}
        if reference is not None and result is not reference:
            result.vs_count = {name: m.paired_difference(outcomes, reference.outcomes, draws, users, name)
                               for name in PAIRED if name in result.metrics and m.defined(reference.outcomes, name)}
        result.strata = {}
        for dimension, values in DIMENSIONS.items():
            per_value: dict[str, dict[str, Any]] = {}
            for value in values:
                inside = m.where(outcomes, m.in_stratum(dimension, value))
                numbers: dict[str, Any] = {"cases": len(inside), "users": len({o.user_id for o in inside}),
                                           "hit": m.rate_interval(inside, draws, users, "hit")}
                if reference is not None and result is not reference and inside:
                    theirs = m.where(reference.outcomes, m.in_stratum(dimension, value))
                    numbers["vs_count"] = m.paired_difference(inside, theirs, draws, users, "hit")
                per_value[value] = numbers
            result.strata[dimension] = per_value
        result.validity = m.validity(outcomes)
        result.distinct, result.coverage = m.exploration(outcomes, n_clusters)
        result.by_point = m.rate_by_point(outcomes)
    _against_best_free(evaluated, draws, users)
    return users


def _against_best_free(evaluated: Sequence[StrategyResult], draws: Any, users: Sequence[str]) -> None:
    free = [r for r in evaluated if not r.uses_llm and "hit" in r.metrics]
    if not free:
        return
    best = max(free, key=lambda r: r.metrics["hit"].value)
    for result in evaluated:
        if not result.uses_llm:
            continue
        result.vs_best_free = {"against": best.name,
                               "hit": m.paired_difference(result.outcomes, best.outcomes, draws, users, "hit")}
        for dimension, per_value in result.strata.items():
            for value, numbers in per_value.items():
                if not numbers["cases"]:
                    continue
                here = max(free, key=lambda r: r.strata[dimension][value]["hit"].value)
                inside = m.where(result.outcomes, m.in_stratum(dimension, value))
                theirs = m.where(here.outcomes, m.in_stratum(dimension, value))
                numbers["best_free"] = here.name
                numbers["vs_best_free"] = m.paired_difference(inside, theirs, draws, users, "hit")
