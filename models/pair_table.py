"""The pair table: the LLM's novel-cluster answer for every cluster pair (c1, c2), computed ahead of requests.

As the industry system serves it (arXiv 2405.16363): a user's two most recent distinct clusters are looked up in
a table filled in bulk, so serving never waits for the LLM on a hit. Rows live in LanceDB next to the knowledge
they were inferred from, one per ``(clusters_version, model_version, c1, c2)``, tagged with the knowledge they saw:

* ``fingerprint`` -- the pair's top next cluster ids (the retrieved knowledge that shapes the prompt). When the
  streaming knowledge changes a pair's fingerprint, only that pair is re-inferred (agents/pair_refresh.py);
  counts alone moving does not trigger a re-inference (the same clusters, in the same order, are retrieved);
* ``knowledge_version`` -- the knowledge store's table versions at inference time, for audit;
* ``scores`` -- the model's log-probability of every valid novel cluster (candidate scoring off the prompt's KV
  state, models/llm.candidate_log_probs), when the deployment chooses the novel cluster with the sequence model
  (``Settings.novel_choice`` "llm-x-sequence": the request multiplies the row's calibrated distribution by the
  user's sequence-model mass per cluster, models/recommend.py); empty for a row of plain constrained decoding;
  ``temperature`` -- that model's calibration, fixed at its release, which the request divides the scores by.
  Tables written before these columns existed get them on open (null: no scores, T = 1).

Rows of an older model version keep serving a pair until the new version has answered it (a model hot swap
re-infers the table in the background). ``model_version`` is the model's identity label (models/identity.py:
registry version + full-content digest), so two fine-tunes never share rows.

The table belongs to one deployment (``Settings.deployment_id()``), named ``<deployment>__pair_predictions`` as the
knowledge store's tables are (models/knowledge.py says why): a deployment never serves rows another deployment
inferred from its own knowledge.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import lancedb
import orjson
import pyarrow as pa

from models.lance import create_table, deployment_table, sql_str
from models.prompts import MAX_TOP_NEXT, MAX_TRENDING, Knowledge
from streams.settings import DEFAULT_DEPLOYMENT

if TYPE_CHECKING:
    from models.clusters import ClusterSet
    from models.llm import NovelClusterPredictor
    from streams.settings import Settings

PAIRS = "pair_predictions"
PAIR_KEY = ["clusters_version", "model_version", "c1", "c2"]
PAIRS_SCHEMA = pa.schema([
    ("clusters_version", pa.string()), ("model_version", pa.string()), ("c1", pa.string()), ("c2", pa.string()),
    ("novel", pa.string()), ("fingerprint", pa.string()), ("knowledge_version", pa.string()),
    ("top_next", pa.string()), ("inference_ms", pa.float64()), ("updated_at", pa.float64()),
    ("scores", pa.string()), ("temperature", pa.float64()),
])

Pair = tuple[str, str]


@dataclass(frozen=True)
class PairPrediction:
    c1: str
    c2: str
    novel: str
    model_version: str
    knowledge_version: str
    fingerprint: tuple[str, ...]  # the top next cluster ids the prompt showed
    top_next: tuple[tuple[str, int], ...] = ()
    inference_ms: float = 0.0
    updated_at: float = 0.0
    scores: tuple[tuple[str, float], ...] = ()  # (cluster id, log p) of every candidate; () when not scored
    temperature: float = 1.0  # the calibration of the model that scored the row (models/calibration.py)

    @property
    def pair(self) -> Pair:
        return (self.c1, self.c2)


def fingerprint(top_next: Sequence[tuple[str, int]], history: Pair) -> tuple[str, ...]:
    """What of the retrieved knowledge the prompt shows for `history`: its top next clusters outside the pair."""
    return tuple(c3 for c3, _ in top_next if c3 not in history)[:MAX_TOP_NEXT]


def all_pairs(clusters: ClusterSet) -> list[Pair]:
    ids = list(clusters.clusters)
    return [(c1, c2) for c1 in ids for c2 in ids if c1 != c2]


def pair_owner(pair: Pair, partitions: int) -> int:
    """The interactions partition whose worker keeps this pair fresh (stable across processes and restarts)."""
    from streams.partitioning import murmur2_partition

    return murmur2_partition(f"{pair[0]}|{pair[1]}".encode(), partitions)


def infer(predictor: NovelClusterPredictor, pair: Pair, top_next: Sequence[tuple[str, int]], trending: Sequence[str],
          knowledge_version: str, clock: Callable[[], float] = time.time, scored: bool = False) -> PairPrediction:
    """One pair's answer from the LLM with this retrieved knowledge (the same prompt a request-time miss uses).

    `scored`: the row keeps the model's whole distribution (candidate scoring, its argmax the row's `novel`)
    instead of one constrained answer; what ``novel_choice`` "llm-x-sequence" serves from."""
    shown = [(c3, n) for c3, n in top_next if c3 not in pair][:MAX_TOP_NEXT]
    knowledge = Knowledge(top_next=shown, trending=list(trending)[:MAX_TRENDING])
    scores: tuple[tuple[str, float], ...] = ()
    started = time.perf_counter()
    if scored:
        log_probs = predictor.candidate_log_probs(pair, knowledge)
        scores = tuple(log_probs.items())
        novel = max(log_probs, key=log_probs.__getitem__)  # ties: the first in cluster order
    else:
        novel = predictor.predict(pair, knowledge).cluster_id
    return PairPrediction(c1=pair[0], c2=pair[1], novel=novel, model_version=predictor.model_version,
                          knowledge_version=knowledge_version, fingerprint=fingerprint(shown, pair),
                          top_next=tuple(shown), inference_ms=(time.perf_counter() - started) * 1000,
                          updated_at=clock(), scores=scores,
                          temperature=float(getattr(predictor, "temperature", 1.0)))


class PairTable:
    """Pair predictions of one clusters version of one deployment in the LanceDB at `uri` (any writer of that
    deployment; rows are keyed upserts)."""

    def __init__(self, uri: str, clusters_version: str, refresh_s: float = 1.0,
                 storage_options: dict[str, str] | None = None, deployment: str = DEFAULT_DEPLOYMENT) -> None:
        self.clusters_version = clusters_version
        self.deployment = deployment
        self._db = lancedb.connect(uri, read_consistency_interval=timedelta(seconds=refresh_s),
                                   storage_options=storage_options)
        self._table = _open_or_create(self._db, deployment_table(deployment, PAIRS))
        self._writes = 0

    @classmethod
    def from_settings(cls, settings: Settings, clusters_version: str, **options: Any) -> PairTable:
        return cls(settings.resolved_lancedb_uri(), clusters_version, deployment=settings.deployment_id(), **options)

    def upsert(self, predictions: Iterable[PairPrediction]) -> int:
        rows = [self._row(p) for p in predictions]
        if not rows:
            return 0
        data = pa.Table.from_pylist(rows, schema=PAIRS_SCHEMA)
        # Newest wins, whichever writer comes last (workers, the bulk build): as the in-memory cache decides.
        (self._table.merge_insert(PAIR_KEY).when_matched_update_all(where="target.updated_at <= source.updated_at")
         .when_not_matched_insert_all().execute(data))
        self._writes += 1
        if self._writes % 50 == 0:  # many small upserts pile up fragments: compact now and then
            self.compact()
        return len(rows)

    def load(self, model_version: str | None = None, updated_since: float | None = None
             ) -> dict[str, dict[Pair, PairPrediction]]:
        """model_version -> pair -> prediction (one model version, or all of them; only rows updated at or after
        `updated_since`, if given)."""
        where = f"clusters_version = {sql_str(self.clusters_version)}"
        if model_version is not None:
            where += f" AND model_version = {sql_str(model_version)}"
        if updated_since is not None:
            where += f" AND updated_at >= {float(updated_since)!r}"
        found = self._table.search().where(where).limit(None).to_arrow().to_pylist()
        loaded: dict[str, dict[Pair, PairPrediction]] = {}
        for row in found:
            prediction = _prediction(row)
            loaded.setdefault(prediction.model_version, {})[prediction.pair] = prediction
        return loaded

    def count(self) -> int:
        return int(self._table.count_rows(f"clusters_version = {sql_str(self.clusters_version)}"))

    def fragments(self) -> int:
        return len(self._table.to_lance().get_fragments())

    def compact(self) -> None:
        self._table.optimize(cleanup_older_than=timedelta(seconds=60))

    def _row(self, prediction: PairPrediction) -> dict[str, Any]:
        return {"clusters_version": self.clusters_version, "model_version": prediction.model_version,
                "c1": prediction.c1, "c2": prediction.c2, "novel": prediction.novel,
                "fingerprint": "|".join(prediction.fingerprint), "knowledge_version": prediction.knowledge_version,
                "top_next": orjson.dumps(prediction.top_next).decode(), "inference_ms": prediction.inference_ms,
                "updated_at": prediction.updated_at,
                "scores": orjson.dumps(prediction.scores).decode() if prediction.scores else None,
                "temperature": prediction.temperature}


def _open_or_create(db: Any, name: str) -> Any:
    """The table, with any column of PAIRS_SCHEMA that a table written by an older release lacks added (null)."""
    try:
        table = db.open_table(name)
    except ValueError:  # LanceDB's "Table ... was not found"; exist_ok: another writer may create it meanwhile
        return create_table(db, name, PAIRS_SCHEMA)
    missing = [f for f in PAIRS_SCHEMA if f.name not in table.schema.names]
    if missing:
        table.add_columns(missing)
    return table


def _prediction(row: Mapping[str, Any]) -> PairPrediction:
    return PairPrediction(c1=row["c1"], c2=row["c2"], novel=row["novel"], model_version=row["model_version"],
                          knowledge_version=row["knowledge_version"],
                          fingerprint=tuple(c for c in row["fingerprint"].split("|") if c),
                          top_next=tuple((c, int(n)) for c, n in orjson.loads(row["top_next"])),
                          inference_ms=row["inference_ms"], updated_at=row["updated_at"],
                          scores=tuple((c, float(v)) for c, v in orjson.loads(row["scores"])) if row.get("scores")
                          else (), temperature=row.get("temperature") or 1.0)
