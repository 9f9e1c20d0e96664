"""The standard next-item protocol for the sequence model: leave-one-out by time, full ranking, HR@10 / NDCG@10.

Per user (event-time order, ties by event_id as load_ratings gives them): the last interaction is the test target,
the second-last the validation target (early stopping), everything before trains. Users with fewer than 3
interactions are left out (none in MovieLens-100k). Test input: every earlier interaction (its last `max_len`).
Ranking is over every item of the vocabulary, padding excluded; two variants are reported:
- `hr`/`ndcg`: the user's other interacted items (train + validation) are masked out of the ranking, as RecBole does
  for general (non-sequential) models;
- `hr_unfiltered`/`ndcg_unfiltered`: nothing else is masked, which is what RecBole 1.2.1 does for sequential models
  (its FullSortEvalDataLoader passes no history for them), i.e. RecBole's own SASRec numbers.
A target's rank counts the items scored strictly higher (ties in its favour).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from models.sequence import Holdout, SequenceConfig, hit_and_ndcg, holdout_ranks, train_model, vocabulary
from streams.settings import Settings


@dataclass(frozen=True)
class LeaveOneOut:
    users: list[str]
    item_ids: list[str]  # item index i + 1 is item_ids[i]
    train: list[list[int]]
    valid: Holdout
    test: Holdout


def leave_one_out(sequences: Mapping[str, Sequence[str]], item_ids: Sequence[str] | None = None,
                  train_filter: Mapping[str, Sequence[bool]] | None = None) -> LeaveOneOut:
    """Split per-user histories. `train_filter[user][j]` False drops item j from the model's inputs and training
    (e.g. non-positive ratings); targets and the masked history always use every interaction."""
    vocab = vocabulary(sequences, item_ids)
    index = {item: i + 1 for i, item in enumerate(vocab)}
    users = sorted(u for u, s in sequences.items() if len(s) >= 3)
    train, valid, test = [], Holdout([], [], []), Holdout([], [], [])
    for user in users:
        items = [index[i] for i in sequences[user]]
        keep = list(train_filter[user]) if train_filter is not None else [True] * len(items)
        used = [i for i, k in zip(items, keep, strict=True) if k]
        n_train, n_valid = sum(keep[:-2]), sum(keep[:-1])
        train.append(used[:n_train])
        valid.prefixes.append(used[:n_train])
        valid.targets.append(items[-2])
        valid.exclude.append(sorted(set(items[:-2]) - {items[-2]}))
        test.prefixes.append(used[:n_valid])
        test.targets.append(items[-1])
        test.exclude.append(sorted(set(items[:-1]) - {items[-1]}))
    return LeaveOneOut(users=users, item_ids=vocab, train=train, valid=valid, test=test)


@dataclass(frozen=True)
class EvalResult:
    k: int
    hr: float
    ndcg: float
    hr_unfiltered: float
    ndcg_unfiltered: float
    train_seconds: float
    epochs: int
    best_epoch: int
    stopped: str
    users: int
    items: int
    best_valid_ndcg: float | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def evaluate(ratings: Sequence[Any], settings: Settings, config: SequenceConfig | None = None,
             progress: bool = True, k: int = 10) -> EvalResult:
    """Train a fresh model on the leave-one-out training part of `ratings` (load_ratings order) and test it."""
    config = config or SequenceConfig.from_settings(settings)
    sequences: dict[str, list[str]] = {}
    positive: dict[str, list[bool]] = {}
    for r in ratings:
        sequences.setdefault(r.user_id, []).append(r.item_id)
        positive.setdefault(r.user_id, []).append(settings.is_positive("rating", r.rating))
    split = leave_one_out(sequences, train_filter=positive if config.positives_only else None)
    return evaluate_split(split, config, progress, k)


def evaluate_split(split: LeaveOneOut, config: SequenceConfig, progress: bool = True, k: int = 10) -> EvalResult:
    started = time.perf_counter()
    model, report = train_model(split.train, len(split.item_ids), config, split.valid, progress,
                                description="SASRec (ours)")
    train_seconds = time.perf_counter() - started
    hr, ndcg = hit_and_ndcg(holdout_ranks(model, split.test, config.max_len), k)
    unfiltered = Holdout(split.test.prefixes, split.test.targets, None)
    hr_all, ndcg_all = hit_and_ndcg(holdout_ranks(model, unfiltered, config.max_len), k)
    return EvalResult(k=k, hr=hr, ndcg=ndcg, hr_unfiltered=hr_all, ndcg_unfiltered=ndcg_all,
                      train_seconds=train_seconds, epochs=report.epochs, best_epoch=report.best_epoch,
                      stopped=report.stopped, users=len(split.users), items=len(split.item_ids),
                      best_valid_ndcg=report.best_valid_ndcg)
