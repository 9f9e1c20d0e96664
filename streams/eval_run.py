"""`explorer eval`: every update strategy through the same MovieLens replay, measured, reported.

Flow: the isolated pipeline (streams/eval_pipeline.py) replays the training period -> the knowledge at the split
(the stale table's knowledge) and the first fine-tune -> for each evaluation point: replay the chunk up to it, wait
for commits and the LanceDB sync, re-fine-tune when due, build the cases (models/evaluation/protocol.py), let every
strategy answer their pairs (charging its refresh work to its ledger), ground the answers with the sequence model
-> free-generation exact match on a sample -> metrics and the report (models/evaluation/report.py).
"""

from __future__ import annotations

import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.clusters import ClusterSet
from models.evaluation import metrics as m
from models.evaluation.costs import measured, median
from models.evaluation.protocol import (
    Case,
    Horizon,
    busiest_pairs,
    cases_at,
    is_hit,
    is_item_hit,
    make_timeline,
)
from models.evaluation.strategies import (
    CountArgmax,
    LlmPool,
    LlmTableStrategy,
    PointState,
    PopularNovel,
    RandomNovel,
    Strategy,
    llm_strategies,
)
from models.prompts import MAX_TRENDING, Knowledge
from streams.settings import Settings


@dataclass(frozen=True)
class EvalConfig:
    points: int
    horizon: Horizon
    max_pairs_per_point: int | None
    finetune: bool
    finetune_every: int
    finetune_budget_s: float
    validity_sample: int
    bootstrap: int
    seed: int
    items_k: int
    quick: bool

    @classmethod
    def from_settings(cls, settings: Settings, quick: bool = False, **overrides: Any) -> EvalConfig:
        values: dict[str, Any] = {
            "points": settings.eval_quick_points if quick else settings.eval_points,
            "horizon": Horizon(settings.eval_horizon_events, settings.eval_horizon_days),
            "max_pairs_per_point": (settings.eval_quick_max_pairs_per_point if quick
                                    else settings.eval_max_pairs_per_point),
            "finetune": settings.eval_finetune and not quick,  # a fine-tune takes minutes here: quick opts in
            "finetune_every": settings.eval_finetune_every, "finetune_budget_s": settings.eval_finetune_budget_s,
            "validity_sample": settings.eval_quick_validity_sample if quick else settings.eval_validity_sample,
            "bootstrap": settings.eval_bootstrap, "seed": settings.eval_seed, "items_k": settings.eval_items_k,
            "quick": quick,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


@dataclass
class StrategyResult:
    name: str
    label: str
    cadence: str
    uses_llm: bool
    streaming: bool
    skipped: str | None
    outcomes: list[m.Outcome] = field(default_factory=list)
    hit: m.Interval | None = None
    item_hit: m.Interval | None = None
    vs_count: m.Interval | None = None
    validity: float | None = None
    exact_match: float | None = None
    exact_match_n: int = 0
    distinct: int = 0
    coverage: float = 0.0
    by_point: dict[int, float] = field(default_factory=dict)
    cpu_s: float = 0.0
    inferences: int = 0
    model_updates: int = 0
    pairs_changed: int = 0
    lags_s: list[float | None] = field(default_factory=list)


@dataclass
class EvalResult:
    config: EvalConfig
    strategies: list[StrategyResult]
    points: list[dict[str, Any]]  # per point: date, cases, pairs, users before the cap, chunk timings
    totals: dict[str, Any]


class Grounder:
    """Grounded items of a case's novel cluster: the sequence model's scores for the user, restricted to the
    cluster's items, the user's own items excluded (models/recommend.grounded_items, batched per point)."""

    def __init__(self, sequence: Any, clusters: ClusterSet, k: int) -> None:
        from models.recommend import members_by_cluster

        self.sequence, self.k = sequence, k
        self.members = members_by_cluster(clusters)
        self._scores: dict[tuple[str, int], Any] = {}

    def prepare(self, cases: Sequence[Case]) -> None:
        for start in range(0, len(cases), 256):
            batch = cases[start:start + 256]
            scores = self.sequence.score_batch([c.recent_items for c in batch])
            for case, row in zip(batch, scores, strict=True):
                self._scores[(case.user_id, case.point)] = row

    def items(self, case: Case, cluster: str) -> list[str]:
        import torch

        row = self._scores[(case.user_id, case.point)]
        had = set(case.recent_items)
        index = self.sequence.index
        allowed = sorted({index[i] for i in self.members.get(cluster, []) if i in index and i not in had})
        if not allowed:
            return []
        top = torch.topk(row[allowed], min(self.k, len(allowed)))
        return [self.sequence.item_ids[allowed[int(i)] - 1] for i in top.indices]


def prepare_work_dir(settings: Settings, work_settings: Settings, console: Any) -> tuple[ClusterSet, Any]:
    """Clusters and sequence model for the evaluation's data dir: the main data dir's serving ones when present
    (both learn from the training period only), else built here."""
    from models.clusters import (
        ClustersNotBuilt,
        build_clusters,
        clusters_root,
        load_serving,
        set_serving,
    )
    from models.sequence import (
        SequenceConfig,
        SequenceModelNotTrained,
        load_current,
        train_and_save,
    )

    try:
        clusters = load_serving(settings)
        target = clusters_root(work_settings) / clusters.version
        if not target.exists():
            shutil.copytree(clusters_root(settings) / clusters.version, target)
        set_serving(work_settings, clusters.version)
    except ClustersNotBuilt:
        console.print("Building interest clusters from the training period...")
        clusters = build_clusters(work_settings)
    try:
        sequence = load_current(settings)
        if sequence.meta.get("train_fraction", settings.train_fraction) != settings.train_fraction:
            raise SequenceModelNotTrained("the current sequence model was trained on another split")
    except SequenceModelNotTrained:
        console.print("Training the sequence recommender on the training period...")
        sequence, _ = train_and_save(work_settings, SequenceConfig.from_settings(work_settings), progress=True)
    return clusters, sequence


def run_eval(settings: Settings, config: EvalConfig, out_dir: Path, progress: Any, console: Any) -> EvalResult:
    import torch

    from models.evaluation.finetuning import BudgetedFineTuner, unavailable_reason
    from models.transitions import day_of
    from streams.eval_pipeline import EvalPipeline, isolated_settings
    from streams.movielens import dataset_dir, load_ratings

    torch.set_num_threads(1)  # the SASRec scoring; on a small shared machine more threads only fight
    started_wall = time.perf_counter()
    work = out_dir / "work"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    wsettings = isolated_settings(settings, work)
    clusters, sequence = prepare_work_dir(settings, wsettings, console)
    ratings = load_ratings(dataset_dir(wsettings, progress=False))
    timeline = make_timeline(ratings, settings.train_fraction, config.points)
    from models.evaluation.protocol import user_events

    users = user_events(ratings, clusters.cluster_of, settings)
    base_model = settings.resolved_model_path()  # the base, not a released fine-tune: the strategies decide
    pool = LlmPool(settings, clusters, base_model, threads=settings.llm_threads)
    llms = llm_strategies(pool, config.finetune_every)
    baselines: list[Strategy] = [RandomNovel(clusters, config.seed), PopularNovel(clusters), CountArgmax(clusters)]
    strategies: list[Strategy] = [*llms, *baselines]
    ft_reason = None if config.finetune else ("skipped: quick mode (a fine-tune takes minutes here; --finetune runs "
                                              "a budgeted one)" if config.quick else "skipped: fine-tuning disabled")
    ft_reason = ft_reason or unavailable_reason()
    for strategy in llms:
        if strategy.finetuned and ft_reason:
            strategy.skipped = ft_reason if ft_reason.startswith("skipped") else f"skipped: {ft_reason}"
    tuner = BudgetedFineTuner(settings.model_copy(update={"finetune_threads": settings.eval_finetune_threads}),
                              clusters, base_model, work / "finetuned", config.finetune_budget_s)
    results = {s.name: StrategyResult(s.name, s.label, s.cadence, s.uses_llm, s.streaming, s.skipped)
               for s in strategies}
    grounder = Grounder(sequence, clusters, config.items_k)
    points_info: list[dict[str, Any]] = []
    finetuned: str | None = None
    ft_log: list[dict[str, Any]] = []

    def fine_tune(pipeline: EvalPipeline, until_day: int, tag: str, since: float) -> float | None:
        """Fine-tune on the durable state's counts; None (and the reason logged) when it fails: the FT strategies
        keep their previous model, or are skipped when there is none."""
        nonlocal finetuned
        task = progress.add_task(f"fine-tune {tag}", total=None)
        try:
            with measured() as spent:
                counts = pipeline.state_counts()
                done = tuner.fine_tune(counts, until_day, tag,
                                       lambda d, t: progress.update(task, completed=d, total=t))
        except Exception as exc:  # noqa: BLE001 -- a failed fine-tune is a result to report, not a crash
            console.print(f"[yellow]fine-tune {tag} failed:[/] {exc}")
            ft_log.append({"tag": tag, "until_day": until_day, "failed": str(exc)[:300]})
            if finetuned is None:
                for strategy in llms:
                    if strategy.finetuned:
                        strategy.skipped = results[strategy.name].skipped = f"skipped: fine-tune failed ({exc})"
            return None
        finally:
            progress.update(task, visible=False)
        finetuned = str(done.model_path)
        for strategy in llms:
            if strategy.finetuned and not strategy.skipped:
                strategy.ledger.cpu_s += spent[0]
                strategy.ledger.wall_s += spent[1]
        ft_log.append({"tag": tag, "until_day": until_day, "model_version": pool.model_version(finetuned),
                       "examples": done.examples, "steps": done.steps,
                       "train_s": done.train_s, "loss": [round(done.first_loss, 3), round(done.final_loss, 3)],
                       "cpu_s": round(spent[0], 1), "wall_s": round(spent[1], 1), **done.timings})
        return time.perf_counter() - since

    chunks = [(0, timeline.split_index)] + [(max(a, timeline.split_index), b) for a, b in timeline.chunks(ratings)]
    replay_task = progress.add_task("replay through the pipeline", total=chunks[-1][1])
    with EvalPipeline(wsettings, clusters, work / "logs") as pipeline:
        chunk = pipeline.replay(ratings[:timeline.split_index], lambda n: progress.advance(replay_task, n))
        split_knowledge = pipeline.snapshot()
        points_info.append({"point": "split", "events": chunk.events, "sync_s": round(chunk.sync_s, 1)})
        if not ft_reason:
            from models.finetune.curation import split_day_of

            published = time.perf_counter()
            fine_tune(pipeline, split_day_of(ratings, settings.train_fraction), "ft-split", published)
        for k, (start, stop) in enumerate(chunks[1:]):
            point_ts = timeline.points[k]
            before = time.perf_counter()
            chunk = pipeline.replay(ratings[start:stop], lambda n: progress.advance(replay_task, n))
            published = before + chunk.publish_s
            knowledge = pipeline.snapshot()
            model_lag = None
            due = config.finetune_every and k > 0 and k % config.finetune_every == 0
            if not ft_reason and due:
                model_lag = fine_tune(pipeline, day_of(point_ts), f"ft-p{k + 1}", published)
            every_case = cases_at(users, k, point_ts, config.horizon, settings.recent_items_kept)
            cases = busiest_pairs(every_case, config.max_pairs_per_point)
            pairs = sorted({c.pair for c in cases})
            grounder.prepare(cases)
            state = PointState(k, knowledge, split_knowledge, finetuned, chunk.sync_s, model_lag)
            points_info.append({"point": k + 1, "date": time.strftime("%Y-%m-%d", time.gmtime(point_ts)),
                                "events": chunk.events, "sync_s": round(chunk.sync_s, 1),
                                "commit_s": round(chunk.commit_s, 1), "cases": len(cases),
                                "cases_before_cap": len(every_case), "pairs": len(pairs)})
            for strategy in strategies:
                result = results[strategy.name]
                if strategy.skipped:
                    continue
                task = progress.add_task(f"point {k + 1}/{len(chunks) - 1}: {strategy.name}", total=1)
                wall_before = strategy.ledger.wall_s
                answers = strategy.answer(state, pairs)
                refresh_wall = strategy.ledger.wall_s - wall_before
                progress.update(task, completed=1, visible=False)
                result.lags_s.append(_lag(strategy, state, refresh_wall))
                for case in cases:
                    cluster = answers[case.pair]
                    items = grounder.items(case, cluster)
                    valid = cluster in clusters.clusters and cluster not in case.pair
                    result.outcomes.append(m.Outcome(case.user_id, k, cluster, is_hit(cluster, case),
                                                     is_item_hit(items, case), valid))
        worker_cpu = pipeline.worker_cpu_s()
        final_snapshot = knowledge

    _exact_match(config, llms, results, pool, clusters, final_snapshot, split_knowledge, finetuned, settings,
                 progress)
    pool_cpu = pool.cpu_per_inference
    pool.close()
    _summarise(config, strategies, results, clusters)
    totals = {"wall_s": round(time.perf_counter() - started_wall, 1), "worker_cpu_s": worker_cpu,
              "llm_cpu_s_per_inference": median(pool_cpu), "llm_inferences": len(pool_cpu),
              "fine_tunes": ft_log, "clusters": clusters.version,
              "all_pairs": len(clusters.clusters) * (len(clusters.clusters) - 1), "sequence": sequence.version,
              "split": time.strftime("%Y-%m-%d %H:%M", time.gmtime(timeline.split_ts)),
              "end": time.strftime("%Y-%m-%d %H:%M", time.gmtime(timeline.end_ts)), "base_model": base_model,
              "base_model_version": pool.model_version(base_model)}  # by content (models/identity.py), not path
    for bulky in ("finetuned", "lancedb", "faust"):  # the report keeps what they showed; logs stay
        shutil.rmtree(work / bulky, ignore_errors=True)
    return EvalResult(config, list(results.values()), points_info, totals)


def _lag(strategy: Strategy, state: PointState, refresh_wall: float) -> float | None:
    """Seconds from the chunk's events published to this strategy's answers reflecting them; None when its answers
    cannot change at this point (stale; fine-tuning only between fine-tunes; the random baseline)."""
    if isinstance(strategy, LlmTableStrategy):
        if strategy.knowledge == "stream":  # a model deployed now came after the sync: its lag includes it
            return (state.model_lag_s if strategy.finetuned and state.model_lag_s is not None
                    else state.knowledge_lag_s) + refresh_wall
        return None if state.model_lag_s is None or not strategy.finetuned else state.model_lag_s + refresh_wall
    if strategy.streaming:
        return state.knowledge_lag_s + refresh_wall
    return None


def _exact_match(config: EvalConfig, llms: Sequence[LlmTableStrategy], results: dict[str, StrategyResult],
                 pool: LlmPool, clusters: ClusterSet, last: Any, split: Any, finetuned: str | None,
                 settings: Settings, progress: Any) -> None:
    """Free generation on a seeded sample of the last point's pairs, each prompt as the strategy would build it."""
    from models.evaluation.strategies import free_generation

    if config.validity_sample <= 0:
        return
    pool.close()  # free the llama contexts before loading generators
    names = {cid: c.name for cid, c in clusters.clusters.items()}
    for strategy in llms:
        result = results[strategy.name]
        if strategy.skipped or not result.outcomes:
            continue
        pairs = sorted({p for p, row in strategy.rows.items()})
        sample = random.Random(config.seed).sample(pairs, min(config.validity_sample, len(pairs)))
        snapshot = {"split": split, "stream": last}.get(strategy.knowledge)
        prompts = [(p, Knowledge(top_next=snapshot.shown(p), trending=list(snapshot.trending)[:MAX_TRENDING])
                    if snapshot is not None else None) for p in sample]
        path = finetuned if strategy.finetuned else pool.base_model
        task = progress.add_task(f"free generation: {strategy.name}", total=None)
        answers = free_generation(path, prompts, clusters, settings.llm_threads)
        progress.update(task, visible=False)
        result.exact_match = m.exact_match_rate(answers, names)
        result.exact_match_n = len(answers)


def _summarise(config: EvalConfig, strategies: Sequence[Strategy], results: dict[str, StrategyResult],
               clusters: ClusterSet) -> None:
    evaluated = [r for r in results.values() if not r.skipped and r.outcomes]
    users = sorted({o.user_id for r in evaluated for o in r.outcomes})
    draws = m.resample_users(len(users), config.bootstrap, config.seed)
    count = results.get("count")
    for strategy in strategies:
        result = results[strategy.name]
        ledger = strategy.ledger
        result.cpu_s, result.inferences = ledger.cpu_s, ledger.inferences
        result.model_updates, result.pairs_changed = ledger.model_updates, ledger.pairs_changed
        if result.skipped or not result.outcomes:
            continue
        result.hit = m.rate_interval(result.outcomes, draws, users, "hit")
        result.item_hit = m.rate_interval(result.outcomes, draws, users, "item_hit")
        if count is not None and count.outcomes and result.name != "count":
            result.vs_count = m.paired_difference(result.outcomes, count.outcomes, draws, users)
        result.validity = m.validity(result.outcomes)
        result.distinct, result.coverage = m.exploration(result.outcomes, len(clusters.clusters))
        result.by_point = m.rate_by_point(result.outcomes)
