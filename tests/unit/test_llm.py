"""The novel-cluster predictor with the real packaged SmolLM2-135M (Q4_1 GGUF, ~100 MB, loads in about a second)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from models.clusters import Cluster, ClusterSet
from models.constrained import (
    PieceIndex,
    TokenTrie,
    gbnf_alternation,
    greedy_by_pieces,
    path_log_probs,
    prefix_log_probs,
    shared_nodes,
)
from models.llm import (
    METHODS,
    Knowledge,
    ModelNotFound,
    NovelClusterPredictor,
    Prediction,
    build_prompt,
    model_version,
)
from models.prompts import prompt_segments
from streams.settings import Settings

NAMES = [  # real MovieLens cluster names, picked for the awkward cases: shared prefixes, a name that is a prefix
    "Drama Comedy 70s-80s", "Thriller 90s", "Thriller Action Late 90s",  # of another, an apostrophe, a hyphen
    "Niche Drama Late 90s like Showgirls", "Niche Drama Late 90s like Star Maps", "Action 90s", "Horror 90s",
    "Horror 90s like Scream", "Children's Animation 50s-80s", "Popular Romance Comedy 90s",
    "Film-Noir Thriller 40s-60s", "Niche Documentary 90s",
]
CLUSTERS = ClusterSet(version="test-v1", item_to_cluster={},
                      clusters={f"c{i}": Cluster(id=f"c{i}", name=name, keywords=(), size=20)
                                for i, name in enumerate(NAMES)})
REQUESTS: list[tuple[tuple[str, str], Knowledge | None]] = [
    (("c0", "c1"), Knowledge(top_next=[("c2", 12), ("c6", 5), ("c1", 3)], trending=["c5", "c9"])),
    (("c6", "c3"), None),
    (("c2", "c7"), Knowledge(top_next=[("c4", 7), ("zz", 3)], trending=["c8", "c2", "c11", "c0"])),
    (("c11", "c8"), Knowledge(top_next=[("c6", 2), ("c7", 1)], trending=["c5", "c9"])),
]


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    # a data dir of its own: a fine-tune released into the default one would be served instead of the base
    built = NovelClusterPredictor(Settings(data_dir=tmp_path_factory.mktemp("llm-data")), CLUSTERS)
    yield built
    built.close()


@pytest.fixture(scope="module")
def answers(predictor) -> dict[str, list[Prediction]]:
    return {method: [predictor.predict(history, knowledge, method=method) for history, knowledge in REQUESTS]
            for method in METHODS}


# ---------------------------------------------------------------------- predictions
def test_every_answer_is_one_real_cluster_outside_the_history(answers):
    for method, predictions in answers.items():
        for (history, _), prediction in zip(REQUESTS, predictions, strict=True):
            assert prediction.method == method
            assert prediction.cluster_id in CLUSTERS.clusters, (method, history, prediction)
            assert prediction.cluster_id not in history, (method, history, prediction)
            assert prediction.elapsed_s > 0


def test_trie_decoding_gives_the_grammar_answers(answers):
    """Greedy over the same allowed set, so equal by construction."""
    assert [p.cluster_id for p in answers["trie"]] == [p.cluster_id for p in answers["gbnf"]]
    assert all(t.decoded_tokens <= g.decoded_tokens for t, g in zip(answers["trie"], answers["gbnf"], strict=True))


def test_same_input_same_answer_whatever_was_asked_before(predictor, answers):
    for method in METHODS:
        for i in (2,):  # the KV cache now holds another request (and other trending clusters)
            again = predictor.predict(*REQUESTS[i], method=method)
            assert again.cluster_id == answers[method][i].cluster_id, (method, REQUESTS[i])


def test_a_cached_request_head_gives_bit_identical_logits(predictor):
    """Pairs sharing the older cluster reuse its evaluated line; the logits must not depend on whether it was."""
    target = (("c0", "c3"), Knowledge(top_next=[("c2", 4)], trending=["c5", "c9"]))
    predictor.prompt_logits(("c0", "c1"), target[1])  # head "c0" now cached
    reused = predictor.prompt_logits(*target)
    predictor.prompt_logits(("c6", "c3"), target[1])  # another head: "c0" is evaluated again
    fresh = predictor.prompt_logits(*target)
    assert np.array_equal(reused, fresh)
    other = predictor.prompt_logits(("c0", "c4"), target[1])
    assert not np.array_equal(other, fresh)  # the rest of the request does reach the logits


def test_the_default_method_is_trie_and_threads_may_share_a_predictor(predictor, answers):
    assert predictor.method == "trie"
    found: dict[int, str] = {}

    def ask(i: int) -> None:
        found[i] = predictor.predict(*REQUESTS[i]).cluster_id

    threads = [threading.Thread(target=ask, args=(i,)) for i in (1, 3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert found == {i: answers["trie"][i].cluster_id for i in (1, 3)}


def test_bad_requests_are_refused(predictor):
    with pytest.raises(ValueError, match="unknown decoding method"):
        predictor.predict(("c0", "c1"), None, method="beam")
    with pytest.raises(ValueError, match="not in version test-v1"):
        predictor.predict(("c0", "c99"), None)


# ---------------------------------------------------------------------- model file
def test_a_missing_model_file_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope.gguf"
    with pytest.raises(ModelNotFound, match="EXPLORER_MODEL_PATH") as raised:
        NovelClusterPredictor(Settings(), CLUSTERS, model_path=str(missing))
    assert str(missing) in str(raised.value)
    with pytest.raises(ModelNotFound):
        NovelClusterPredictor(Settings(data_dir=tmp_path / "data", model_path=str(missing)), CLUSTERS)


def test_model_version_names_the_file_and_tells_contents_apart(predictor, tmp_path):
    settings = Settings(data_dir=tmp_path / "data")
    # the packaged base is no released fine-tune, and its label says so
    assert predictor.model_version.startswith("base:SmolLM2-135M-Instruct.Q4_1.gguf:")
    assert not predictor.fine_tuned
    assert predictor.model_version == model_version(settings, settings.resolved_model_path())
    assert predictor.model_version == "base:" + predictor.identity.label
    first, second = tmp_path / "a.gguf", tmp_path / "b.gguf"
    first.write_bytes(b"x" * 10)
    second.write_bytes(b"y" * 10)
    assert model_version(settings, first).split(":")[1:] != model_version(settings, second).split(":")[1:]


# ---------------------------------------------------------------------- prompt
def test_the_prompt_holds_the_history_and_the_knowledge():
    history, knowledge = REQUESTS[0]
    prompt = build_prompt(history, knowledge, CLUSTERS)
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert "\nDrama Comedy 70s-80s\nThriller 90s\n" in prompt  # the history, older first
    assert "\nThriller Action Late 90s (12)\nHorror 90s (5)\n" in prompt  # top next with counts...
    assert "Thriller 90s (3)" not in prompt  # ...but never a history cluster
    assert "Trending now:\nAction 90s\nPopular Romance Comedy 90s\n" in prompt
    capped = build_prompt(*REQUESTS[2], CLUSTERS)
    assert "Niche Documentary 90s" in capped and "\nDrama Comedy 70s-80s\n" not in capped  # 3 trending at most
    assert "(3)" not in capped  # unknown cluster ids are left out
    bare = build_prompt(("c6", "c3"), None, CLUSTERS)
    assert "Trending" not in bare and "next chose" not in bare


def test_segments_tokenize_like_the_whole_prompt(predictor):
    for history, knowledge in REQUESTS:
        text = prompt_segments(history, knowledge, CLUSTERS).text
        assert predictor.prompt_tokens(history, knowledge) == predictor.tokenize(text)
    # an answer after "assistant\n" is tokenized as the bare name
    opening = predictor.tokenize("<|im_start|>assistant\n")
    assert predictor.tokenize("<|im_start|>assistant\nThriller 90s") == [*opening,
                                                                          *predictor.candidate_tokens("c1")]


# ---------------------------------------------------------------------- pure helpers
def test_gbnf_alternation_quotes_every_name():
    grammar = gbnf_alternation(["Children's Animation", 'Say "hi"', "a\\b"])
    assert grammar == 'root ::= "Children\'s Animation" | "Say \\"hi\\"" | "a\\\\b"\n'
    with pytest.raises(ValueError):
        gbnf_alternation([])


PIECES = {0: "<end>", 1: "H", 2: "orror", 3: " 90s", 4: " like", 5: " Scream", 6: "Horror", 7: "A", 8: "ction",
          9: " ", 10: "9", 11: "0", 12: "s", 13: "l", 14: "i", 15: "k", 16: "e", 17: "S", 18: "c", 19: "r",
          20: "a", 21: "m", 22: "o", 23: "t", 24: "n"}
TOY_NAMES = ["Horror 90s", "Horror 90s like Scream", "Action 90s"]
END = np.array([0])


def _logits(prefer: dict[int, float]) -> np.ndarray:
    row = np.zeros(len(PIECES), dtype=np.float32)
    for token, value in prefer.items():
        row[token] = value
    return row


def test_greedy_by_pieces_follows_any_spelling_and_stops_once_decided():
    index = PieceIndex(PIECES, TOY_NAMES)
    steps: list[int] = []

    def advance(token: int) -> np.ndarray:
        steps.append(token)
        return {1: _logits({2: 5.0}), 2: _logits({3: 5.0}), 3: _logits({0: 9.0, 4: 1.0})}[token]

    # "H" (not the canonical "Horror") is allowed; after "Horror 90s" the end token beats " like"
    assert greedy_by_pieces(TOY_NAMES, index, _logits({1: 3.0, 6: 2.0, 7: 1.0}), advance, END) == (0, 3)
    assert steps == [1, 2, 3]
    # "A" decides "Action 90s" at once: nothing is evaluated after the prompt
    assert greedy_by_pieces(TOY_NAMES, index, _logits({7: 4.0}), advance, END) == (2, 0)
    # ties go to the lower token id, as llama.cpp's greedy sampler does
    assert greedy_by_pieces(TOY_NAMES, index, _logits({6: 1.0, 7: 1.0}), lambda t: _logits({3: 1.0}), END)[0] == 0


def test_the_end_token_can_only_finish_a_complete_name():
    index = PieceIndex(PIECES, TOY_NAMES)
    # the end token scores best everywhere, but "Horror" alone is no name: only " 90s" may follow
    answer, _ = greedy_by_pieces(TOY_NAMES, index, _logits({0: 9.0, 6: 1.0}),
                                 lambda t: _logits({0: 9.0, 3: 1.0, 4: 0.5}), END)
    assert answer == 0


def test_piece_index_refuses_names_the_vocabulary_cannot_spell():
    with pytest.raises(ValueError, match="cannot spell"):
        PieceIndex({1: "a"}, ["ab"])


def test_candidate_scores_add_up_every_step_and_the_end():
    trie = TokenTrie([(1, 2), (1, 3), (4,)])
    assert [n.token for n in trie.nodes()] == [1, 4, 2, 3]
    a, b, c = (trie.root.children[1].children[2], trie.root.children[1].children[3], trie.root.children[4])
    edge = {id(trie.root.children[1]): -0.5, id(a): -1.0, id(b): -0.1, id(c): -2.0}
    end = {id(a): -0.2, id(b): -3.0, id(c): -0.1}
    assert np.allclose(path_log_probs(trie, edge, end), [-1.7, -3.6, -2.1])
    with pytest.raises(ValueError):
        TokenTrie([(1,), (1,)])


def test_model_path_defaults_to_the_packaged_gguf():
    assert Path(Settings().resolved_model_path()).is_file()


def test_a_registered_fine_tune_is_labelled_by_its_version_the_base_says_base(tmp_path, caplog):
    import logging

    from models.finetune.registry import get_version, register

    settings = Settings(data_dir=tmp_path / "data")
    copy = tmp_path / "candidate.gguf"
    copy.write_bytes(Path(Settings().resolved_model_path()).read_bytes())
    register(settings, "ft-test", copy, {"gates": {"passed": True}, "calibration": {"temperature": 7.5}})
    path = get_version(settings, "ft-test").model_path
    assert model_version(settings, path).startswith("ft-test:")
    with caplog.at_level(logging.INFO, logger="models.llm"):
        tuned = NovelClusterPredictor(settings, CLUSTERS, model_path=str(path))
        base = NovelClusterPredictor(settings, CLUSTERS, model_path=Settings().resolved_model_path())
        quiet = NovelClusterPredictor(settings, CLUSTERS, model_path=Settings().resolved_model_path(),
                                      announce_base=False)  # a gate measuring a candidate: no serving warning
    quiet.close()
    try:
        assert tuned.fine_tuned and tuned.model_version == model_version(settings, path)
        assert not base.fine_tuned and base.model_version.startswith("base:")
        assert (tuned.temperature, base.temperature) == (7.5, 1.0)  # the release's fitted one; the base: none
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "BASE model" in warnings[0] and base.model_version in warnings[0]
    finally:
        tuned.close()
        base.close()


def test_candidate_log_probs_are_the_score_methods_and_a_distribution(predictor, answers):
    for (history, knowledge), scored, by_prefix in zip(REQUESTS, answers["score"], answers["prefix"], strict=True):
        assert by_prefix.decoded_tokens < scored.decoded_tokens  # only the shared trie nodes are evaluated
        exact = predictor.candidate_log_probs(history, knowledge, exact=True)
        assert list(exact) == [c for c in CLUSTERS.clusters if c not in history]
        assert max(exact, key=exact.get) == scored.cluster_id  # the same criterion as "score"
        assert all(v < 0 for v in exact.values())
        assert 0 < sum(np.exp(list(exact.values()))) <= 1.0 + 1e-6  # valid answers share at most all the mass
        assert predictor.candidate_log_probs(history, knowledge, exact=True) == exact  # no state leaks
        prefix = predictor.candidate_log_probs(history, knowledge)  # the served, distinguishing-prefix form
        assert list(prefix) == list(exact)
        # a prefix of the name is at least as likely as the whole name, and distinct prefixes are disjoint events
        # (0.1: llama.cpp's kernels round differently for a batch of ~40 trie nodes than for one of ~270)
        assert all(prefix[c] >= exact[c] - 0.1 for c in exact)
        assert 0 < sum(np.exp(list(prefix.values()))) <= 1.0 + 1e-6
        assert predictor.candidate_log_probs(history, knowledge) == prefix
        assert max(prefix, key=prefix.get) == by_prefix.cluster_id


def test_prefix_scores_stop_where_a_candidate_is_told_apart():
    # (1, 2) and (1, 3) part after token 1; (4, 5) is alone from its first token; (1,) ends where the others go on
    trie = TokenTrie([(1, 2), (1, 3), (4, 5), (1,)])
    one, four = trie.root.children[1], trie.root.children[4]
    assert shared_nodes(trie) == [one]  # the only node whose logits are needed beyond the prompt's
    edge = {id(one): -0.5, id(one.children[2]): -1.0, id(one.children[3]): -0.1, id(four): -2.0}
    end = {id(one): -3.0}
    assert np.allclose(prefix_log_probs(trie, edge, end), [-1.5, -0.6, -2.0, -3.5])
