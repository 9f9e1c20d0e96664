"""The SASRec sequence recommender on tiny synthetic sequences: determinism, learning, restriction, persistence,
and the leave-one-out evaluator on hand-made examples."""

from __future__ import annotations

import math
import random
import statistics
import time

import numpy as np
import pytest
import torch

from models.sequence import (
    PAD,
    SASRec,
    SequenceConfig,
    SequenceModelNotTrained,
    SequenceRecommender,
    hit_and_ndcg,
    load_current,
    load_version,
    rank_of_targets,
    train_model,
    training_windows,
)
from models.sequence_eval import evaluate_split, leave_one_out
from streams.settings import Settings

N_ITEMS = 20
TINY = SequenceConfig(hidden=32, blocks=1, heads=2, inner=64, max_len=8, stride=4, dropout=0.1, attn_dropout=0.1,
                      lr=1e-2, batch_size=16, max_epochs=15, patience=100, budget_s=60, seed=3)


def cycles(users: int = 60, length: int = 12, seed: int = 0) -> dict[str, list[str]]:
    """Each user walks the cycle i -> i+1 (mod N_ITEMS) from a random start: item ids "i1".."i20" (no repeats)."""
    rng = random.Random(seed)
    out = {}
    for u in range(users):
        start = rng.randrange(N_ITEMS)
        out[f"u{u}"] = [f"i{(start + t) % N_ITEMS + 1}" for t in range(length)]
    return out


def next_of(item: str) -> str:
    return f"i{int(item[1:]) % N_ITEMS + 1}"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors on a shared 2-core machine: more threads only add OpenMP contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained() -> SequenceRecommender:
    recommender, _ = SequenceRecommender.fit(cycles(), TINY, progress=False)
    return recommender


