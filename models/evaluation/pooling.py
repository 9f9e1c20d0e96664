"""The served product's weights fitted on a validation month, before any test case is read.

The served hybrid multiplies the fine-tune's calibrated distribution by the sequence model's (hybrid-seq). Both
experts learned from the same transitions, so their product can count the same evidence twice, and the single
temperature fitted on pair transitions (models/calibration.fit_temperature) says nothing about how much each
should weigh beside the other. `fit_pool_weights` fits one exponent per expert by maximum likelihood on
user-level cases; here those cases come from the month before the split:

* **cases**: the protocol's request rule (models/evaluation/protocol.request_cases) over the training period's
  ratings only, triggers in [cut, split) -- no case's future reaches the test period;
* **the LLM expert**: the early-window fine-tune (trained on the days before `cut`, the model the temperature is
  fitted with), each case's pair scored with the knowledge of `cut`, as the held-out pairs are;
* **the sequence expert**: a SASRec with the serving configuration trained on the ratings before `cut`, cached
  under the evaluation's cache by a digest of its inputs (its training is deterministic per install).

* **the prior** (a third expert for hybrid-seq-fitted-prior): the add-k shares of transitions into each cluster on
  the days before the cut. Two posteriors multiplied count the prior twice (p1 p2 ∝ p(c | both) p(c) when their
  evidence is independent given c), so its fitted exponent says how much of it the product should divide out.

Neither expert saw the month, so the fitted weights are what the test period's own, fresher models should use.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from models.calibration import PoolCase
from models.counts import AllCounts
from models.evaluation.baselines import smoothed
from models.evaluation.grounding import SequenceScores
from models.evaluation.protocol import Case, Horizon, Timeline, request_cases, user_events
from streams.settings import Settings

Pair = tuple[str, str]
MASS_FLOOR = 1e-12  # a candidate without an unseen item gets no sequence mass; its log is floored, not -inf


def validation_cases(train_ratings: Sequence[Any], cluster_of: Any, cut_ts: float, settings: Settings,
                     horizon: Horizon, request_every: int, kept: int) -> list[Case]:
    """Request-anchored cases whose trigger falls in [cut_ts, the training period's end), from the training
    period's ratings alone (each future stops where the training period does)."""
    if not train_ratings:
        return []
    timeline = Timeline(0, cut_ts, train_ratings[-1].ts, ())
    users = user_events(train_ratings, cluster_of, settings)
    return [case for user, events in sorted(users.items())
            for case in request_cases(user, events, timeline, request_every, horizon, kept)]


def early_sequence_model(train_ratings: Sequence[Any], cut_ts: float, catalogue: Sequence[str], settings: Settings,
                         cache_root: Path | None, progress: bool = False) -> Any:
    """A sequence model with the serving configuration, trained on the ratings before `cut_ts` (from the cache
    when one with the same inputs was trained before)."""
    from models.sequence import SequenceConfig
    from models.sequence.recommender import SequenceRecommender, load_version
    from models.sequence.storage import sequence_store
    from models.sequence.training import user_sequences

    config = SequenceConfig.from_settings(settings)
    sequences = user_sequences([r for r in train_ratings if r.ts < cut_ts], settings, config.positives_only)
    digest = hashlib.sha256(orjson.dumps({"config": config.to_json(), "items": sorted(catalogue),
                                          "sequences": sequences}, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]
    pointer = f"early-{digest}"
    cached = settings.model_copy(update={"data_dir": cache_root}) if cache_root is not None else None
    if cached is not None:
        version = sequence_store(cached).pointer(pointer)
        if version is not None:
            return load_version(cached, version)
    model, _ = SequenceRecommender.fit(sequences, config, item_ids=sorted(catalogue), progress=progress)
    model.meta["trained_before_ts"] = cut_ts
    if cached is not None:
        model.save(cached, make_current=False)
        sequence_store(cached).set_pointer(pointer, model.version)
    return model


def next_totals_before(counts: AllCounts, day: int) -> dict[str, int]:
    """Transitions into each cluster on the days before `day` (the next-cluster prior's counts at the cut)."""
    from models.finetune.curation import period_counts

    totals: dict[str, int] = {}
    for row in period_counts(counts, min(counts.daily), day).values():
        for c3, n in row.items():
            totals[c3] = totals.get(c3, 0) + n
    return totals


def pool_cases(cases: Sequence[Case], llm_log_probs: Mapping[Pair, Mapping[str, float]],
               sequence: SequenceScores, prior_totals: Mapping[str, int] | None = None,
               prior_k: float = 1.0) -> list[PoolCase]:
    """Each case's candidates (the LLM row's novel clusters) with (LLM log-probability, log sequence mass) and,
    with `prior_totals`, the log of the next-cluster prior (add-`prior_k` shares over the candidates)."""
    sequence.prepare(cases)
    out = []
    for case in cases:
        scores = llm_log_probs[case.pair]
        candidates = list(scores)
        if case.next_novel not in scores:
            continue  # a cluster the row cannot name (another clusters version): nothing to learn from
        _, mass = sequence.clusters_for(case, candidates)
        prior = smoothed(candidates, prior_totals, prior_k) if prior_totals is not None else None
        out.append(PoolCase({c: (float(scores[c]), math.log(max(mass[c], MASS_FLOOR)),
                                 *((math.log(prior[c]),) if prior is not None else ())) for c in candidates},
                            case.next_novel))
    return out
