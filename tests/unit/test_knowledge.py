"""The LanceDB knowledge store (models/knowledge.py): merged reads, upserts, deletes, windows, trends, search,
compaction and visibility to other instances."""

from __future__ import annotations

import multiprocessing
import random
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from models.clusters import Cluster, ClusterSet
from models.knowledge import MAX_LOST_COMPACTIONS, KnowledgeStore
from models.knowledge_embedding import HashingEmbedder, words
from models.knowledge_rows import PartitionRows, diff, partition_update, transition_rows, trend_rows
from models.counts import DAY_S, AllCounts, TransitionCounts, day_of

DAY = 1_000
T0 = DAY * DAY_S + 3_600.0  # an hour into day DAY
VERSION = "c4-test"


def counts(total: TransitionCounts, day: int = DAY, trends: dict[int, dict[str, int]] | None = None) -> AllCounts:
    """Counts whose transitions all happened on ``day``."""
    return AllCounts(total=total, daily={day: total}, trends=trends or {})


def store(path: Path, **options) -> KnowledgeStore:
    options.setdefault("refresh_s", 0.0)
    return KnowledgeStore(str(path / "lancedb"), VERSION, **options)


@pytest.fixture
def kb(tmp_path: Path) -> KnowledgeStore:
    return store(tmp_path)


# ------------------------------------------------------------------------------------------------ counts and merges
def test_partitions_are_summed(kb: KnowledgeStore) -> None:
    kb.write_partition_counts(0, counts({("A", "B"): {"C": 3, "D": 1}, ("B", "C"): {"A": 2}}), T0)
    kb.write_partition_counts(1, counts({("A", "B"): {"C": 1, "E": 4}}), T0)
    assert kb.top_next("A", "B") == [("C", 4), ("E", 4), ("D", 1)]  # tie at 4: by cluster id
    assert kb.top_next("A", "B", n=1) == [("C", 4)]
    assert kb.top_next("B", "C") == [("A", 2)]
    assert kb.top_next("X", "Y") == []


def test_a_write_replaces_the_partition_rows_and_zero_counts_disappear(kb: KnowledgeStore) -> None:
    kb.write_partition_counts(0, counts({("A", "B"): {"C": 3, "D": 1}}), T0)
    kb.write_partition_counts(1, counts({("A", "B"): {"C": 1}}), T0)
    kb.write_partition_counts(0, counts({("A", "B"): {"C": 5}}), T0)
    assert kb.top_next("A", "B") == [("C", 6)]
    kb.write_partition_counts(0, counts({("A", "B"): {"C": 5, "D": 0}}), T0)  # an explicit zero is no row either
    kb.write_partition_counts(1, AllCounts(), T0)
    assert kb.top_next("A", "B") == [("C", 5)]
    assert kb.row_counts()["transitions"] == 3  # partition 0: C in "all", "7d" and "30d"


def test_only_the_given_pairs_are_written(kb: KnowledgeStore) -> None:
    kb.write_partition_counts(0, counts({("A", "B"): {"C": 1}, ("B", "C"): {"D": 1}}), T0)
    changed = counts({("A", "B"): {"C": 2}, ("B", "C"): {"D": 9}})
    kb.write_partition_counts(0, changed, T0, pairs={("A", "B")})
    assert kb.top_next("A", "B") == [("C", 2)]
    assert kb.top_next("B", "C") == [("D", 1)]  # not announced as changed: left alone
    kb.write_partition_counts(0, counts({("A", "B"): {"C": 2}}), T0, pairs={("B", "C")})  # B, C dropped to zero
    assert kb.top_next("B", "C") == []
    assert kb.row_counts()["transitions"] == 3


def test_cluster_ids_are_quoted(kb: KnowledgeStore) -> None:
    kb.write_partition_counts(0, counts({("O'Neil", "B"): {"C'": 1}}), T0)
    kb.write_partition_counts(0, AllCounts(), T0, pairs={("O'Neil", "B")})
    kb.write_partition_counts(1, counts({("O'Neil", "B"): {"C'": 2}}), T0)
    assert kb.top_next("O'Neil", "B") == [("C'", 2)]