# ---------------------------------------------------------------- training
def test_training_is_deterministic_for_a_seed():
    train = [[(s + t) % N_ITEMS + 1 for t in range(16)] for s in range(12)]
    config = SequenceConfig(hidden=16, blocks=1, heads=2, inner=32, max_len=8, stride=4, batch_size=8,
                            max_epochs=3, budget_s=60, seed=11)
    model_a, report_a = train_model(train, N_ITEMS, config, progress=False)
    model_b, report_b = train_model(train, N_ITEMS, config, progress=False)
    assert report_a.losses == report_b.losses
    for (name, a), (_, b) in zip(model_a.state_dict().items(), model_b.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    probe = torch.tensor([[0, 0, 1, 2, 3]])
    assert torch.equal(model_a.last_logits(probe), model_b.last_logits(probe))
    other, _ = train_model(train, N_ITEMS, SequenceConfig(**{**config.to_json(), "seed": 12}), progress=False)
    assert not torch.equal(other.item_emb.weight, model_a.item_emb.weight)


def test_training_leaves_global_rng_and_determinism_flags_alone():
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_model([[1, 2, 3, 4]], 4, SequenceConfig(hidden=8, blocks=1, heads=1, inner=8, max_len=4, stride=4,
                                                   max_epochs=1), progress=False)
    assert torch.equal(torch.rand(3), expected)
    assert torch.are_deterministic_algorithms_enabled() == deterministic


def test_model_learns_the_cycle(trained):
    histories, targets = [], []
    for start in range(N_ITEMS):
        history = [f"i{(start + t) % N_ITEMS + 1}" for t in range(7)]
        histories.append(history)
        targets.append(next_of(history[-1]))
    tops = trained.recommend_batch(histories, k=1)
    accuracy = sum(top[0][0] == target for top, target in zip(tops, targets, strict=True)) / len(targets)
    assert accuracy >= 0.8  # chance: 1/20


def test_validation_picks_the_best_epoch():
    _, report = SequenceRecommender.fit(cycles(users=20), SequenceConfig(**{**TINY.to_json(), "max_epochs": 4}),
                                        progress=False)
    assert report.best_valid_ndcg == max(report.valid_ndcg)
    assert report.valid_ndcg[report.best_epoch - 1] == report.best_valid_ndcg


def test_training_windows_score_each_step_once_with_context():
    seq = list(range(1, 24))  # 22 steps
    inputs, targets = training_windows([seq], max_len=8, stride=3)
    scored = sorted(int(t) for t in targets[targets != PAD])
    assert scored == seq[1:]
    for row_in, row_out in zip(inputs, targets, strict=True):
        for pos in np.flatnonzero(row_out):
            assert row_out[pos] == row_in[pos] + 1  # the target follows the input at the same position
            context = np.count_nonzero(row_in[: pos + 1])
            assert context >= min(row_in[pos], 8 - 3 + 1)  # the full prefix, or at least max_len - stride + 1
    disjoint_in, disjoint_out = training_windows([seq], max_len=8, stride=8)
    assert len(disjoint_in) == math.ceil(22 / 8)
    assert sorted(int(t) for t in disjoint_out[disjoint_out != PAD]) == seq[1:]


def test_short_histories_and_left_padding_agree():
    torch.manual_seed(0)
    model = SASRec(N_ITEMS, SequenceConfig(hidden=16, blocks=2, heads=2, inner=32, max_len=10)).eval()
    with torch.no_grad():
        short = model.last_logits(torch.tensor([[4, 5, 6]]))
        padded = model.last_logits(torch.tensor([[0] * 7 + [4, 5, 6]]))
    assert torch.allclose(short, padded, atol=1e-5)
    assert torch.isfinite(padded[:, 1:]).all()


# ---------------------------------------------------------------- inference
def test_restricted_recommend_returns_only_allowed_and_never_excluded(trained):
    allowed = {"i3", "i5", "i7", "i9", "i11", "unknown-item"}
    exclude = {"i5", "i2", "i9"}
    top = trained.recommend(["i1", "i2"], k=10, allowed_items=allowed, exclude=exclude)
    assert {item for item, _ in top} == {"i3", "i7", "i11"}
    assert [s for _, s in top] == sorted((s for _, s in top), reverse=True)
    assert trained.recommend(["i1"], k=2, allowed_items={"i2", "i3", "i4"}, exclude=set())[0][0] == "i2"
    assert trained.recommend(["i1"], k=5, allowed_items={"i4"}, exclude={"i4"}) == []
    assert trained.recommend(["i1"], k=5, allowed_items=set(), exclude=set()) == []


def test_unrestricted_recommend_ranks_all_items_but_excluded(trained):
    top = trained.recommend(["i6", "i7"], k=N_ITEMS, allowed_items=None, exclude={"i8", "i1"})
    items = [item for item, _ in top]
    assert len(items) == N_ITEMS - 2 and "i8" not in items and "i1" not in items
    assert trained.recommend(["i6", "i7"], k=1, allowed_items=None, exclude=set())[0][0] == "i8"


def test_batch_matches_single_calls_and_unknown_history_falls_back(trained):
    histories = [["i1", "i2", "i3"], ["nope"], [], ["i10"]]
    allowed = [{"i4", "i5", "i6"}, None, {"i1", "i2"}, None]
    exclude = [{"i5"}, {"i1"}, set(), {"i11"}]
    batch = trained.recommend_batch(histories, 3, allowed, exclude)
    for history, a, e, result in zip(histories, allowed, exclude, batch, strict=True):
        single = trained.recommend(history, 3, a, e)  # padded to its own length: equal up to float rounding
        assert [i for i, _ in single] == [i for i, _ in result]
        assert [s for _, s in single] == pytest.approx([s for _, s in result], rel=1e-5)
    assert len(batch[1]) == 3 and "i1" not in {i for i, _ in batch[1]}  # popularity fallback


def test_recommend_is_fast_at_full_size():
    torch.manual_seed(0)
    config = SequenceConfig()  # the production shape: 1682 items, hidden 64, 2 blocks, max_len 50
    items = [str(i) for i in range(1, 1683)]
    recommender = SequenceRecommender(SASRec(len(items), config), config, items, [1.0] * len(items))
    history = [str(i) for i in range(100, 160)]
    allowed = {str(i) for i in range(500, 540)}
    for _ in range(5):
        recommender.recommend(history, 10, allowed, set(history))
    timings = []
    for _ in range(30):
        started = time.perf_counter()
        recommender.recommend(history, 10, allowed, set(history))
        timings.append(time.perf_counter() - started)
    assert statistics.median(timings) < 0.025  # typically 2-4 ms on one core; generous for a shared machine


# ---------------------------------------------------------------- persistence
def test_save_and_load_round_trip(trained, tmp_path):
    settings = Settings(data_dir=tmp_path)
    with pytest.raises(SequenceModelNotTrained):
        load_current(settings)
    folder = trained.save(settings)
    assert folder.name == trained.version and trained.version.startswith("sasrec-")
    assert {p.name for p in folder.iterdir()} == {"model.pt", "config.json", "items.json"}
    loaded = load_current(settings)
    assert loaded.version == trained.version and loaded.config == trained.config
    assert loaded.item_ids == trained.item_ids
    histories = [["i1", "i2", "i3"], ["i17"], []]
    assert torch.equal(loaded.score_batch(histories), trained.score_batch(histories))
    assert loaded.recommend(["i4"], 3, {"i5", "i6", "i9"}, set()) == trained.recommend(["i4"], 3, {"i5", "i6", "i9"},
                                                                                        set())
    assert load_version(settings, trained.version).version == trained.version
    with pytest.raises(SequenceModelNotTrained):
        load_version(settings, "../nope")
    trained.save(settings)  # saving the same version again is harmless


def test_version_depends_on_config_data_and_seed():
    small = SequenceConfig(**{**TINY.to_json(), "max_epochs": 1})
    a, _ = SequenceRecommender.fit(cycles(users=6), small, progress=False)
    b, _ = SequenceRecommender.fit(cycles(users=6), small, progress=False)
    c, _ = SequenceRecommender.fit(cycles(users=6), SequenceConfig(**{**small.to_json(), "seed": 4}), progress=False)
    d, _ = SequenceRecommender.fit(cycles(users=7), small, progress=False)
    assert a.version == b.version
    assert len({a.version, c.version, d.version}) == 3


# ---------------------------------------------------------------- evaluation
def test_hit_and_ndcg_by_hand():
    hr, ndcg = hit_and_ndcg(torch.tensor([0, 1, 9, 10, 100]), k=10)
    assert hr == pytest.approx(3 / 5)
    assert ndcg == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(11)) / 5)


