"""The metric can succeed and can fail: on MovieLens-100k's real cases (the protocol's own, every anchor), a strategy
fed the test period's own answers scores 1.0, and a constant wrong answer scores 0.0 -- through the same
outcome and summary code `explorer eval` runs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest

from models.evaluation.interface import Answer, Inferred, InferenceRequest, PointState, Snapshot, Strategy
from models.evaluation.protocol import Case, Horizon, all_cases, make_timeline, user_events
from models.evaluation.strata import strata_of
from models.evaluation.summary import StrategyResult, summarise
from streams.eval_run import _outcome
from streams.settings import Settings


class Oracle(Strategy):
    """Answers each case with its next novel cluster -- what the test period itself did."""

    name = label = "oracle"

    def answer(self, state: PointState, cases: Sequence[Case], inferred: Mapping[InferenceRequest, Inferred]
               ) -> list[Answer]:
        return [Answer.ranked([c.next_novel, "x", "y"], {c.next_novel: 1.0}) for c in cases]


class Constant(Strategy):
    """The same answer whatever the case: a cluster id no engagement ever has."""

    name = label = "constant"

    def answer(self, state: PointState, cases: Sequence[Case], inferred: Mapping[InferenceRequest, Inferred]
               ) -> list[Answer]:
        return [Answer.ranked(["no-such-cluster", "x", "y"], {"no-such-cluster": 1.0}) for _ in cases]


class NoItems:
    def items(self, case: Case, cluster: str) -> list[str]:
        return []


@pytest.fixture(scope="module")
def movielens_cases(clusters_data_dir, movielens_dir):  # type: ignore[no-untyped-def]
    from models.clusters import load_current
    from models.reference import reference_counts
    from streams.movielens import load_ratings

    settings = Settings(data_dir=clusters_data_dir, movielens_dir=movielens_dir)
    clusters = load_current(settings)
    ratings = load_ratings(movielens_dir)
    timeline = make_timeline(ratings, settings.train_fraction, settings.eval_points)
    cases = all_cases(user_events(ratings, clusters.cluster_of, settings), timeline,
                      Horizon(settings.eval_horizon_events), settings.recent_items_kept, settings.eval_request_every)
    snapshots = []
    for _, stop in timeline.chunks(ratings):
        counts = reference_counts(ratings[:stop], clusters.cluster_of, settings).total
        snapshots.append(Snapshot({p: sorted(r.items(), key=lambda cn: (-cn[1], cn[0])) for p, r in counts.items()},
                                  (), ""))
    return clusters, cases, snapshots


def test_the_test_periods_own_answers_score_one_and_a_constant_wrong_answer_zero(movielens_cases) -> None:
    clusters, cases, snapshots = movielens_cases
    assert len(cases) >= 1000 and len({c.user_id for c in cases}) >= 200  # the size goal
    results = []
    for strategy in (Oracle(), Constant()):
        result = StrategyResult(strategy.name, strategy.label, "", False, False, None)
        for state in range(len(snapshots)):
            here = [c for c in cases if c.state == state]
            point = PointState(state, snapshots[state], snapshots[0])
            for case, answer in zip(here, strategy.answer(point, here, {}), strict=True):
                result.outcomes.append(_outcome(case, answer, clusters, NoItems(), frozenset(), {},  # type: ignore[arg-type]
                                                strata_of(case, snapshots[state])))
        results.append(result)
    summarise(results, len(clusters.clusters), bootstrap=200, seed=1)
    oracle, constant = results
    assert (oracle.metrics["hit"].value, oracle.metrics["hit3"].value) == (1.0, 1.0)
    assert oracle.metrics["log_loss"].value == 0.0 and oracle.validity == 1.0
    assert (constant.metrics["hit"].value, constant.metrics["hit3"].value) == (0.0, 0.0)
    assert constant.metrics["log_loss"].value > 20 and constant.validity == 0.0
    for dimension, values in oracle.strata.items():  # every stratum with cases, for both
        for value, numbers in values.items():
            if numbers["cases"]:
                assert numbers["hit"].value == 1.0, (dimension, value)
                assert constant.strata[dimension][value]["hit"].value == 0.0, (dimension, value)
