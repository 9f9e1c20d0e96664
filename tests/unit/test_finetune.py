"""Fine-tuning (models/finetune/): curation, the Q/K permutation, the GGUF round trip, gates, registry, and one
whole cycle end to end on a tiny Llama model the test builds itself (on SmolLM2's tokenizer, nothing downloaded)."""

from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
import orjson
import pytest

from models.clusters import Cluster, ClusterSet
from models.finetune import curation, export, gates, registry
from models.prompts import Knowledge
from models.counts import DAY_S, AllCounts
from streams.movielens import Rating
from streams.settings import Settings
from tests.tiny_models import tiny_model, write_tiny_base

NAMES = ("Noir", "Space Opera", "Romance", "Cartoons", "Westerns", "Musicals")


def _clusters() -> ClusterSet:
    ids = [f"c{i}" for i in range(len(NAMES))]
    items = {f"i{k}": ids[k % len(ids)] for k in range(3 * len(ids))}
    return ClusterSet(version="tiny-1", item_to_cluster=items,
                      clusters={cid: Cluster(cid, name, (name.lower(),), 3) for cid, name in zip(ids, NAMES)})


def _successor(older: int, latest: int, n: int = len(NAMES)) -> int:
    """The tiny world's rule: the cluster after the latest one, skipping the older one."""
    nxt = (latest + 1) % n
    return (nxt + 1) % n if nxt == older else nxt


def _ratings(users: int = 160, steps: int = 6, days: int = 40, seed: int = 3) -> list[Rating]:
    """Users walk the rule from a random start; their engagements spread over `days` days."""
    rng = random.Random(seed)
    n = len(NAMES)
    out = []
    for user in range(users):
        a = rng.randrange(n)
        b = (a + rng.randrange(1, n)) % n
        walk = [a, b]
        while len(walk) < steps:
            walk.append(_successor(walk[-2], walk[-1]))
        start = 1_000 * DAY_S + rng.uniform(0, days - 2) * DAY_S
        for k, cluster in enumerate(walk):
            item = f"i{cluster + n * rng.randrange(3)}"
            out.append(Rating(str(user), item, 5.0, start + k * 3_600.0))
    out.sort(key=lambda r: (r.ts, r.event_id))
    return out


def _settings(tmp_path: Path, **overrides) -> Settings:
    values = {"data_dir": tmp_path / "data", "finetune_seed": 5, "finetune_threads": 1, "finetune_eval_pairs": 30,
              "finetune_min_pair_count": 1, "finetune_targets_per_pair": 1, "finetune_knowledge_share": 0.5}
    values.update(overrides)
    return Settings(**values)


# ---------------------------------------------------------------------------------------------------- curation
def _counts(daily: dict[int, dict[tuple[str, str], dict[str, int]]]) -> AllCounts:
    return AllCounts(total={}, daily=daily, trends={})


def test_holdout_is_strictly_time_later_and_training_ignores_it(tmp_path):
    clusters = _clusters()
    counts = _counts({
        10: {("c0", "c1"): {"c2": 5}},
        11: {("c0", "c1"): {"c3": 1}},
        12: {("c0", "c1"): {"c4": 7}, ("c2", "c3"): {"c5": 2}},  # the held-out day only
    })
    curated = curation.curate(counts, clusters, split_day=12, settings=_settings(tmp_path, finetune_targets_per_pair=3))
    assert {(e.history, e.target) for e in curated.examples} == {(("c0", "c1"), "c2"), (("c0", "c1"), "c3")}
    held = {p.history: p.next_counts for p in curated.held_out}
    assert held == {("c0", "c1"): {"c4": 7}, ("c2", "c3"): {"c5": 2}}
    # the knowledge shown for a held-out pair is what the training period knew: c2 before c3, no c4
    pair = next(p for p in curated.held_out if p.history == ("c0", "c1"))
    assert pair.knowledge.top_next == [("c2", 5), ("c3", 1)]
    assert (curated.period.first_day, curated.period.split_day, curated.period.last_day) == (10, 12, 12)


def test_split_day_follows_the_train_fraction():
    ratings = [Rating("u", f"i{k}", 5.0, (100 + k) * DAY_S + 5) for k in range(10)]
    assert curation.split_day_of(ratings, 0.8) == 108
    assert curation.split_day_of(ratings, 0.5) == 105