# ------------------------------------------------------------------------------------------------ windows
def test_windows_count_the_days_ending_with_as_of(kb: KnowledgeStore) -> None:
    daily = {DAY: {("A", "B"): {"C": 1}}, DAY - 10: {("A", "B"): {"D": 2}}, DAY - 40: {("A", "B"): {"E": 4}}}
    kb.write_partition_counts(0, AllCounts(total={("A", "B"): {"C": 1, "D": 2, "E": 4}}, daily=daily), T0)
    assert kb.top_next("A", "B") == [("E", 4), ("D", 2), ("C", 1)]
    assert kb.top_next("A", "B", window="30d") == [("D", 2), ("C", 1)]
    assert kb.top_next("A", "B", window="7d") == [("C", 1)]
    with pytest.raises(ValueError, match="not kept"):
        kb.top_next("A", "B", window="14d")
    with pytest.raises(ValueError):
        kb.top_next("A", "B", window="weekly")


def test_a_new_day_moves_every_window_even_for_pairs_not_announced(kb: KnowledgeStore) -> None:
    one = counts({("A", "B"): {"C": 1}, ("B", "C"): {"D": 1}})
    kb.write_partition_counts(0, one, T0)
    kb.write_partition_counts(0, one, T0 + 7 * DAY_S, pairs=set())  # a week later: both fell out of "7d"
    assert kb.top_next("A", "B", window="7d") == [] and kb.top_next("B", "C", window="7d") == []
    assert kb.top_next("B", "C", window="30d") == [("D", 1)]


# ------------------------------------------------------------------------------------------------ trends
def trend_counts() -> AllCounts:
    """Per 7-day window (newest first): X 9 now after 1 a window before; Y 8 now after 8 each window; Z 2 now."""
    trends: dict[int, dict[str, int]] = {DAY: {"X": 9, "Y": 8, "Z": 2}}
    for k in range(1, 5):
        trends[DAY - 7 * k] = {"Y": 8, **({"X": 1} if k == 1 else {})}
    return AllCounts(total={("A", "B"): {"X": 1, "Y": 5, "Z": 1}}, daily={DAY: {("A", "B"): {"X": 1, "Y": 5, "Z": 1}}},
                     trends=trends)


def test_trend_rows_compare_a_window_with_the_mean_of_the_previous_ones() -> None:
    rows = trend_rows(trend_counts(), T0, (7,))
    assert rows == {("X", "7d"): (9, 0.25), ("Y", "7d"): (8, 8.0), ("Z", "7d"): (2, 0.0)}


def test_trending_ranks_by_score_and_excludes_the_users_clusters(kb: KnowledgeStore) -> None:
    kb.write_partition_counts(0, trend_counts(), T0)
    kb.write_partition_counts(1, AllCounts(trends={DAY: {"Z": 1}, DAY - 7: {"W": 3}}), T0)
    # X: 10/1.25 = 8; Z: 4/1 = 4; Y: 9/9 = 1; W has no engagement in the window
    assert kb.trending() == [("X", 8.0, 9), ("Z", 4.0, 3), ("Y", 1.0, 8)]
    assert kb.trending(n=1, exclude={"X"}) == [("Z", 4.0, 3)]
    # 30 days hold all the history, so every baseline is 0 and the score is count + 1 (W and Z tie: by id)
    assert kb.trending(window="30d") == [("Y", 41.0, 40), ("X", 11.0, 10), ("W", 4.0, 3), ("Z", 4.0, 3)]


def test_trends_are_read_once_per_table_version_and_again_after_any_write(tmp_path: Path) -> None:
    kb, other = store(tmp_path), store(tmp_path)  # `other`: another process's reader, as the recommender is
    kb.write_partition_counts(0, trend_counts(), T0)
    scans: list[str] = []
    select = other._select
    other._select = lambda table, where, columns: scans.append(where) or select(table, where, columns)  # type: ignore
    first = other.trending()
    assert other.trending() == first and other.trending(exclude={"X"}) == first[1:]
    assert len(scans) == 1  # one version of the trends table: one scan
    kb.write_partition_counts(1, AllCounts(trends={DAY: {"Z": 20}}), T0)
    assert other.trending()[0] == ("Z", 23.0, 22)  # a new version is read again
    assert len(scans) == 2
    assert other.trending(window="30d")[0][0] == "Y" and len(scans) == 3  # each window on its own


