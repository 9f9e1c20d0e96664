"""The bulk pair-table build (models/pair_bulk.py): chunking by first cluster, and the same rows from one process
as from several (each worker process loads its own copy of the packaged SmolLM2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.clusters import Cluster, ClusterSet
from models.knowledge import KnowledgeStore
from models.llm import NovelClusterPredictor
from models.pair_bulk import build, chunks_by_first_cluster
from models.pair_table import PairTable
from models.counts import DAY_S, AllCounts
from streams.settings import Settings

NAMES = {"c1": "Thriller 90s", "c2": "Popular Drama 80s-90s", "c3": "Children's Animation 50s-80s",
         "c4": "Film-Noir Thriller 40s-60s"}
CLUSTERS = ClusterSet(version="c4-bulk", item_to_cluster={},
                      clusters={cid: Cluster(id=cid, name=name, keywords=(), size=10) for cid, name in NAMES.items()})


def test_chunks_share_their_first_cluster_and_keep_the_busiest_first() -> None:
    pairs = [("a", "b"), ("c", "a"), ("a", "c"), ("b", "a"), ("c", "b"), ("a", "d")]
    assert chunks_by_first_cluster(pairs, size=13) == [[("a", "b"), ("a", "c"), ("a", "d")],
                                                       [("c", "a"), ("c", "b")], [("b", "a")]]
    assert chunks_by_first_cluster(pairs, size=2) == [[("a", "b"), ("a", "c")], [("a", "d")],
                                                      [("c", "a"), ("c", "b")], [("b", "a")]]
    assert chunks_by_first_cluster([], size=2) == []


def _answers(table: PairTable) -> dict[tuple[str, str], tuple[str, tuple[str, ...]]]:
    (rows,) = table.load().values()  # one model version
    return {pair: (row.novel, row.fingerprint) for pair, row in rows.items()}


def test_processes_store_the_answers_one_process_stores(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    store = KnowledgeStore(str(tmp_path / "lancedb"), CLUSTERS.version, refresh_s=0.0)
    day = 1_000
    total = {("c1", "c2"): {"c3": 5, "c4": 2}, ("c2", "c1"): {"c4": 3}, ("c3", "c4"): {"c1": 1, "c2": 1}}
    store.write_partition_counts(0, AllCounts(total=total, daily={day: total}, trends={}), day * DAY_S + 60.0)
    predictor = NovelClusterPredictor(settings, CLUSTERS)
    try:
        alone = PairTable(str(tmp_path / "alone"), CLUSTERS.version, refresh_s=0.0)
        one = build(predictor, store, alone, CLUSTERS)
        shared = PairTable(str(tmp_path / "shared"), CLUSTERS.version, refresh_s=0.0)
        progress: list[int] = []
        two = build(None, store, shared, CLUSTERS, on_progress=progress.append, processes=2, settings=settings,
                    model_path=predictor.model_path)
    finally:
        predictor.close()
    assert one.pairs == two.pairs == 12 and one.with_knowledge == two.with_knowledge == 3
    assert two.processes == 2 and sum(progress) == 12
    answers = _answers(alone)
    assert len(answers) == 12 and answers == _answers(shared)
    assert all(novel in NAMES and novel not in pair for pair, (novel, _) in answers.items())
    assert answers[("c1", "c2")][1] == ("c3", "c4")  # the rows carry the knowledge they were inferred from


def test_a_worker_that_cannot_load_its_model_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a gguf file" * 100)
    store = KnowledgeStore(str(tmp_path / "lancedb"), CLUSTERS.version, refresh_s=0.0)
    table = PairTable(str(tmp_path / "pairs"), CLUSTERS.version, refresh_s=0.0)
    with pytest.raises(RuntimeError, match="worker process died"):
        build(None, store, table, CLUSTERS, processes=2, settings=Settings(data_dir=tmp_path), model_path=str(bad))
    assert table.count() == 0