def test_balancing_caps_the_dominant_target_and_keeps_it_where_it_ranks_first(tmp_path):
    clusters = _clusters()
    # c5 is the most common next cluster of every pair; each pair also has a rarer second choice
    daily = {1: {}}
    pairs = [(f"c{a}", f"c{b}") for a in range(5) for b in range(5) if a != b]
    for k, pair in enumerate(pairs):
        second = next(c for c in ("c0", "c1", "c2", "c3", "c4") if c not in pair)
        daily[1][pair] = {"c5": 50 + k, second: 3}
    settings = _settings(tmp_path, finetune_targets_per_pair=2, finetune_target_cap=1.0, finetune_count_temper=0.5)
    curated = curation.curate(_counts(daily), clusters, split_day=2, settings=settings)
    per_target: dict[str, int] = {}
    for example in curated.examples:
        per_target[example.target] = per_target.get(example.target, 0) + 1
    candidates = 2 * len(pairs)
    cap = -(-candidates // len({"c5", *(t for t in per_target)}))  # ceil(1.0 x mean per target)
    assert per_target["c5"] == cap < len(pairs)  # capped, although it is every pair's top answer
    assert curated.stats["top_target_share_after"] < curated.stats["top_target_share_before"]
    kept_c5 = sorted(e.count for e in curated.examples if e.target == "c5")
    assert kept_c5 == sorted(50 + k for k in range(len(pairs)))[-cap:]  # the most confident ones survive
    weights = {e.count: e.weight for e in curated.examples}
    assert weights[3] == pytest.approx(3 ** 0.5)  # tempered, not raw counts


def test_min_pair_count_and_targets_per_pair(tmp_path):
    clusters = _clusters()
    counts = _counts({1: {("c0", "c1"): {"c2": 4, "c3": 3, "c4": 2}, ("c2", "c3"): {"c4": 1}}})
    settings = _settings(tmp_path, finetune_targets_per_pair=2, finetune_min_pair_count=2, finetune_target_cap=10.0)
    curated = curation.curate(counts, clusters, split_day=5, settings=settings)
    assert sorted((e.history, e.target) for e in curated.examples) == [(("c0", "c1"), "c2"), (("c0", "c1"), "c3")]


def test_deduplicate_merges_identical_prompt_and_answer():
    clusters = _clusters()
    knowledge = Knowledge(top_next=[("c2", 3)], trending=["c4"])
    examples = [
        curation.Example(("c0", "c1"), "c2", knowledge, 3, 3.0),
        curation.Example(("c0", "c1"), "c2", Knowledge(top_next=[("c2", 3)], trending=["c4"]), 2, 2.0),
        curation.Example(("c0", "c1"), "c2", None, 4, 4.0),  # another prompt: kept apart
        curation.Example(("c0", "c1"), "c3", knowledge, 1, 1.0),  # another answer: kept apart
    ]
    merged, dropped = curation.deduplicate(examples, clusters, temper=1.0)
    assert dropped == 1 and len(merged) == 3
    assert {(e.knowledge is None, e.target): e.count for e in merged} == {(False, "c2"): 5, (True, "c2"): 4,
                                                                         (False, "c3"): 1}
    assert next(e for e in merged if e.count == 5).weight == 5.0


# ---------------------------------------------------------------------------------------------------- Q/K permutation
@pytest.mark.parametrize("n_head", [1, 3, 9])
def test_qk_permutation_round_trips_and_pairs_adjacent_rows(n_head):
    rng = np.random.default_rng(n_head)
    head_dim = 8
    weights = rng.standard_normal((n_head * head_dim, 24)).astype(np.float32)
    permuted = export.permute_qk(weights, n_head)
    assert not np.array_equal(permuted, weights)
    np.testing.assert_array_equal(export.unpermute_qk(permuted, n_head), weights)
    # llama.cpp pairs adjacent dimensions: row 2i of a permuted head is row i of the HF head, 2i+1 is row i + d/2
    np.testing.assert_array_equal(permuted[0], weights[0])
    np.testing.assert_array_equal(permuted[1], weights[head_dim // 2])
    np.testing.assert_array_equal(permuted[2], weights[1])


# ---------------------------------------------------------------------------------------------------- tiny model
_tiny_model, _write_tiny_base = tiny_model, write_tiny_base


def test_gguf_round_trip_through_transformers_and_llama_cpp(tmp_path):
    """Exported weights come back identical through transformers' own GGUF loader (which un-permutes q/k
    independently of our code), and llama.cpp computes the same logits as PyTorch."""
    import llama_cpp
    import torch

    from models.finetune.training import PromptTokenizer, load_base

    model = _tiny_model()
    path = _write_tiny_base(tmp_path / "tiny.gguf", model)
    loaded = load_base(path)
    original = model.state_dict()
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, original[name]), name

    tokenizer = PromptTokenizer(path)
    tokens = tokenizer.tokenize("<|im_start|>user\nI liked:\nNoir\nRomance\n<|im_end|>\n<|im_start|>assistant\n")
    tokenizer.close()
    with torch.no_grad():
        expected = model(input_ids=torch.tensor([tokens])).logits[0, -1].numpy()
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, n_threads=1, verbose=False)
    llm.eval(tokens)
    got = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),)).copy()
    llm.close()
    assert np.abs(got - expected).max() < 1e-3 * max(1.0, np.abs(expected).max())
    assert int(np.argmax(got)) == int(np.argmax(expected))


