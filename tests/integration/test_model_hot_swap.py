"""Hot swap under load: a model released while requests flow is picked up by the running worker; no request is
lost and no request_id is ever answered with two different contents."""

from __future__ import annotations

import ctypes
import time
from collections import defaultdict

import orjson
import pytest

from models.finetune.registry import register, release
from streams.movielens import load_ratings
from streams.recommend_client import RecommendationClient
from streams.topics import RECOMMENDATIONS, topic_name
from tests.harness import consume_all, run_worker, topic_size
from tests.integration.test_recommender import replay_and_wait

pytestmark = pytest.mark.integration


def requantized_base(settings, target) -> None:
    """A different GGUF of the same model (Q4_0 from the packaged Q4_1): a stand-in for a fine-tuned release."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.allow_requantize, params.nthread = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0, True, 1
    code = llama_cpp.llama_model_quantize(settings.resolved_model_path().encode(), str(target).encode(),
                                          ctypes.byref(params))
    assert code == 0


def test_a_released_model_is_swapped_in_without_losing_or_changing_answers(serving_settings, tmp_path):
    settings = serving_settings.model_copy(update={"model_watch_interval_s": 0.5, "pair_refresh_interval_s": 0.5,
                                                   "pair_refresh_min_interval_s": 0.0})
    ratings = load_ratings(settings.movielens_dir)[:3_000]
    users = sorted({r.user_id for r in ratings}, key=int)
    candidate = tmp_path / "candidate.gguf"
    requantized_base(settings, candidate)
    sent: list[str] = []
    with run_worker(settings, tmp_path) as worker:
        replay_and_wait(settings, ratings)
        with RecommendationClient(settings) as client:
            first = {user: client.send(user) for user in users}
            before = client.wait(first.values(), timeout_s=600)
            sent += first.values()
            old_versions = {a.recommendation["model_version"].split("|")[0] for a in before.values()}

            register(settings, "swap-test", candidate, {"gates": {"passed": True}})
            release(settings, "swap-test")
            deadline, swapped = time.monotonic() + 300, False
            while not swapped and time.monotonic() < deadline:  # requests keep flowing through the swap
                batch = [client.send(user) for user in users]
                batch += [client.send(user, request_id=first[user]) for user in users[:3]]  # duplicates
                sent += batch
                for user in users[:3]:  # forget the first answers: the re-sent ones must arrive and match them
                    client.answers.pop(first[user], None)
                answers = client.wait(batch, timeout_s=600)
                swapped = any(a.recommendation["model_version"].startswith("model.gguf:") for a in answers.values())
                for user in users[:3]:
                    assert answers[first[user]].recommendation == before[first[user]].recommendation
            assert swapped, "no answer came from the released model"
        assert worker.alive(), worker.log_tail()
    assert old_versions and not any(v.startswith("model.gguf:") for v in old_versions)

    # Every request_id sent got an answer, and all copies of one request_id's answer are the same bytes.
    copies = defaultdict(set)
    topic = topic_name(settings, RECOMMENDATIONS)
    for message in consume_all(settings, topic, expected=topic_size(settings, topic)):
        copies[orjson.loads(message.value())["request_id"]].add(message.value())
    assert set(sent) <= copies.keys()
    assert all(len(values) == 1 for values in copies.values())