def test_top_next_by_trend_prefers_trending_next_clusters(kb: KnowledgeStore) -> None:
    kb.write_partition_counts(0, trend_counts(), T0)
    assert kb.top_next("A", "B") == [("Y", 5), ("X", 1), ("Z", 1)]
    assert kb.top_next("A", "B", by="trend") == [("X", 1), ("Z", 1), ("Y", 5)]
    with pytest.raises(ValueError):
        kb.top_next("A", "B", by="recency")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ clusters
def cluster_set(version: str = VERSION) -> ClusterSet:
    clusters = [
        Cluster("c0", "Horror 90s", ("Horror", "Low-Rated", "90s"), 60),
        Cluster("c1", "Children's Animation 50s-80s", ("Children's", "Animation", "Musical", "50s-80s"), 25),
        Cluster("c2", "Film-Noir Thriller 40s-60s", ("Film-Noir", "Thriller", "Mystery", "40s-60s"), 50),
        Cluster("c3", "Popular Romance Comedy 90s", ("Popular", "Romance", "Comedy", "90s"), 56),
    ]
    return ClusterSet(version=version, item_to_cluster={}, clusters={c.id: c for c in clusters})


def test_search_finds_clusters_by_name_keyword_and_synonym(kb: KnowledgeStore) -> None:
    assert kb.search_clusters("horror") == []
    kb.upsert_clusters(cluster_set())
    assert kb.search_clusters("animation")[0][:2] == ("c1", "Children's Animation 50s-80s")
    assert kb.search_clusters("noir")[0][0] == "c2"
    assert kb.search_clusters("scary movies")[0][0] == "c0"
    assert kb.search_clusters("something funny and romantic", n=1)[0][0] == "c3"
    hits = kb.search_clusters("horror", n=4)
    assert hits[0][0] == "c0" and len(hits) == 4
    assert hits == sorted(hits, key=lambda h: -h[2]) and 0.0 < hits[0][2] <= 1.0 + 1e-6
    assert kb.search_clusters("") == []


def test_upserting_clusters_replaces_the_versions_set(tmp_path: Path) -> None:
    kb = store(tmp_path)
    kb.upsert_clusters(cluster_set())
    smaller = cluster_set()
    kb.upsert_clusters(ClusterSet(VERSION, {}, {"c0": smaller.clusters["c0"]}))
    assert [h[0] for h in kb.search_clusters("animation comedy horror", n=5)] == ["c0"]
    other = KnowledgeStore(str(tmp_path / "lancedb"), "c4-other", refresh_s=0.0)
    other.upsert_clusters(cluster_set("c4-other"))
    assert [h[0] for h in kb.search_clusters("animation", n=5)] == ["c0"]
    with pytest.raises(ValueError, match="c4-other"):
        kb.upsert_clusters(cluster_set("c4-other"))


# ------------------------------------------------------------------------------------------------ versions, processes
def test_clusters_versions_coexist(tmp_path: Path) -> None:
    old, new = store(tmp_path), KnowledgeStore(str(tmp_path / "lancedb"), "c5-next", refresh_s=0.0)
    old.write_partition_counts(0, counts({("A", "B"): {"C": 1}}), T0)
    new.write_partition_counts(0, counts({("A", "B"): {"D": 7}}), T0)
    assert old.top_next("A", "B") == [("C", 1)] and new.top_next("A", "B") == [("D", 7)]
    assert old.knowledge_version().startswith(f"{VERSION}@")
    old.delete_clusters_version()
    assert old.top_next("A", "B") == [] and new.top_next("A", "B") == [("D", 7)]


