"""How far above count argmax can any answer that depends only on the user's pair go, on the evaluation's cases?

    python -m bench.pair_ceiling [--bootstrap 1000] [--sequence]

Every LLM strategy of `explorer eval` serves a *pair table*: users who share their two latest distinct clusters
share the answer (the live system's design, models/pair_table.py). So its hit@1 is bounded by what the best
pair-level answer can reach, and count argmax already is one. This bench measures that bound without any LLM, on
exactly the evaluation's cases, states, strata and user-bootstrap intervals (models/evaluation/), by answering with
counts that *no deployable method has* -- they include the test period:

* **count**: the evaluation's baseline (the pair's top retrieved next cluster at the case's state), the reference,
  and **backoff**, the evaluation's back-off baseline -- both deployable;
* **triple-backoff** (deployable, not a pair-level answer): the back-off distribution smoothed once more towards the
  counts after the user's *three* latest distinct clusters, with the same prior -- does more cluster history help?;
* **clairvoyant-others-backoff**: the back-off over the whole data's counts (test period included) without the case's
  user's own transitions: the best-known pair-level answer given everyone else's future;
* **clairvoyant**: the pair's argmax over every transition of the whole data set, test period included -- and the
  case's own future transitions with it, so an optimistic bound;
* **clairvoyant, others**: the same without the case's user's own transitions;
* **test period, others**: only transitions made after the split, by other users (the future drift alone);
* **horizons, others**: the cluster most often among *other users'* horizons of the same pair in the test period
  (the metric's own target, not the next transition), count's answer where no other user has the pair.

With `--sequence` (needs a sequence model trained on the training period: `explorer sequence train`), the rows
that are *not* pair-level, for comparison with that bound -- both deployable, per request:

* **sequence**: the evaluation's sequence baseline (the unrestricted SASRec's own cluster from the user's items);
* **backoff x sequence**: a product of experts of the back-off distribution and SASRec's next-item mass per
  cluster, unweighted (as the evaluation's hybrid-poe: a weighting is fixed before the run, never fitted on the
  test period) -- what a per-request answer that reads both the pair's counts and the user's items can reach
  without an LLM.

Ties go to count's order, and each answer is completed with the system's fallback order, as count is. The
knowledge per state is the reference counts of the ratings replayed before it, which `explorer eval` checks the
pipeline's LanceDB holds exactly; trending is left empty (count's order differs from the eval's only for pairs
with fewer novel next clusters than needed).
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from models.clusters import ClusterSet
from models.clusters.storage import ClustersNotBuilt, load_current
from models.counts import TransitionCounts
from models.evaluation import metrics as m
from models.evaluation.baselines import (
    BackoffTimesSequence,
    CountArgmax,
    CountBackoff,
    SequenceChoice,
    fallback_order,
)
from models.evaluation.grounding import SequenceScores
from models.evaluation.interface import Answer, Inferred, InferenceRequest, PointState, Snapshot, Strategy
from models.evaluation.protocol import (
    Case,
    Horizon,
    Timeline,
    UserEvents,
    all_cases,
    collapsed,
    make_timeline,
    user_events,
)
from models.evaluation.strata import DIMENSIONS, strata_of
from models.evaluation.summary import StrategyResult, summarise
from models.reference import reference_counts
from streams.eval_run import _outcome
from streams.movielens import Rating, dataset_dir, load_ratings
from streams.settings import Settings

Pair = tuple[str, str]


def _minus(total: Mapping[Pair, Mapping[str, int]], own: Mapping[Pair, Mapping[str, int]]) -> TransitionCounts:
    out: TransitionCounts = {}
    for pair, row in total.items():
        kept = {c3: n - own.get(pair, {}).get(c3, 0) for c3, n in row.items()}
        out[pair] = {c3: n for c3, n in kept.items() if n > 0}
    return out


class PairArgmax(Strategy):
    """The argmax of per-case next-cluster counts (`counts_for(case)`), completed with count's order."""

    streaming = True

    def __init__(self, name: str, label: str, clusters: ClusterSet,
                 counts_for: Callable[[Case], Mapping[str, int]]) -> None:
        super().__init__()
        self.name, self.label, self.clusters, self.counts_for = name, label, clusters, counts_for

    def answer(self, state: PointState, cases: Sequence[Case], inferred: Mapping[InferenceRequest, Inferred]
               ) -> list[Answer]:
        out = []
        for case in cases:
            shown = state.knowledge.top_next.get(case.pair, [])
            rank = {c: i for i, c in enumerate(c for c, _ in shown)}
            counts = self.counts_for(case)
            best = sorted((c for c, n in counts.items() if n > 0),
                          key=lambda c: (-counts[c], rank.get(c, len(rank)), c))
            out.append(Answer.ranked(fallback_order(case.pair, [(c, counts[c]) for c in best] + shown, (),
                                                    self.clusters)))
        return out


