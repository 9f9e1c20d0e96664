"""The knowledge store: transition and trend counts plus searchable clusters in LanceDB, for retrieval (RAG).

Writers: every worker process hands :meth:`KnowledgeStore.write_partition_counts` the counts of the Kafka partitions it
owns, about once a second. A partition has exactly one writer at a time and rows carry ``partition``, so writers never
touch each other's rows; readers (recommender, CLI) sum over partitions.

Deployments: every table belongs to one deployment (``Settings.deployment_id()``: topic prefix and app id) and is
named ``<deployment>__<table>``, so deployments sharing a LanceDB URI (staging and production on one bucket, two
topic prefixes on one machine) never read or overwrite each other's rows -- a reader opens only its own
deployment's tables. Per-deployment tables rather than a ``deployment`` key column: no reader or writer filter can
forget it, the row keys and the write path stay as they are, compaction and commits of one deployment never race
another's, and a deployment is dropped by dropping its tables.

Tables (every row tagged with ``clusters_version``, so a backfill can fill a new version while the old one serves):

* ``clusters``: id, name, keywords, size, clusters_version, vector (a :mod:`models.knowledge_embedding` embedding of
  "name. keywords", cosine search);
* ``transitions``: partition, c1, c2, c3, window ("all" or "<N>d"), count, clusters_version, updated_at;
* ``trends``: partition, cluster, window ("<N>d"), count, baseline, clusters_version, updated_at
  (see :mod:`models.knowledge_rows` for the windows and the trend baseline).

Writes are micro-batched: at most one ``merge_insert`` per table per call, keyed on the row identity. The first write
of a partition in a process (and one every ``full_write_every_s``) sends all its rows, rewrites only those whose
values changed and deletes the partition's rows missing from them (count dropped to 0). Later writes send only the
rows that differ from what this process last wrote there (a partition has one writer), with a delete scope naming
exactly the rows that vanished. LanceDB adds a fragment and a version per write, so every ``compact_every_writes``
writes or ``compact_every_s`` seconds the store runs ``optimize``: compaction, the ``c1`` index brought up to date,
and removal of versions older than ``cleanup_older_than_s``. With ``compact_in_background`` (the worker's setting)
that runs on a thread and connection of its own, so writes (freshness) never wait behind a compaction: LanceDB
resolves or retries a merge that meets a concurrent compaction, and a compaction that loses the race to a merge is
tried again at the next round -- after ``MAX_LOST_COMPACTIONS`` losses in a row, on the writer's thread, which
cannot lose to its own writes, so fragments stay bounded however busy the writes are.

Freshness: the connection re-checks a table's latest version on a read at most every ``refresh_s`` seconds
(LanceDB's ``read_consistency_interval``); :meth:`KnowledgeStore.refresh` forces it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal

import lancedb
import pyarrow as pa

from models.knowledge_embedding import Embedder, HashingEmbedder
from models.lance import create_table, deployment_table, ensure_btree, lost_race, sql_str
from models.knowledge_rows import (
    ALL,
    TREND_HISTORY,
    PartitionRows,
    PartitionUpdate,
    RowKey,
    Trend,
    TrendKey,
    diff,
    partition_update,
    trend_score,
    window_days_of,
    window_name,
)
from models.counts import AllCounts, Pair

from streams.settings import DEFAULT_DEPLOYMENT

if TYPE_CHECKING:
    from models.clusters import ClusterSet
    from streams.settings import Settings

log = logging.getLogger(__name__)

CLUSTERS, TRANSITIONS, TRENDS = "clusters", "transitions", "trends"
TRANSITION_KEY = ["clusters_version", "partition", "c1", "c2", "c3", "window"]
TREND_KEY = ["clusters_version", "partition", "cluster", "window"]
CLUSTER_KEY = ["clusters_version", "id"]

TRANSITIONS_SCHEMA = pa.schema([
    ("partition", pa.int32()), ("c1", pa.string()), ("c2", pa.string()), ("c3", pa.string()),
    ("window", pa.string()), ("count", pa.int64()), ("clusters_version", pa.string()), ("updated_at", pa.float64()),
])
TRENDS_SCHEMA = pa.schema([
    ("partition", pa.int32()), ("cluster", pa.string()), ("window", pa.string()), ("count", pa.int64()),
    ("baseline", pa.float64()), ("clusters_version", pa.string()), ("updated_at", pa.float64()),
])

By = Literal["count", "trend"]
# Background compactions lost to concurrent merges in a row before one runs on the writer's thread instead.
MAX_LOST_COMPACTIONS = 3


def clusters_schema(dim: int) -> pa.Schema:
    return pa.schema([
        ("id", pa.string()), ("name", pa.string()), ("keywords", pa.list_(pa.string())), ("size", pa.int64()),
        ("clusters_version", pa.string()), ("vector", pa.list_(pa.float32(), dim)),
    ])


def transitions_filter(keys: Iterable[RowKey]) -> str:
    """Exactly these rows, grouped by (c1, c2, window) to keep the expression short; "" for none."""
    groups: dict[tuple[str, str, str], list[str]] = {}
    for c1, c2, c3, window in sorted(keys):
        groups.setdefault((c1, c2, window), []).append(sql_str(c3))
    return " OR ".join(f"(c1 = {sql_str(c1)} AND c2 = {sql_str(c2)} AND `window` = {sql_str(window)} "
                       f"AND c3 IN ({', '.join(c3s)}))" for (c1, c2, window), c3s in groups.items())


def trends_filter(keys: Iterable[TrendKey]) -> str:
    """Exactly these rows; "" for none."""
    groups: dict[str, list[str]] = {}
    for cluster, window in sorted(keys):
        groups.setdefault(window, []).append(sql_str(cluster))
    return " OR ".join(f"(`window` = {sql_str(window)} AND cluster IN ({', '.join(cs)}))"
                       for window, cs in groups.items())


def cluster_text(name: str, keywords: Sequence[str]) -> str:
    return f"{name}. {', '.join(keywords)}"


class KnowledgeStore:
    """Transition/trend counts and clusters of one ``clusters_version`` of one ``deployment`` in the LanceDB at
    ``uri`` (``from_settings`` names the deployment; the default is the default settings' one)."""

    def __init__(
        self,
        uri: str,
        clusters_version: str,
        *,
        window_days: Sequence[int] = (7, 30),
        trend_history: int = TREND_HISTORY,
        refresh_s: float = 1.0,
        compact_every_writes: int | None = 20,
        compact_every_s: float | None = 20.0,
        cleanup_older_than_s: float = 60.0,
        compact_in_background: bool = False,
        full_write_every_s: float = 300.0,
        embedder: Embedder | None = None,
        storage_options: dict[str, str] | None = None,
        clock: Callable[[], float] = time.time,
        deployment: str = DEFAULT_DEPLOYMENT,
    ) -> None:
        if not window_days or min(window_days) < 1:
            raise ValueError(f"window_days must be whole days >= 1, got {window_days!r}")
        self.clusters_version = clusters_version
        self.deployment = deployment
        self.window_days = tuple(window_days)
        self.trend_history = trend_history
        self.embedder: Embedder = embedder or HashingEmbedder()
        self.compact_every_writes = compact_every_writes
        self.compact_every_s = compact_every_s
        self.cleanup_older_than = timedelta(seconds=cleanup_older_than_s)
        self.full_write_every_s = full_write_every_s
        self._clock = clock
        self._uri, self._storage_options = uri, storage_options
        self._db = lancedb.connect(uri, read_consistency_interval=timedelta(seconds=refresh_s),
                                   storage_options=storage_options)
        self._transitions = create_table(self._db, deployment_table(deployment, TRANSITIONS), TRANSITIONS_SCHEMA)
        ensure_btree(self._transitions, "c1")
        self._trends = create_table(self._db, deployment_table(deployment, TRENDS), TRENDS_SCHEMA)
        self._clusters = self._open_clusters()
        self._version_filter = f"clusters_version = {sql_str(clusters_version)}"
        # window -> (trends table version, totals): every answer without a pair-table hit reads the trends, a scan of
        # ~8 ms that a request flood of new users repeated per request (bench.request_flood); a version is immutable
        self._trend_memo: dict[str, tuple[int, dict[str, tuple[int, float]]]] = {}
        self._written: dict[int, PartitionRows] = {}
        self._writes_since_compact = 0
        self._last_compact = clock()
        self.compact_in_background = compact_in_background
        self._compaction: threading.Thread | None = None
        self._compactor_tables: dict[str, Any] | None = None
        self.compactions = {"done": 0, "lost": 0, "inline": 0}
        self._lost_in_a_row = 0

    @classmethod
    def from_settings(cls, settings: Settings, clusters_version: str, **options: Any) -> KnowledgeStore:
        options.setdefault("compact_in_background", settings.knowledge_compact_in_background)
        return cls(settings.resolved_lancedb_uri(), clusters_version, window_days=settings.window_days,
                   deployment=settings.deployment_id(), **options)

    def _open_clusters(self) -> Any:
        table = create_table(self._db, deployment_table(self.deployment, CLUSTERS), clusters_schema(self.embedder.dim))
        vector_type = table.schema.field("vector").type
        if vector_type != pa.list_(pa.float32(), self.embedder.dim):
            raise ValueError(f"the {CLUSTERS} table holds vectors of type {vector_type}, but the embedder "
                             f"{self.embedder.name} makes {self.embedder.dim} dimensions: drop the table to re-embed")
        return table

    # ---------------------------------------------------------------------------------------------------- writes
    def write_partition_counts(self, partition: int, counts: AllCounts, as_of: float,
                               pairs: Collection[Pair] | None = None) -> None:
        """Make the store hold ``counts``, the partition's complete counts, with windows ending at event time ``as_of``.

        ``pairs``: the only pairs whose counts changed since the last call (a hint: only their all-time rows are
        compared). The same as :meth:`write` of :meth:`prepare`, for callers that own the counts outright.
        """
        self.write(self.prepare(partition, counts, as_of, pairs))

    def prepare(self, partition: int, counts: AllCounts, as_of: float,
                pairs: Collection[Pair] | None = None) -> PartitionUpdate:
        """The rows a write of ``counts`` needs, computed now (where the counts may not change meanwhile); every
        row when this process has not written the partition yet, or not for ``full_write_every_s``."""
        written = self._written.get(partition)
        full = written is None or self._clock() - written.synced_at >= self.full_write_every_s
        return partition_update(partition, counts, as_of, self.window_days, self.trend_history,
                                None if full else pairs, last_day=None if full else written.day)

    def write(self, update: PartitionUpdate) -> None:
        """Write a prepared update (any thread; one writer per partition). A full update compares every row with
        the table itself and deletes the partition's rows it does not hold; later ones send only the rows that
        differ from what this process wrote before, which assumes nobody else writes the partition meanwhile (call
        :meth:`release_partition` when it is handed to another worker)."""
        now = self._clock()
        written = self._written.get(update.partition)
        if written is None or update.pairs is None:
            self._write_all(update)
            self._written[update.partition] = PartitionRows.of(update, now)
        else:
            self._write_changes(update, written)
        self._writes_since_compact += 1
        self._maybe_compact()

    def write_many(self, updates: Collection[PartitionUpdate]) -> None:
        """Write several partitions' prepared updates (one writer per partition, as :meth:`write`) with ONE merge per
        table for all the incremental ones: a LanceDB commit costs about the same whatever its size, so a round that
        syncs 8 partitions in 2 commits instead of 16 keeps retrieval fresh under load. Full updates are written one
        by one (they happen once per partition and `full_write_every_s`). What was written is remembered only after
        every merge succeeded, so a failed round is re-sent whole by the next."""
        incremental = []
        for update in updates:
            if update.pairs is None or update.partition not in self._written:
                self.write(update)
            else:
                incremental.append(update)
        if not incremental:
            return
        now = self._clock()
        transitions, transitions_gone, trends, trends_gone = [], [], [], []
        for update in incremental:
            written = self._written[update.partition]
            changed, gone = self._transition_diff(written, update)
            if changed:
                transitions.append(self._transition_data(update.partition, changed, now))
            if gone:
                transitions_gone.append(self._gone_filter(update.partition, transitions_filter(gone)))
            changed_trends, gone_trends = diff(written.trends, update.trends)
            if changed_trends:
                trends.append(self._trend_data(update.partition, changed_trends, now))
            if gone_trends:
                trends_gone.append(self._gone_filter(update.partition, trends_filter(gone_trends)))
        either = lambda filters: " OR ".join(f"({f})" for f in filters) or None  # noqa: E731
        if transitions or transitions_gone:
            data = pa.concat_tables(transitions) if transitions else TRANSITIONS_SCHEMA.empty_table()
            self._merge(self._transitions, TRANSITION_KEY, data, delete_missing=either(transitions_gone))
        if trends or trends_gone:
            data = pa.concat_tables(trends) if trends else TRENDS_SCHEMA.empty_table()
            self._merge(self._trends, TREND_KEY, data, delete_missing=either(trends_gone))
        for update in incremental:
            self._written[update.partition].record(update)
        self._writes_since_compact += 1
        self._maybe_compact()

    def release_partition(self, partition: int) -> None:
        """Forget what this process wrote for ``partition``: its next write compares against the table again."""
        self._written.pop(partition, None)

    def _write_all(self, update: PartitionUpdate) -> None:
        """Upsert every row, rewriting only changed ones, and delete the partition's rows missing from ``update``."""
        now = self._clock()
        scope = self._partition_filter(update.partition)
        transitions = {**update.all_rows, **update.window_rows}
        self._merge(self._transitions, TRANSITION_KEY, self._transition_data(update.partition, transitions, now),
                    changed="target.`count` != source.`count`", delete_missing=scope)
        self._merge(self._trends, TREND_KEY, self._trend_data(update.partition, update.trends, now),
                    changed="target.`count` != source.`count` OR target.baseline != source.baseline",
                    delete_missing=scope)

    def _write_changes(self, update: PartitionUpdate, written: PartitionRows) -> None:
        """Send what differs from ``written``: all-time rows of the changed pairs, and every day-window row."""
        now = self._clock()
        partition = update.partition
        changed, gone = self._transition_diff(written, update)
        if changed or gone:
            self._merge(self._transitions, TRANSITION_KEY, self._transition_data(partition, changed, now),
                        delete_missing=self._gone_filter(partition, transitions_filter(gone)))
        changed_trends, gone_trends = diff(written.trends, update.trends)
        if changed_trends or gone_trends:
            self._merge(self._trends, TREND_KEY, self._trend_data(partition, changed_trends, now),
                        delete_missing=self._gone_filter(partition, trends_filter(gone_trends)))
        written.record(update)

    @staticmethod
    def _transition_diff(written: PartitionRows, update: PartitionUpdate) -> tuple[dict[RowKey, int], list[RowKey]]:
        """Rows to upsert and rows gone: all-time rows of the update's pairs, day-window rows of its window pairs
        (every pair's when the window moved to a new day)."""
        changed, gone = diff(written.all_rows(update.pairs or frozenset()), update.all_rows)
        changed_windows, gone_windows = diff(written.window_rows(update.window_pairs), update.window_rows)
        changed.update(changed_windows)
        gone.extend(gone_windows)
        return changed, gone

    def upsert_clusters(self, cluster_set: ClusterSet) -> None:
        """Store (and embed) the clusters of this store's version; clusters no longer in the set are removed."""
        if cluster_set.version != self.clusters_version:
            raise ValueError(f"clusters {cluster_set.version} given to the store of version {self.clusters_version}")
        clusters = sorted(cluster_set.clusters.values(), key=lambda c: c.id)
        vectors = self.embedder.encode([cluster_text(c.name, c.keywords) for c in clusters])
        data = pa.table({
            "id": [c.id for c in clusters], "name": [c.name for c in clusters],
            "keywords": [list(c.keywords) for c in clusters], "size": [c.size for c in clusters],
            "clusters_version": [self.clusters_version] * len(clusters),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()),
                                                        self.embedder.dim),
        }, schema=clusters_schema(self.embedder.dim))
        self._merge(self._clusters, CLUSTER_KEY, data, delete_missing=self._version_filter)

    def delete_clusters_version(self) -> None:
        """Remove every row of this store's clusters version (after a newer version took over)."""
        for table in self._tables().values():
            table.delete(self._version_filter)
        self._written.clear()

    def _partition_filter(self, partition: int) -> str:
        return f"{self._version_filter} AND `partition` = {int(partition)}"

    def _gone_filter(self, partition: int, rows_filter: str) -> str | None:
        return f"{self._partition_filter(partition)} AND ({rows_filter})" if rows_filter else None

    @staticmethod
    def _merge(table: Any, key: list[str], data: pa.Table, *, changed: str | None = None,
               delete_missing: str | None = None) -> None:
        """One merge_insert: upsert ``data`` (matched rows only where ``changed``), and delete the target rows that
        match ``delete_missing`` but not ``data``."""
        merge = table.merge_insert(key).when_matched_update_all(where=changed).when_not_matched_insert_all()
        if delete_missing:
            merge = merge.when_not_matched_by_source_delete(delete_missing)
        merge.execute(data)

    def _transition_data(self, partition: int, rows: Mapping[RowKey, int], now: float) -> pa.Table:
        keys = list(rows)
        return pa.table({
            "partition": [partition] * len(keys), "c1": [k[0] for k in keys], "c2": [k[1] for k in keys],
            "c3": [k[2] for k in keys], "window": [k[3] for k in keys], "count": list(rows.values()),
            "clusters_version": [self.clusters_version] * len(keys), "updated_at": [now] * len(keys),
        }, schema=TRANSITIONS_SCHEMA)

    def _trend_data(self, partition: int, rows: Mapping[TrendKey, Trend], now: float) -> pa.Table:
        keys, values = list(rows), list(rows.values())
        return pa.table({
            "partition": [partition] * len(keys), "cluster": [k[0] for k in keys], "window": [k[1] for k in keys],
            "count": [v[0] for v in values], "baseline": [v[1] for v in values],
            "clusters_version": [self.clusters_version] * len(keys), "updated_at": [now] * len(keys),
        }, schema=TRENDS_SCHEMA)

    # ---------------------------------------------------------------------------------------------------- upkeep
    def _maybe_compact(self) -> None:
        """Compact after ``compact_every_writes`` writes or ``compact_every_s`` seconds (None: never)."""
        by_count = self.compact_every_writes is not None and self._writes_since_compact >= self.compact_every_writes
        by_time = self.compact_every_s is not None and self._clock() - self._last_compact >= self.compact_every_s
        if not (by_count or by_time):
            return
        if not self.compact_in_background or self._lost_in_a_row >= MAX_LOST_COMPACTIONS:
            self.compact()
            return
        if self._compaction is not None and self._compaction.is_alive():
            return  # one at a time; the next write checks again
        self._writes_since_compact = 0
        self._last_compact = self._clock()
        self._compaction = threading.Thread(target=self._compact_in_background, name="knowledge-compactor",
                                            daemon=True)
        self._compaction.start()

    def compact(self) -> None:
        """Merge small fragments, bring the index up to date and drop versions older than ``cleanup_older_than_s``,
        on this thread (the writer's: it cannot lose to this store's own writes).

        Writers of other processes commit meanwhile, and a compaction that loses such a race fails (LanceDB's
        "Retryable commit conflict"): the data is intact, and the next round, here or in another process, compacts.
        """
        self.wait_for_compaction()
        lost = self._optimize(self._tables())
        self.compactions["inline"] += 1
        self._lost_in_a_row = self._lost_in_a_row + 1 if lost else 0
        self._writes_since_compact = 0
        self._last_compact = self._clock()

    def wait_for_compaction(self, timeout_s: float | None = None) -> None:
        """Until a background compaction in flight has finished (tests; an inline compaction waits for it)."""
        if self._compaction is not None:
            self._compaction.join(timeout_s)

    def _compact_in_background(self) -> None:
        # Its own connection: it checks out the latest version itself and never shares a handle with the writer.
        try:
            if self._compactor_tables is None:
                db = lancedb.connect(self._uri, read_consistency_interval=timedelta(0),
                                     storage_options=self._storage_options)
                self._compactor_tables = {name: db.open_table(deployment_table(self.deployment, name))
                                          for name in (TRANSITIONS, TRENDS, CLUSTERS)}
            lost = self._optimize(self._compactor_tables)
        except Exception:  # upkeep only: the data is intact, the next round compacts again
            log.exception("background compaction of the knowledge store failed; next round retries")
            lost = True
        self.compactions["lost" if lost else "done"] += 1
        self._lost_in_a_row = self._lost_in_a_row + 1 if lost else 0

    def _optimize(self, tables: Mapping[str, Any]) -> bool:
        """``optimize`` every table; True when one of them lost a commit race (and stays uncompacted till next time)."""
        lost = False
        for name, table in tables.items():
            try:
                table.optimize(cleanup_older_than=self.cleanup_older_than)
            except RuntimeError as exc:
                if not lost_race(exc):
                    raise
                lost = True
                log.info("compacting the %s table lost a race with another writer; next round: %s", name, exc)
        return lost

    def fragment_counts(self) -> dict[str, int]:
        """Fragments in each table's latest version (what compaction keeps bounded)."""
        return {name: int(table.stats()["fragment_stats"]["num_fragments"]) for name, table in self._tables().items()}

    def row_counts(self) -> dict[str, int]:
        """Rows in each table, every clusters version included."""
        return {name: int(table.count_rows()) for name, table in self._tables().items()}

    def refresh(self) -> None:
        """See other processes' writes now, not after up to ``refresh_s``."""
        for table in self._tables().values():
            table.checkout_latest()

    def knowledge_version(self) -> str:
        """``<clusters_version>@<transitions table version>.<trends table version>``."""
        return f"{self.clusters_version}@{self._transitions.version}.{self._trends.version}"

    def _tables(self) -> dict[str, Any]:
        return {TRANSITIONS: self._transitions, TRENDS: self._trends, CLUSTERS: self._clusters}

    # ---------------------------------------------------------------------------------------------------- reads
    def top_next(self, c1: str, c2: str, n: int = 5, window: str = ALL, by: By = "count") -> list[tuple[str, int]]:
        """The clusters that followed ``(c1, c2)`` in ``window``, with their transition counts summed over partitions.

        ``by="count"``: most frequent first. ``by="trend"``: the same candidates, the most trending first (trend score
        of c3 in ``window``, or in the shortest day window when ``window`` is "all"; then count). Ties: cluster id.
        """
        counts = self._next_counts(c1, c2, self._checked(window))
        if by == "count":
            order = sorted(counts, key=lambda c3: (-counts[c3], c3))
        elif by == "trend":
            scores = self._trend_scores(self._trend_window(window))
            order = sorted(counts, key=lambda c3: (-scores.get(c3, 1.0), -counts[c3], c3))
        else:
            raise ValueError(f"by is 'count' or 'trend', not {by!r}")
        return [(c3, counts[c3]) for c3 in order[:n]]

    def all_top_next(self, n: int = 5, window: str = ALL) -> dict[Pair, list[tuple[str, int]]]:
        """`top_next(c1, c2, n, window)` of every pair with counts, from one scan (the pair table's change check)."""
        where = f"{self._version_filter} AND `window` = {sql_str(self._checked(window))}"
        found = self._select(self._transitions, where, ["c1", "c2", "c3", "count"])
        counts: dict[Pair, dict[str, int]] = {}
        for c1, c2, c3, count in zip(found["c1"].to_pylist(), found["c2"].to_pylist(), found["c3"].to_pylist(),
                                     found["count"].to_pylist(), strict=True):
            row = counts.setdefault((c1, c2), {})
            row[c3] = row.get(c3, 0) + count
        return {pair: sorted(((c3, k) for c3, k in row.items() if k), key=lambda item: (-item[1], item[0]))[:n]
                for pair, row in counts.items() if any(row.values())}

    def trending(self, n: int = 10, window: str | None = None, exclude: Collection[str] = ()
                 ) -> list[tuple[str, float, int]]:
        """``(cluster, score, count)`` of clusters engaged with in ``window`` (default: the shortest), highest trend
        score ``(count + 1) / (baseline + 1)`` first, then count, then id; ``exclude``: e.g. the user's history."""
        totals = self._trend_totals(self._trend_window(window or ALL))
        ranked = [(cluster, trend_score(count, baseline), count)
                  for cluster, (count, baseline) in totals.items() if count > 0 and cluster not in exclude]
        ranked.sort(key=lambda r: (-r[1], -r[2], r[0]))
        return ranked[:n]

    def search_clusters(self, query: str, n: int = 5) -> list[tuple[str, str, float]]:
        """``(cluster_id, name, cosine similarity)`` of the clusters whose name and keywords best match ``query``."""
        vector = self.embedder.encode([query])[0]
        if not vector.any():
            return []
        found = (self._clusters.search(vector, vector_column_name="vector").distance_type("cosine")
                 .where(self._version_filter, prefilter=True).select(["id", "name", "_distance"]).limit(n).to_arrow())
        hits = [(cid, name, 1.0 - float(distance)) for cid, name, distance in
                zip(found["id"].to_pylist(), found["name"].to_pylist(), found["_distance"].to_pylist(), strict=True)]
        return sorted(hits, key=lambda h: (-h[2], h[0]))

    def _select(self, table: Any, where: str, columns: list[str]) -> pa.Table:
        return table.search().where(where).select(columns).to_arrow()

    def _next_counts(self, c1: str, c2: str, window: str) -> dict[str, int]:
        where = (f"{self._version_filter} AND `window` = {sql_str(window)} "
                 f"AND c1 = {sql_str(c1)} AND c2 = {sql_str(c2)}")
        found = self._select(self._transitions, where, ["c3", "count"])
        counts: dict[str, int] = {}
        for c3, n in zip(found["c3"].to_pylist(), found["count"].to_pylist(), strict=True):
            counts[c3] = counts.get(c3, 0) + n
        return {c3: n for c3, n in counts.items() if n}

    def _trend_totals(self, window: str) -> dict[str, tuple[int, float]]:
        """Counts and baselines per cluster, summed over partitions (the caller must not change the dict)."""
        version = self._trends.version
        memo = self._trend_memo.get(window)
        if memo is not None and memo[0] == version:
            return memo[1]
        where = f"{self._version_filter} AND `window` = {sql_str(window)}"
        found = self._select(self._trends, where, ["cluster", "count", "baseline"])
        totals: dict[str, tuple[int, float]] = {}
        for cluster, count, baseline in zip(found["cluster"].to_pylist(), found["count"].to_pylist(),
                                            found["baseline"].to_pylist(), strict=True):
            old_count, old_baseline = totals.get(cluster, (0, 0.0))
            totals[cluster] = (old_count + count, old_baseline + baseline)
        # Read at `version` or a later one (a refresh in between): a later one under the older key only costs a
        # recomputation at the next call.
        self._trend_memo[window] = (version, totals)
        return totals

    def _trend_scores(self, window: str) -> dict[str, float]:
        return {cluster: trend_score(c, b) for cluster, (c, b) in self._trend_totals(window).items()}

    def _checked(self, window: str) -> str:
        days = window_days_of(window)
        if days is not None and days not in self.window_days:
            raise ValueError(f"window {window!r} is not kept; the windows are {ALL!r} and "
                             f"{', '.join(window_name(d) for d in self.window_days)}")
        return window

    def _trend_window(self, window: str) -> str:
        """Trends have day windows only: "all" means the shortest one."""
        return window_name(min(self.window_days)) if self._checked(window) == ALL else window