def test_export_keeps_every_architecture_key_of_the_base(tmp_path):
    """The exported GGUF's llama.* keys equal the base's, key by key and value by value -- including a rope theta
    that is not the 10000 default and keys the exporter knows nothing of -- and every other key is copied too."""
    import gguf
    import llama_cpp
    from gguf import GGUFValueType as T

    model = tiny_model(seed=3, rope_theta=100000.0)  # SmolLM2's own theta
    head_dim = model.config.hidden_size // model.config.num_attention_heads
    base = write_tiny_base(tmp_path / "base.gguf", model, extra_metadata={
        "llama.attention.key_length": (head_dim, T.UINT32), "llama.attention.value_length": (head_dim, T.UINT32)})
    # The model as training hands it over (the base was written from it losslessly, so it is what load_base gives).
    exported = export.export_model(model, base, tmp_path / "exported.gguf")

    base_reader, exported_reader = gguf.GGUFReader(str(base)), gguf.GGUFReader(str(exported))  # seconds each
    base_keys, exported_keys = (export.architecture_metadata(base_reader),
                                export.architecture_metadata(exported_reader))
    assert {"llama.rope.freq_base", "llama.attention.key_length", "llama.context_length"} <= set(base_keys)
    assert base_keys["llama.rope.freq_base"] == pytest.approx(100000.0)
    assert sorted(exported_keys) == sorted(base_keys)
    for key, value in base_keys.items():
        assert exported_keys[key] == value, key

    def fields(reader):
        return {name: field.contents() for name, field in reader.fields.items()
                if not name.startswith("GGUF.") and name != "general.file_type"}

    assert fields(exported_reader) == fields(base_reader)  # tokenizer, chat template, names: all copied
    llm = llama_cpp.Llama(model_path=str(exported), n_ctx=64, n_threads=1, verbose=False)  # and llama.cpp loads it
    llm.close()