def test_deployments_sharing_a_lancedb_never_see_or_overwrite_each_others_rows(tmp_path: Path) -> None:
    """Two deployments (own topic prefix and app id) on one LanceDB URI, same clusters version, same partition:
    each one's writes, reads, search and deletes touch only its own rows."""
    from streams.settings import Settings

    uri = str(tmp_path / "shared-lancedb")
    staging = Settings(topic_prefix="staging.", app_id="explorer-staging", lancedb_uri=uri)
    production = Settings(topic_prefix="prod.", app_id="explorer-prod", lancedb_uri=uri)
    mine = KnowledgeStore.from_settings(staging, VERSION, refresh_s=0.0)
    theirs = KnowledgeStore.from_settings(production, VERSION, refresh_s=0.0)
    assert mine.deployment == staging.deployment_id() != theirs.deployment
    mine.write_partition_counts(0, counts({("A", "B"): {"C": 2}}, trends={DAY: {"C": 2}}), T0)
    theirs.write_partition_counts(0, counts({("A", "B"): {"D": 5}, ("B", "C"): {"A": 1}}, trends={DAY: {"D": 9}}),
                                  T0)  # partition 0 again: before, this replaced the other deployment's rows
    mine.upsert_clusters(cluster_set())
    assert mine.top_next("A", "B") == [("C", 2)] and theirs.top_next("A", "B") == [("D", 5)]
    assert mine.all_top_next() == {("A", "B"): [("C", 2)]}
    assert theirs.all_top_next() == {("A", "B"): [("D", 5)], ("B", "C"): [("A", 1)]}
    assert [c for c, _, _ in mine.trending()] == ["C"] and [c for c, _, _ in theirs.trending()] == ["D"]
    assert mine.search_clusters("animation", n=1) and theirs.search_clusters("animation", n=1) == []
    theirs.delete_clusters_version()
    assert mine.top_next("A", "B") == [("C", 2)] and mine.search_clusters("animation", n=1)
    assert KnowledgeStore(uri, VERSION, refresh_s=0.0).top_next("A", "B") == []  # the default deployment: empty


def test_another_instance_sees_the_writes(tmp_path: Path) -> None:
    writer = store(tmp_path)
    strict, eventual = store(tmp_path), store(tmp_path, refresh_s=1.0)  # opened before the writes, as readers are
    assert eventual.top_next("A", "B") == []
    before = strict.knowledge_version()
    writer.write_partition_counts(0, counts({("A", "B"): {"C": 2}}), T0)
    assert strict.top_next("A", "B") == [("C", 2)]
    assert strict.knowledge_version() != before
    deadline = time.monotonic() + 5.0
    while eventual.top_next("A", "B") != [("C", 2)]:
        assert time.monotonic() < deadline, "a reader with refresh_s=1 did not see the write within 5 s"
        time.sleep(0.05)
    writer.write_partition_counts(0, counts({("A", "B"): {"C": 3}}), T0)
    eventual.refresh()
    assert eventual.top_next("A", "B") == [("C", 3)]


def test_a_partition_taken_over_by_another_writer_is_rewritten_whole(tmp_path: Path) -> None:
    first, second = store(tmp_path), store(tmp_path)
    first.write_partition_counts(0, counts({("A", "B"): {"C": 1}}), T0)
    second.write_partition_counts(0, counts({("A", "B"): {"D": 2}}), T0)  # its first write: compares with the table
    assert second.top_next("A", "B") == [("D", 2)]
    first.release_partition(0)  # it got the partition back
    first.write_partition_counts(0, counts({("A", "B"): {"E": 3}}), T0, pairs=set())
    assert first.top_next("A", "B") == [("E", 3)]


def _write_many(root: str, partition: int, writes: int) -> None:
    """A worker process: its own partition, many small writes, compacting often. A failure's traceback is left in
    writer-<partition>.err, for the assertion message to name it."""
    try:
        kb = KnowledgeStore(str(Path(root) / "lancedb"), VERSION, compact_every_writes=5, compact_every_s=None)
        for i in range(writes):
            kb.write_partition_counts(partition, counts({("A", "B"): {"C": i + 1, "D": partition + 1}}), T0,
                                      pairs={("A", "B")})
    except BaseException:
        import traceback

        (Path(root) / f"writer-{partition}.err").write_text(traceback.format_exc())
        raise