def test_rank_of_targets_masks_padding_and_excluded_items():
    logits = torch.tensor([
        [9.0, 1.0, 5.0, 3.0, 4.0],  # target 3 (score 3): items 2 and 4 beat it; padding (9) never counts
        [9.0, 1.0, 5.0, 3.0, 4.0],  # same, with items 2 and 4 excluded: rank 0
        [0.0, 7.0, 6.0, 5.0, 8.0],  # target 1: item 4 beats it
    ])
    targets = torch.tensor([3, 3, 1])
    assert rank_of_targets(logits, targets, None).tolist() == [2, 2, 1]
    assert rank_of_targets(logits, targets, [[], [2, 4], [1]]).tolist() == [2, 0, 1]  # the target is never masked
    assert logits[0, 0] == 9.0  # the caller's tensor is left alone


def test_leave_one_out_split_by_hand():
    split = leave_one_out({"u1": ["a", "b", "c", "d", "e"], "u2": ["c", "a", "b"], "u3": ["a", "b"]},
                          item_ids=["a", "b", "c", "d", "e", "f"])
    a, b, c, d, e = 1, 2, 3, 4, 5
    assert split.users == ["u1", "u2"]  # fewer than 3 interactions: left out
    assert split.train == [[a, b, c], [c]]
    assert split.valid.prefixes == [[a, b, c], [c]] and split.valid.targets == [d, a]
    assert split.test.prefixes == [[a, b, c, d], [c, a]] and split.test.targets == [e, b]
    assert split.test.exclude == [[a, b, c, d], [a, c]] and split.valid.exclude == [[a, b, c], [c]]


def test_leave_one_out_with_a_training_filter():
    split = leave_one_out({"u": ["a", "b", "c", "d", "e"]}, train_filter={"u": [True, False, True, False, True]})
    assert split.train == [[1, 3]] and split.test.prefixes == [[1, 3]] and split.test.targets == [5]
    assert split.test.exclude == [[1, 2, 3, 4]]


def test_evaluate_split_on_cycles():
    result = evaluate_split(leave_one_out(cycles(users=30)), SequenceConfig(**{**TINY.to_json(), "max_epochs": 8}),
                            progress=False)
    assert result.users == 30 and result.items == N_ITEMS
    # chance HR@10 is 0.5 on 20 items; with history masked every other item is gone (the cycle revisits them all)
    assert result.hr_unfiltered >= 0.8 and result.ndcg_unfiltered >= 0.6
    assert result.hr == 1.0 and result.train_seconds > 0 and result.epochs == 8