def test_export_refuses_a_model_whose_shape_differs_from_the_base(caplog):
    from transformers import LlamaConfig

    def config(**changes):
        values = {"vocab_size": 512, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                  "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
                  "rope_parameters": {"rope_type": "default", "rope_theta": 100000.0}, **changes}
        return LlamaConfig(**values)

    base_keys = {key: value for key, (value, _) in export.llama_metadata(config()).items()}
    export._check_config_against_base(config(), base_keys, "base.gguf")
    with pytest.raises(ValueError, match="head_count_kv"):  # the header would no longer describe the tensors
        export._check_config_against_base(config(num_key_value_heads=4), base_keys, "base.gguf")
    # A hyper-parameter the config lost on the way (rope theta defaulted) is not an error: the base's is written.
    defaulted = config(rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    export._check_config_against_base(defaulted, base_keys, "base.gguf")
    assert "llama.rope.freq_base" in caplog.text


def test_shared_prefix_loss_equals_full_forward():
    import torch

    from models.finetune.training import Encoded, answer_loss

    model = _tiny_model(seed=1)
    prefix = [1, 520, 198, 4093]
    batch = [Encoded((300, 301, 302, 900, 901, 2), 3, 2.0), Encoded((400, 401, 950, 2), 2, 1.0)]
    with torch.no_grad():
        got = float(answer_loss(model, prefix, batch, pad_id=2))
    expected, total = 0.0, 0.0
    with torch.no_grad():
        for example in batch:
            ids = torch.tensor([prefix + list(example.suffix)])
            logits = model(input_ids=ids).logits[0]
            start = len(prefix) + example.answer_start
            targets = ids[0, start:]
            ce = torch.nn.functional.cross_entropy(logits[start - 1:-1], targets)
            expected += example.weight * float(ce)
            total += example.weight
    assert got == pytest.approx(expected / total, rel=1e-5)


def test_whole_cycle_on_a_tiny_model(tmp_path):
    """Curate -> train -> export -> quantize -> llama.cpp -> gates -> release, then a failing model is not released."""
    from models.finetune.cycle import run_cycle

    started = time.perf_counter()
    base = _write_tiny_base(tmp_path / "tiny-base.gguf", _tiny_model(seed=2))
    clusters, ratings = _clusters(), _ratings()
    settings = _settings(tmp_path, finetune_base_model_path=str(base), finetune_method="full",
                         finetune_learning_rate=3e-3, finetune_batch_size=8, finetune_max_epochs=60.0,
                         finetune_budget_s=240.0, finetune_quant_type="Q8_0", finetune_gate_min_hit_rate=0.6)
    result = run_cycle(settings, clusters=clusters, ratings=ratings, evaluate_base=True, served=True)

    assert result.curation["held_out_pairs"] > 0 and result.curation["examples"] > 0
    assert result.base_metrics is not None and result.base_metrics["all"]["exact_match"] < 0.5  # random init
    assert result.metrics["all"]["exact_match"] >= 0.9, result.metrics
    assert result.metrics["knowledge"]["hit_rate"] >= 0.6, result.metrics
    assert result.agreement >= 0.9  # the quantized llama.cpp model answers as the PyTorch model does
    check = result.export_check
    assert check["agreement"] == result.agreement >= check["exact_agreement"]
    assert check["prompts"] == min(settings.finetune_agreement_prompts, 2 * result.curation["eval_pairs"])
    assert result.released and not result.reasons
    assert registry.current_version(settings) == result.version
    assert registry.current_model_path(settings) == result.model_path
    assert Path(result.model_path).stat().st_size < base.stat().st_size  # Q8_0 is smaller than the F32 base
    meta = registry.get_version(settings, result.version).metadata
    assert meta["gates"]["passed"] and meta["clusters_version"] == "tiny-1"
    assert meta["export_check"] == check and meta["export_agreement"] == result.agreement
    # the relative gate: measured against what served before (the configured base), count argmax beside it
    report = meta["gate_report"]
    assert report == result.gate_report and report["serving_model"].startswith("base:")
    assert report["served_hit_rate"] >= report["serving_served_hit_rate"]
    assert "served_hit_rate_vs_serving" in [c["name"] for c in meta["gates"]["checks"]]
    assert report["count_argmax_hit_rate"] == meta["baselines"]["knowledge_top1_hit_rate"]
    assert report["held_out_pairs"] == result.curation["eval_pairs"]
    assert meta["data_period"]["split_day"] > meta["data_period"]["first_day"]
    # the temperature serving divides the released model's log-probabilities by: fitted on those held-out pairs,
    # it lowers their log-loss, and the predictor that loads the release reads it
    calibration = meta["calibration"]
    assert calibration == result.calibration and report["temperature"] == calibration["temperature"]
    assert calibration["prompts"] == report["held_out_pairs"] and calibration["transitions"] > 0
    assert calibration["log_loss"] <= calibration["log_loss_uncalibrated"]
    assert registry.calibrated_temperature(settings, Path(result.model_path)) == calibration["temperature"]

    # The same cycle with one training step: the model cannot name clusters yet, so it must not be released.
    failing = _settings(tmp_path, finetune_base_model_path=str(base), finetune_method="full",
                        finetune_learning_rate=3e-3, finetune_max_epochs=0.01, finetune_quant_type="Q8_0")
    rejected = run_cycle(failing, clusters=clusters, ratings=ratings, evaluate_base=False, served=False)
    assert not rejected.released and any(r.startswith("exact_match") for r in rejected.reasons)
    assert rejected.gate_report["serving_model"].startswith(result.version + ":")  # now the bar is the release
    assert registry.current_version(settings) == result.version  # still the good one
    stored = registry.get_version(settings, rejected.version)
    assert not stored.passed_gates and not stored.model_path.exists()
    assert stored.metadata["gates"]["reasons"] == rejected.reasons
    with pytest.raises(registry.RegistryError, match="did not pass"):
        registry.release(settings, rejected.version)
    assert time.perf_counter() - started < 300


# ---------------------------------------------------------------------------------------------------- registry
def test_registry_release_and_rollback(tmp_path):
    settings = _settings(tmp_path)
    base = settings.resolved_model_path()
    assert registry.current_model_path(settings) == base  # nothing released: the configured base
    passed = {"gates": {"passed": True, "reasons": []}}
    for index, version in enumerate(("v1", "v2")):
        model = tmp_path / f"{version}.gguf"
        model.write_bytes(b"GGUF" + bytes([index]))
        registry.register(settings, version, model, {**passed, "created_at": index})
    registry.register(settings, "v3", None, {"gates": {"passed": False, "reasons": ["hit_rate 0.01 < 0.10"]},
                                             "created_at": 3})
    registry.release(settings, "v1")
    registry.release(settings, "v2")
    assert registry.current_model_path(settings).endswith("v2/model.gguf")
    with pytest.raises(registry.RegistryError, match="hit_rate 0.01"):
        registry.release(settings, "v3")
    with pytest.raises(registry.RegistryError, match="already exists"):
        registry.register(settings, "v1", None, passed)
    assert [m.version for m in registry.list_versions(settings)] == ["v1", "v2", "v3"]
    assert registry.rollback(settings) == "v1"
    assert registry.current_model_path(settings).endswith("v1/model.gguf")
    assert registry.rollback(settings) is None
    assert registry.current_model_path(settings) == base
    with pytest.raises(registry.RegistryError):
        registry.rollback(settings)


def test_release_state_is_one_atomic_file_and_old_registries_still_read(tmp_path):
    settings = _settings(tmp_path)
    root = registry.llm_root(settings)
    root.mkdir(parents=True)
    passed = {"gates": {"passed": True, "reasons": []}}
    for version in ("v1", "v2"):
        model = tmp_path / f"{version}.gguf"
        model.write_bytes(b"GGUF" + version.encode())
        registry.register(settings, version, model, passed)
    # A registry written before released.json: a `current` pointer and a history file.
    (root / "history.json").write_bytes(b'["v1", "v2"]')
    (root / "current").write_text("v2\n")
    assert registry.current_version(settings) == "v2"
    assert registry.rollback(settings) == "v1"
    assert not (root / "current").exists() and not (root / "history.json").exists()
    assert orjson.loads((root / "released.json").read_bytes()) == {"current": "v1", "history": ["v1"]}
    registry.release(settings, "v2")
    assert orjson.loads((root / "released.json").read_bytes()) == {"current": "v2", "history": ["v1", "v2"]}
    assert not list(root.glob(".*.part"))  # no partial file left beside it


def test_register_is_all_or_nothing_and_records_the_digest(tmp_path, monkeypatch):
    from models import storage
    from models.identity import file_sha256

    settings = _settings(tmp_path)
    model = tmp_path / "candidate.gguf"
    model.write_bytes(b"GGUF" + bytes(range(200)) * 50)
    digest = file_sha256(model)

    def crash(path, data):
        raise OSError("disk full")

    monkeypatch.setattr(registry, "write_atomic", crash)
    with pytest.raises(OSError, match="disk full"):
        registry.register(settings, "v1", model, {"gates": {"passed": True}})
    assert model.is_file()  # the caller keeps its file ...
    assert not (registry.llm_root(settings) / "v1").exists()  # ... and no half version is left
    assert registry.list_versions(settings) == []
    monkeypatch.setattr(registry, "write_atomic", storage.write_atomic)

    filed = registry.register(settings, "v1", model, {"gates": {"passed": True}})
    assert filed.metadata["model_sha256"] == digest and filed.metadata["model_size"] == 4 + 200 * 50
    assert registry.get_version(settings, "v1").metadata["model_sha256"] == digest
    assert [p.name for p in registry.llm_root(settings).iterdir() if p.name.startswith(".staging")] == []
    with pytest.raises(registry.RegistryError, match="invalid"):
        registry.register(settings, "..", None, {})


def test_a_failed_cycle_removes_its_work_folder(tmp_path, monkeypatch):
    """A cycle that fails after the export wrote its GGUF leaves no work folder (nor half-written file) behind."""
    from models.finetune import cycle, quantize

    base = write_tiny_base(tmp_path / "tiny-base.gguf", tiny_model(seed=2))
    settings = _settings(tmp_path, finetune_base_model_path=str(base), finetune_method="full",
                         finetune_max_epochs=0.01)
    seen = []

    def failing_quantize(source, target, *args, **kwargs):
        seen.append(Path(source))
        assert Path(source).is_file()  # the export really was written into the work folder
        raise RuntimeError("quantizer crashed")

    monkeypatch.setattr(quantize, "quantize", failing_quantize)
    with pytest.raises(RuntimeError, match="quantizer crashed"):
        cycle.run_cycle(settings, clusters=_clusters(), ratings=_ratings(users=40), evaluate_base=False, served=False)
    assert seen and seen[0].parent.name.startswith(".work-")
    assert not seen[0].parent.exists()
    assert registry.list_versions(settings) == []


def _peaked_model(seed: int):
    """A tiny model with confident next-token distributions (scaled tied embeddings), so that two seeds disagree
    by many nats where random tiny models would be near uniform; the final norm's random weights keep it from just
    repeating the last token."""
    import torch

    model = _tiny_model(seed=seed)
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(40.0)
        generator = torch.Generator().manual_seed(seed)
        model.model.norm.weight.copy_(torch.randn(model.config.hidden_size, generator=generator))
    return model


def _log_probs(model, ids):
    import torch

    with torch.no_grad():
        return torch.log_softmax(model(input_ids=torch.tensor([list(ids)])).logits[0, -1].float(), dim=-1)


def test_divergence_gap_is_the_pytorch_models_ranking_of_the_other_token():
    from models.finetune.training import torch_divergence_gap, torch_greedy

    model, eog = _peaked_model(seed=1), [2]
    prompt = [1, 520, 198, 4093]
    reference = torch_greedy(model, prompt, eog, 3)
    assert len(reference) == 3 and torch_divergence_gap(model, prompt, reference, reference, eog) == 0.0

    first = _log_probs(model, prompt)
    runner_up = int(first.argsort(descending=True)[1])
    expected = float(first.max() - first[runner_up])
    assert torch_divergence_gap(model, prompt, reference, [runner_up, 7], eog) == pytest.approx(expected, abs=1e-4)
    # the answers share the first token and differ at the second: the gap is read after the shared token
    second = _log_probs(model, prompt + reference[:1])
    assert torch_divergence_gap(model, prompt, reference, reference[:1] + [300], eog) == pytest.approx(
        float(second.max() - second[300]), abs=1e-4)
    # the candidate stopped where the reference went on: its token there is the best end token
    assert torch_divergence_gap(model, prompt, reference, reference[:1], eog) == pytest.approx(
        float(second.max() - second[2]), abs=1e-4)


def test_export_check_passes_a_flipped_near_tie_and_catches_another_model():
    from models.finetune.training import torch_divergence_gap, torch_greedy

    near_tie = gates.ExportCheck((None, None, 0.2, 3.0), margin_nats=0.693)
    assert near_tie.exact_agreement == 0.5 and near_tie.agreement == 0.75
    assert near_tie.as_dict()["differing_gaps_nats"] == [3.0, 0.2]
    # different tokens at an exact tie agree, but they are not the same answer
    assert gates.ExportCheck((None, 0.0), margin_nats=0.693).as_dict() == {
        "prompts": 2, "agreement": 1.0, "exact_agreement": 0.5, "margin_nats": 0.693, "differing_gaps_nats": [0.0]}
    with pytest.raises(ValueError):
        gates.ExportCheck((), margin_nats=0.693)

    trained, other, eog = _peaked_model(seed=1), _peaked_model(seed=5), [2]
    prompts = [[1, 520, 198, t] for t in range(4000, 4010)]
    same = [torch_divergence_gap(trained, p, torch_greedy(trained, p, eog, 3), torch_greedy(trained, p, eog, 3), eog)
            for p in prompts]
    assert same == [0.0] * len(prompts)
    # a file that is not the trained model (an export that lost the fine-tune, say) answers with tokens the trained
    # model ranks far below its best: the check fails it, whatever the margin's slack for near-ties
    wrong = gates.ExportCheck(tuple(torch_divergence_gap(trained, p, torch_greedy(trained, p, eog, 3),
                                                         torch_greedy(other, p, eog, 3), eog) for p in prompts), 0.693)
    assert wrong.agreement <= 0.2, wrong.as_dict()


def test_gates_report_each_failing_check(tmp_path):
    settings = _settings(tmp_path, finetune_gate_exact_match=0.9, finetune_gate_min_hit_rate=0.1,
                         finetune_gate_min_agreement=0.9)
    metrics = {"all": {"exact_match": 0.5}, "knowledge": {"exact_match": 0.95, "hit_rate": 0.05}}
    result = gates.check_gates(metrics, 0.92, settings)
    assert not result.passed and result.reasons == ["hit_rate 0.050 < 0.100"]
    assert gates.check_gates({"all": {"exact_match": 0.5}, "knowledge": {"exact_match": 0.95, "hit_rate": 0.2}},
                             0.92, settings).passed  # the plain prompts, which the server never builds, do not gate
    served_prompts_wrong = {"all": {"exact_match": 0.95}, "knowledge": {"exact_match": 0.85, "hit_rate": 0.2}}
    assert gates.check_gates(served_prompts_wrong, 0.92, settings).reasons == ["exact_match 0.850 < 0.900"]


def test_the_relative_gate_refuses_a_candidate_worse_than_the_serving_model(tmp_path):
    settings = _settings(tmp_path)
    metrics = {"all": {"exact_match": 0.8}, "knowledge": {"exact_match": 0.95, "hit_rate": 0.2},
               "plain": {"exact_match": 0.65}}
    worse = gates.check_gates(metrics, 0.95, settings, served=0.14, serving_served=0.15)
    assert not worse.passed and worse.reasons == ["served_hit_rate_vs_serving 0.140 < 0.150"]
    assert gates.check_gates(metrics, 0.95, settings, served=0.15, serving_served=0.15).passed  # a tie may ship
    with pytest.raises(ValueError, match="both"):
        gates.check_gates(metrics, 0.95, settings, served=0.15)
    report = gates.gate_report(worse, pairs=150, served=0.14, serving_model="ft-a:0123", serving_served=0.15,
                               count_argmax=0.17, metrics=metrics, export_agreement=0.95)
    assert report["passed"] is False and report["count_argmax_hit_rate"] == 0.17
    assert report["serving_model"] == "ft-a:0123" and report["exact_match"] == 0.95
    assert report["exact_match_without_knowledge"] == 0.65


def test_score_counts_only_valid_novel_names(tmp_path):
    clusters = _clusters()
    pair = curation.HeldOutPair(("c0", "c1"), {"c2": 3, "c3": 1}, Knowledge())
    prompts = [gates.EvalPrompt(pair, "knowledge"), gates.EvalPrompt(pair, "plain")]
    scored = gates.score(prompts, ["Romance", "Noir"], clusters)  # Noir is in the history: not a valid answer
    assert scored["knowledge"] == {"prompts": 1, "exact_match": 1.0, "hit_rate": 0.75, "pair_hit_rate": 1.0}
    assert scored["plain"]["exact_match"] == 0.0 and scored["plain"]["hit_rate"] == 0.0
    assert scored["all"]["exact_match"] == 0.5
    assert gates.score(prompts, ["Romance ", "Cartoons"], clusters)["knowledge"]["exact_match"] == 0.0  # exact


def test_requantizing_an_already_quantized_file_needs_allow_requantize(tmp_path):
    """The packaged Q4_1 base is refused as a source unless asked for (bench.llm_encodings asks); the copy loads."""
    from models.finetune.quantize import quantize
    from models.finetune.registry import current_model_path

    base = current_model_path(Settings(data_dir=tmp_path / "data"))  # no release there: the packaged base
    with pytest.raises(RuntimeError, match="failed"):
        quantize(base, tmp_path / "refused.gguf", "Q8_0")
    assert not (tmp_path / "refused.gguf").exists() and not list(tmp_path.glob(".*.part"))
    copy = quantize(base, tmp_path / "copy.Q4_0.gguf", "Q4_0", allow_requantize=True)
    with copy.open("rb") as handle:
        assert handle.read(4) == b"GGUF" and copy.stat().st_size > 50_000_000