def test_writer_processes_started_together_do_not_disturb_each_other(tmp_path: Path) -> None:
    spawn = multiprocessing.get_context("spawn")  # LanceDB's runtime does not survive fork
    workers = [spawn.Process(target=_write_many, args=(str(tmp_path), p, 20)) for p in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    errors = "\n".join(path.read_text() for path in sorted(tmp_path.glob("writer-*.err")))
    assert [worker.exitcode for worker in workers] == [0, 0], errors
    assert store(tmp_path).top_next("A", "B") == [("C", 40), ("D", 3)]


def test_an_opener_that_loses_the_first_commit_of_a_table_opens_the_winners(tmp_path: Path, monkeypatch) -> None:
    """Two openers of a fresh store both create each table; LanceDB fails the later commit ("Incompatible transaction
    ... Overwrite"). The loser must open the table the winner made, not fail (it stopped a worker once)."""
    import lancedb

    from models import lance

    winner = store(tmp_path)
    winner.write_partition_counts(0, counts({("A", "B"): {"C": 2}}), T0, pairs={("A", "B")})
    real = lancedb.db.LanceDBConnection.create_table
    lost: list[str] = []

    def first_commit_lost(self, name, *args, **kwargs):  # type: ignore[no-untyped-def]
        if name not in lost:  # the winner's version 1 landed first; this opener's own commit is refused once
            lost.append(name)
            raise RuntimeError(f"lance error: Incompatible transaction: Overwrite at version 2 of {name}")
        return real(self, name, *args, **kwargs)

    monkeypatch.setattr(lancedb.db.LanceDBConnection, "create_table", first_commit_lost)
    monkeypatch.setattr(lance.time, "sleep", lambda s: None)
    loser = store(tmp_path)
    assert len(lost) == 3  # transitions, trends, clusters: each refused once, then opened
    assert loser.top_next("A", "B") == [("C", 2)]


def test_creating_a_table_gives_up_on_other_errors_and_after_its_attempts() -> None:
    from models.lance import create_table

    class Db:
        def __init__(self, error: Exception) -> None:
            self.error, self.calls = error, 0

        def create_table(self, name, schema, exist_ok):  # type: ignore[no-untyped-def]
            self.calls += 1
            raise self.error

    other = Db(RuntimeError("lance error: disk full"))
    with pytest.raises(RuntimeError, match="disk full"):
        create_table(other, "t", None)
    assert other.calls == 1
    racing = Db(RuntimeError("Commit conflict for version 3"))
    with pytest.raises(RuntimeError, match="conflict"):
        create_table(racing, "t", None, attempts=3, pause_s=0)
    assert racing.calls == 3


def test_incremental_day_window_rows_equal_a_full_write_across_days(tmp_path: Path) -> None:
    """Syncs send day-window rows of the changed pairs only while the day stays the same, and every pair's when a
    new day moves the windows: after days of that, the table holds exactly what one full write would."""
    rng = random.Random(11)
    kb = store(tmp_path / "incremental", compact_every_writes=None, compact_every_s=None)
    total: TransitionCounts = {}
    all_counts = AllCounts(total=total)
    as_of = T0
    names = "ABCDEF"
    for step in range(80):
        changed = set()
        for _ in range(rng.randint(1, 4)):
            pair, c3 = (rng.choice(names), rng.choice(names)), rng.choice(names)
            day = day_of(as_of) - rng.choice((0, 0, 0, 1))  # some late events land in yesterday's bucket
            for target in (total, all_counts.daily.setdefault(day, {})):
                row = target.setdefault(pair, {})
                row[c3] = row.get(c3, 0) + 1
            trend = all_counts.trends.setdefault(day, {})
            trend[c3] = trend.get(c3, 0) + 1
            changed.add(pair)
        if rng.random() < 0.2:
            as_of += DAY_S  # windows move: pairs nobody touched today lose their oldest day
        if step % 2:
            kb.write_partition_counts(0, all_counts, as_of, pairs=changed)
        else:
            kb.write_many([kb.prepare(0, all_counts, as_of, changed)])
    assert day_of(as_of) - day_of(T0) >= 10  # long enough for rows to fall out of the 7-day window
    reference = store(tmp_path / "full")
    reference.write_partition_counts(0, all_counts, as_of)
    for window in ("all", "7d", "30d"):
        assert kb.all_top_next(n=10, window=window) == reference.all_top_next(n=10, window=window), window
    assert kb.trending(n=10, window="7d") == reference.trending(n=10, window="7d")


def test_a_sync_within_one_day_computes_window_rows_of_the_changed_pairs_only(tmp_path: Path) -> None:
    kb = store(tmp_path)
    many = {(f"A{i}", "B"): {"C": 1} for i in range(50)}
    kb.write_partition_counts(0, counts(many), T0)
    many[("A0", "B")] = {"C": 2}
    update = kb.prepare(0, counts(many), T0 + 60, pairs={("A0", "B")})
    assert update.window_pairs == {("A0", "B")}
    assert update.window_rows == {("A0", "B", "C", "7d"): 2, ("A0", "B", "C", "30d"): 2}
    next_day = kb.prepare(0, counts(many), T0 + DAY_S, pairs={("A0", "B")})
    assert next_day.window_pairs is None and len(next_day.window_rows) == 2 * 50  # the windows moved: every pair


# ------------------------------------------------------------------------------------------------ compaction
def test_fragments_stay_bounded_with_auto_compaction(tmp_path: Path) -> None:
    kb = store(tmp_path, compact_every_writes=20, compact_every_s=None)
    for i in range(200):
        trends = {DAY: {"C": i // 10 + 1}}  # trends change less often: then only the transitions table is written
        kb.write_partition_counts(i % 2, counts({("A", "B"): {"C": i + 1}}, trends=trends), T0, pairs={("A", "B")})
        if i % 5 == 4:
            assert max(kb.fragment_counts().values()) <= 21
    assert kb.top_next("A", "B") == [("C", 199 + 200)]
    kb.compact()
    assert kb.fragment_counts() == {"transitions": 1, "trends": 1, "clusters": 0}


def test_compaction_also_runs_on_a_timer(tmp_path: Path) -> None:
    now = [0.0]
    kb = store(tmp_path, compact_every_writes=None, compact_every_s=10.0, clock=lambda: now[0])
    total: TransitionCounts = {}
    for i in range(5):
        total[(f"A{i}", "B")] = {"C": i + 1}
        kb.write_partition_counts(0, counts(total), T0)
    assert kb.fragment_counts()["transitions"] == 5
    now[0] = 10.0
    kb.write_partition_counts(0, counts(total), T0)
    assert kb.fragment_counts()["transitions"] == 1
    assert kb.top_next("A4", "B") == [("C", 5)]


def test_a_write_never_waits_for_a_background_compaction(tmp_path: Path) -> None:
    kb = store(tmp_path, compact_every_writes=3, compact_every_s=None, compact_in_background=True)
    release, started = threading.Event(), threading.Event()
    real_optimize = kb._optimize

    def slow_in_background(tables):  # type: ignore[no-untyped-def]
        if threading.current_thread().name == "knowledge-compactor":
            started.set()
            assert release.wait(30), "the test never released the compaction"
        return real_optimize(tables)

    kb._optimize = slow_in_background  # type: ignore[method-assign]
    total: TransitionCounts = {}
    for i in range(12):  # the 3rd write starts a compaction that blocks until released; 9 more writes go through
        total[(f"A{i}", "B")] = {"C": i + 1}  # a new row each write: a new fragment each write
        kb.write_partition_counts(0, counts(total), T0, pairs={(f"A{i}", "B")})
        assert kb.top_next(f"A{i}", "B") == [("C", i + 1)]
    assert started.is_set() and kb.compactions == {"done": 0, "lost": 0, "inline": 0}
    assert kb.fragment_counts()["transitions"] >= 10  # nothing compacted meanwhile
    release.set()
    kb.wait_for_compaction(30)
    assert kb.compactions["done"] == 1
    assert kb.fragment_counts()["transitions"] <= 12 - 3 + 1  # what was there when it started became one fragment
    assert [kb.top_next(f"A{i}", "B") for i in range(12)] == [[("C", i + 1)] for i in range(12)]


def test_background_compaction_keeps_up_with_busy_writes(tmp_path: Path) -> None:
    kb = store(tmp_path, compact_every_writes=10, compact_every_s=None, compact_in_background=True)
    most = 0
    for i in range(150):
        kb.write_partition_counts(i % 3, counts({("A", "B"): {"C": i + 1}, (f"X{i}", "B"): {"C": 1}}), T0,
                                  pairs={("A", "B"), (f"X{i}", "B")})
        most = max(most, kb.fragment_counts()["transitions"])
    kb.wait_for_compaction(60)
    assert kb.compactions["done"] + kb.compactions["lost"] + kb.compactions["inline"] >= 5
    assert most <= 60, f"fragments grew to {most}: compaction fell behind"
    assert kb.top_next("A", "B") == [("C", 148 + 149 + 150)]  # each partition's last count, summed
    assert kb.top_next("X149", "B") == [("C", 1)]


def test_compactions_lost_in_a_row_fall_back_to_the_writer_thread(tmp_path: Path) -> None:
    kb = store(tmp_path, compact_every_writes=2, compact_every_s=None, compact_in_background=True)
    real_optimize = kb._optimize
    kb._optimize = lambda tables: (  # type: ignore[method-assign]
        True if threading.current_thread().name == "knowledge-compactor" else real_optimize(tables))
    for i in range(2 * (MAX_LOST_COMPACTIONS + 1)):
        kb.write_partition_counts(0, counts({("A", "B"): {"C": i + 1}}), T0, pairs={("A", "B")})
        kb.wait_for_compaction(30)  # let each background attempt finish (and lose) before the next write
    assert kb.compactions == {"done": 0, "lost": MAX_LOST_COMPACTIONS, "inline": 1}
    assert kb.fragment_counts()["transitions"] == 1  # the writer's own compaction cannot lose to its writes
    assert kb.top_next("A", "B") == [("C", 2 * (MAX_LOST_COMPACTIONS + 1))]


# ------------------------------------------------------------------------------------------------ pure parts
def test_transition_rows_and_diffs() -> None:
    all_counts = counts({("A", "B"): {"C": 2, "D": 0}, ("B", "C"): {"A": 1}})
    rows = transition_rows(all_counts, T0, (7,), pairs={("A", "B")})
    assert rows == {("A", "B", "C", "all"): 2, ("A", "B", "C", "7d"): 2}
    update = partition_update(0, all_counts, T0, (7,), pairs={("A", "B")})
    assert update.all_rows == {("A", "B", "C", "all"): 2}  # all-time rows: the changed pairs only
    assert update.window_rows == {("A", "B", "C", "7d"): 2, ("B", "C", "A", "7d"): 1}  # windows: whole
    written = PartitionRows.of(update, 0.0)
    changed, gone = diff(written.all_rows({("A", "B")}), {("A", "B", "D", "all"): 3})
    assert changed == {("A", "B", "D", "all"): 3} and gone == [("A", "B", "C", "all")]
    written.replace({("A", "B")}, changed)
    assert written.all_rows(None) == changed


def test_a_week_later_only_window_rows_change_and_all_time_rows_are_not_recomputed() -> None:
    one = counts({("A", "B"): {"C": 1}})
    update = partition_update(0, one, T0 + 7 * DAY_S, (7,), pairs=set())
    assert update.all_rows == {} and update.window_rows == {}  # fell out of "7d"; "all" untouched (not in scope)


CLUSTERS = ("A", "B", "C", "D")
step_changes = st.lists(st.tuples(st.sampled_from(CLUSTERS), st.sampled_from(CLUSTERS), st.sampled_from(CLUSTERS),
                                  st.integers(-40, 2), st.integers(-1, 3)), max_size=6)  # c1, c2, c3, day offset, n


@hsettings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(st.tuples(step_changes, st.sampled_from([0, 0, 1, 2, 6, 7, 29, 31, 400])), min_size=1,
                      max_size=8))
def test_incremental_updates_across_day_moves_leave_exactly_the_rows_of_a_full_recompute(steps: list) -> None:
    # Each sync sends the changed pairs' rows (every pair's day-window rows when the windows moved to a new day); what
    # the writer then holds must be every row a full rebuild gives, late events on past days included.
    windows = (7, 30)
    state = AllCounts()
    as_of = T0
    written = PartitionRows.of(partition_update(0, state, as_of, windows), 0.0)
    for changes, days_later in steps:
        as_of += days_later * DAY_S
        changed = set()
        for c1, c2, c3, day_offset, n in changes:
            day = day_of(as_of) + day_offset
            for bucket in (state.total, state.daily.setdefault(day, {})):
                row = bucket.setdefault((c1, c2), {})
                row[c3] = row.get(c3, 0) + n
            changed.add((c1, c2))
        update = partition_update(0, state, as_of, windows, pairs=changed, last_day=written.day)
        written.record(update)
        full = partition_update(0, state, as_of, windows)
        assert written.window_rows(None) == full.window_rows
        assert written.all_rows(None) == full.all_rows
        if days_later == 0:  # the windows did not move: only the changed pairs were recomputed
            assert update.window_pairs == frozenset(changed)


def test_the_embedding_is_deterministic_and_normalised() -> None:
    embedder = HashingEmbedder()
    vectors = embedder.encode(["Sci-Fi Action 90s", "Sci-Fi Action 90s", ""])
    assert vectors.shape == (3, 256) and vectors.dtype == np.float32
    assert np.array_equal(vectors[0], vectors[1]) and abs(float(np.linalg.norm(vectors[0])) - 1.0) < 1e-6
    assert not vectors[2].any()
    assert words("Children's Sci-Fi")[:4] == ["children", "sci", "fi", "scifi"]
    assert "horror" in words("scary")


def test_all_top_next_equals_top_next_of_every_pair(kb: KnowledgeStore) -> None:
    kb.write_partition_counts(0, counts({("A", "B"): {"C": 3, "D": 1}, ("B", "C"): {"A": 2, "D": 0}}), T0)
    kb.write_partition_counts(1, counts({("A", "B"): {"C": 1, "E": 4, "F": 1}}), T0)
    everything = kb.all_top_next(n=2)
    assert everything == {pair: kb.top_next(*pair, n=2) for pair in [("A", "B"), ("B", "C")]}
    assert everything[("A", "B")] == [("C", 4), ("E", 4)]


def test_write_many_equals_writing_each_partition_and_commits_once_per_table(tmp_path: Path) -> None:
    one_by_one, together = store(tmp_path / "a"), store(tmp_path / "b")
    trends = {DAY: {"A": 3, "B": 1}}
    first = {p: counts({("A", "B"): {"C": p + 1, "D": 1}, ("B", "C"): {"A": 2}}, trends=trends) for p in range(4)}
    later = {p: counts({("A", "B"): {"C": p + 5}, ("B", "C"): {"A": 2}}, trends={DAY: {"A": 4}}) for p in range(4)}
    for kb in (one_by_one, together):  # the first (full) writes
        for p, c in first.items():
            kb.write_partition_counts(p, c, T0)
    versions = {name: kb._transitions.version for name, kb in (("t", together),)}
    trend_version = together._trends.version
    for p, c in later.items():  # D dropped to zero everywhere, a count changed, a trend gone
        one_by_one.write_partition_counts(p, c, T0, pairs={("A", "B")})
    together.write_many([together.prepare(p, c, T0, {("A", "B")}) for p, c in later.items()])
    for a, b in (("A", "B"), ("B", "C")):
        assert together.top_next(a, b, n=10) == one_by_one.top_next(a, b, n=10)
    assert together.top_next("A", "B", n=10) == [("C", 5 + 6 + 7 + 8)]
    assert together.row_counts() == one_by_one.row_counts()
    assert together.trending(n=10) == one_by_one.trending(n=10)
    assert together._transitions.version == versions["t"] + 1 and together._trends.version == trend_version + 1