class PerCase(Strategy):
    """Any answer computed from the case alone."""

    def __init__(self, name: str, label: str, answer_of: Callable[[Case], Answer]) -> None:
        super().__init__()
        self.name, self.label, self.answer_of = name, label, answer_of

    def answer(self, state: PointState, cases: Sequence[Case], inferred: Mapping[InferenceRequest, Inferred]
               ) -> list[Answer]:
        return [self.answer_of(case) for case in cases]


def triple_counts(users: Mapping[str, UserEvents]) -> dict[tuple[str, str, str], dict[str, int]]:
    """(c0, c1, c2) -> next distinct cluster outside (c1, c2) -> users' transitions, over collapsed positives."""
    counts: dict[tuple[str, str, str], dict[str, int]] = {}
    for events in users.values():
        past: list[str] = []
        for positive in events.positives:
            if past and past[-1] == positive.cluster:
                continue
            if len(past) >= 3 and positive.cluster != past[-2]:
                row = counts.setdefault((past[-3], past[-2], past[-1]), {})
                row[positive.cluster] = row.get(positive.cluster, 0) + 1
            past.append(positive.cluster)
    return counts


def strategies(clusters: ClusterSet, ratings: Sequence[Rating], timeline: Timeline, cases: Sequence[Case],
               settings: Settings, snapshot_states: Sequence[PointState]) -> list[Strategy]:
    cluster_of, split_index = clusters.cluster_of, timeline.split_index
    everything = reference_counts(ratings, cluster_of, settings).total
    after_split = _minus(everything, reference_counts(ratings[:split_index], cluster_of, settings).total)
    by_user: dict[str, list[Rating]] = {}
    for rating in ratings:
        by_user.setdefault(rating.user_id, []).append(rating)
    own_all: dict[str, TransitionCounts] = {}
    own_after: dict[str, TransitionCounts] = {}
    split_ts = ratings[split_index].ts
    for user in {c.user_id for c in cases}:
        mine = by_user[user]
        own_all[user] = reference_counts(mine, cluster_of, settings).total
        before = reference_counts([r for r in mine if r.ts < split_ts], cluster_of, settings).total
        own_after[user] = _minus(own_all[user], before)
    horizons: dict[Pair, list[Case]] = {}
    for case in cases:
        horizons.setdefault(case.pair, []).append(case)

    def others_horizons(case: Case) -> Mapping[str, int]:
        seen = Counter(c for other in horizons[case.pair] if other.user_id != case.user_id
                       for c in other.future_clusters if c not in case.pair)
        return seen

    def levels(counts: Mapping[Pair, Mapping[str, int]]) -> tuple[dict[str, dict[str, int]], dict[str, int]]:
        by_last: dict[str, dict[str, int]] = {}
        totals: dict[str, int] = {}
        for (_, c2), row in counts.items():
            for c3, n in row.items():
                last = by_last.setdefault(c2, {})
                last[c3] = last.get(c3, 0) + n
                totals[c3] = totals.get(c3, 0) + n
        return by_last, totals

    all_last, all_totals = levels(everything)
    own_levels = {user: levels(counts) for user, counts in own_all.items()}
    backoff = CountBackoff(clusters, settings.eval_backoff_k, settings.eval_backoff_prior)

    def others_backoff(case: Case) -> Answer:
        own_last, own_totals = own_levels[case.user_id]
        pair_counts = _minus({case.pair: everything.get(case.pair, {})}, own_all[case.user_id]).get(case.pair, {})
        last = {c: n - own_last.get(case.pair[1], {}).get(c, 0) for c, n in all_last.get(case.pair[1], {}).items()}
        totals = {c: n - own_totals.get(c, 0) for c, n in all_totals.items()}
        return backoff.distribution_answer(case.pair, pair_counts, last, totals)

    history = {user: events.positives for user, events in user_events(ratings, cluster_of, settings).items()}
    triples = [triple_counts(user_events(ratings[:stop], cluster_of, settings))
               for _, stop in timeline.chunks(ratings)]
    prior = settings.eval_backoff_prior

    def triple_backoff(case: Case) -> Answer:
        # the pair's back-off distribution, smoothed further with the counts of the user's three latest clusters
        pair_answer = backoff.pair_answer(snapshot_states[case.state], case.pair)
        assert pair_answer.distribution is not None
        past = collapsed(p.cluster for p in history[case.user_id]
                         if p.ts < case.ts or (case.anchor == "request" and p.ts == case.ts))
        row = triples[case.state].get(tuple(past[-3:]), {}) if len(past) >= 3 else {}
        n = sum(count for cluster, count in row.items() if cluster not in case.pair)
        p = {c: (row.get(c, 0) + prior * q) / (n + prior) for c, q in pair_answer.distribution.items()}
        order = {c: i for i, c in enumerate(pair_answer.ranking)}
        return Answer.ranked(sorted(p, key=lambda c: (-p[c], order[c])), p)

    return [
        backoff,
        PerCase("triple-backoff", "back-off with one more level: the counts after the user's three latest clusters",
                triple_backoff),
        PerCase("clairvoyant-others-backoff", "the back-off baseline over the whole data's counts without the user's "
                "own", others_backoff),
        PairArgmax("clairvoyant", "whole data's pair counts (test period and the case's own future included)",
                   clusters, lambda c: everything.get(c.pair, {})),
        PairArgmax("clairvoyant-others", "whole data's pair counts without the user's own", clusters,
                   lambda c: _minus({c.pair: everything.get(c.pair, {})}, own_all[c.user_id]).get(c.pair, {})),
        PairArgmax("future-others", "the test period's pair counts, other users only", clusters,
                   lambda c: _minus({c.pair: after_split.get(c.pair, {})}, own_after[c.user_id]).get(c.pair, {})),
        PairArgmax("horizons-others", "cluster most often in other users' test-period horizons of the pair", clusters,
                   others_horizons),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--sequence", action="store_true",
                        help="add the user-level rows (needs `explorer sequence train`)")
    args = parser.parse_args()
    settings = Settings()
    started = time.perf_counter()
    try:
        clusters = load_current(settings)
    except ClustersNotBuilt as error:
        raise SystemExit(str(error)) from error
    ratings = load_ratings(dataset_dir(settings))
    timeline = make_timeline(ratings, settings.train_fraction, settings.eval_points)
    cases = all_cases(user_events(ratings, clusters.cluster_of, settings), timeline,
                      Horizon(settings.eval_horizon_events), settings.recent_items_kept, settings.eval_request_every)
    snapshots = []
    for _, stop in timeline.chunks(ratings):
        counts = reference_counts(ratings[:stop], clusters.cluster_of, settings).total
        snapshots.append(Snapshot({p: sorted(r.items(), key=lambda cn: (-cn[1], cn[0])) for p, r in counts.items()},
                                  (), ""))
    points = [PointState(state, snapshot, snapshots[0]) for state, snapshot in enumerate(snapshots)]
    runs: list[Strategy] = [CountArgmax(clusters),
                            *strategies(clusters, ratings, timeline, cases, settings, points)]
    if args.sequence:
        from models.sequence import SequenceModelNotTrained, load_current_for_split

        try:
            scores = SequenceScores(load_current_for_split(settings), clusters, settings.eval_items_k)
        except SequenceModelNotTrained as error:
            raise SystemExit(f"{error} (`explorer sequence train`)") from error
        scores.prepare(cases)
        backoff = CountBackoff(clusters, settings.eval_backoff_k, settings.eval_backoff_prior)
        runs += [SequenceChoice(clusters, scores), BackoffTimesSequence(backoff, scores)]
    results = []
    for strategy in runs:
        result = StrategyResult(strategy.name, strategy.label, "", False, True, None)
        for point in points:
            here = [c for c in cases if c.state == point.point]
            for case, answer in zip(here, strategy.answer(point, here, {}), strict=True):
                no_items: Any = _NoItems()  # grounding is not measured here
                result.outcomes.append(_outcome(case, answer, clusters, no_items, frozenset(), {},
                                                strata_of(case, point.knowledge)))
        results.append(result)
    summarise(results, len(clusters.clusters), bootstrap=args.bootstrap, seed=settings.eval_seed)
    print(f"{len(cases):,} cases of {len({c.user_id for c in cases}):,} users, {len(snapshots)} states, "
          f"{args.bootstrap} user resamples ({time.perf_counter() - started:.0f} s)")
    header = ["strategy", "hit@1 [95% CI]", "Δ vs count [95% CI]"] + [
        f"{dimension} {value}" for dimension in ("support", "retrieved") for value in DIMENSIONS[dimension]]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for result in results:
        cells = [result.name, _interval(result.metrics["hit"]),
                 _interval(result.vs_count["hit"], signed=True) if "hit" in result.vs_count else "(reference)"]
        for dimension in ("support", "retrieved"):
            for value in DIMENSIONS[dimension]:
                numbers = result.strata[dimension][value]
                cell = f"{numbers['hit'].value:.3f}"
                if "vs_count" in numbers:
                    cell += f" ({numbers['vs_count'].value:+.3f}{' *' if numbers['vs_count'].excludes_zero() else ''})"
                cells.append(cell + f" n={numbers['cases']}")
        print("| " + " | ".join(cells) + " |")
    print("`*`: the paired interval excludes 0. Every clairvoyant, future and horizons row knows the test period: "
          "none of them is deployable; the sequence rows are per request, not pair-level.")


class _NoItems:
    def items(self, case: Case, cluster: str) -> list[str]:
        return []


def _interval(interval: m.Interval, signed: bool = False) -> str:
    fmt = "{:+.3f}" if signed else "{:.3f}"
    star = " *" if signed and interval.excludes_zero() else ""
    return f"{fmt.format(interval.value)} [{fmt.format(interval.low)}, {fmt.format(interval.high)}]{star}"


if __name__ == "__main__":
    main()
