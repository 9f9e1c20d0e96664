"""`explorer eval`: every update strategy through the same MovieLens replay, measured, reported.

Flow:

1. **Replay** (streams/eval_pipeline.py): the training period, then each chunk up to the next evaluation point,
   through a real worker; after each, the knowledge store's snapshot (a state), and at the states where a
   fine-tune is due the durable state's counts it learns from.
2. **Cases** (models/evaluation/protocol.py) and their strata, fixed before any strategy answers.
3. **Fine-tunes** (cached by their inputs) while the base model's inferences already run in one process beside
   them; then every remaining inference, deduplicated and cached, over `processes` processes
   (models/evaluation/inference.py). Strategies only *plan* their pair-table refreshes state by state, so all of
   this runs in bulk.
4. **Answers** of every strategy at every state, grounded with the sequence model -> outcomes -> free-generation
   exact match on a sample -> metrics (models/evaluation/summary.py), drift, costs -> the report.
"""

from __future__ import annotations

import random
import resource
import shutil
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from models.clusters import ClusterSet
from models.evaluation import metrics as m
from models.evaluation.baselines import (
    BackoffTimesSequence,
    CountArgmax,
    CountBackoff,
    PopularNovel,
    RandomNovel,
    SequenceChoice,
    next_totals,
)
from models.evaluation.drift import drift
from models.evaluation.finetuning import BudgetedFineTuner, FineTuned, unavailable_reason
from models.evaluation.grounding import SequenceScores
from models.evaluation.inference import SERVED_SCORES, InferenceCache, InferenceEngine
from models.evaluation.interface import InferenceRequest, Inferred, PointState, Snapshot, Strategy
from models.evaluation.protocol import Case, Horizon, Timeline, all_cases, busiest_pairs, is_hit, is_hit_at, \
    is_item_hit, make_timeline
from models.evaluation.strata import strata_of
from models.evaluation.strategies import BASE, EARLY, FINETUNE, LlmTableStrategy, ScoredTableStrategy, \
    llm_strategies
from models.evaluation.summary import StrategyResult, summarise
from models.evaluation.versioning import code_version, git_commit, run_key
from streams.settings import Settings

# settings that say where things run, not what is computed: left out of the run key (and never reported)
_UNKEYED = ("kafka_", "broker_", "web_", "topic_prefix", "app_id", "data_dir", "lancedb_uri", "movielens_dir")


@dataclass(frozen=True)
class EvalConfig:
    points: int
    horizon: Horizon
    request_every: int
    max_pairs_per_state: int | None  # None: every pair the cases need (the full run); --quick caps it
    finetune: bool
    finetune_every: int
    finetune_budget_s: float
    early_gap_days: int  # 0: no early-window variant
    validity_sample: int
    bootstrap: int
    seed: int
    items_k: int
    processes: int
    backoff_k: float
    backoff_m: float
    cache: bool
    quick: bool
    llm_strategies: tuple[str, ...] | None = None  # None: every LLM strategy; else only these run (others: skipped)

    @classmethod
    def from_settings(cls, settings: Settings, quick: bool = False, **overrides: Any) -> EvalConfig:
        from models.pair_bulk import default_processes

        values: dict[str, Any] = {
            "points": settings.eval_quick_points if quick else settings.eval_points,
            "horizon": Horizon(settings.eval_horizon_events, settings.eval_horizon_days),
            "request_every": settings.eval_request_every,
            "max_pairs_per_state": (settings.eval_quick_max_pairs_per_point if quick
                                    else settings.eval_max_pairs_per_point),
            "finetune": settings.eval_finetune and not quick,  # a fine-tune takes minutes here: quick opts in
            "finetune_every": settings.eval_finetune_every, "finetune_budget_s": settings.eval_finetune_budget_s,
            "early_gap_days": settings.eval_early_finetune_gap_days,
            "validity_sample": settings.eval_quick_validity_sample if quick else settings.eval_validity_sample,
            "bootstrap": settings.eval_bootstrap, "seed": settings.eval_seed, "items_k": settings.eval_items_k,
            "processes": (settings.eval_processes if settings.eval_processes is not None
                          else default_processes(settings.llm_threads)),
            "backoff_k": settings.eval_backoff_k, "backoff_m": settings.eval_backoff_prior,
            "cache": True, "quick": quick,
            "llm_strategies": tuple(settings.eval_llm_strategies) if settings.eval_llm_strategies else None,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["horizon"] = self.horizon.describe()
        return out


@dataclass
class EvalResult:
    config: EvalConfig
    strategies: list[StrategyResult]
    points: list[dict[str, Any]]  # per state: date, events, cases, pairs, chunk timings
    totals: dict[str, Any]
    drift: dict[str, Any] = field(default_factory=dict)


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
        load_current_for_split,
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
        sequence = load_current_for_split(settings)
    except SequenceModelNotTrained:
        console.print("Training the sequence recommender on the training period...")
        sequence, _ = train_and_save(work_settings, SequenceConfig.from_settings(work_settings), progress=True)
    return clusters, sequence


@dataclass
class _Replayed:
    snapshots: list[Snapshot]
    infos: list[dict[str, Any]]
    counts: dict[int, Any]  # state -> the durable state's counts there (for the fine-tunes due there)
    published_s: list[float]  # per state: seconds from publishing the chunk to it being synced (knowledge lag)
    worker_cpu_s: float | None


def _finetune_states(config: EvalConfig) -> list[int]:
    """States where the periodic fine-tune is (re)trained: the split, then every `finetune_every` points."""
    every = config.finetune_every
    return [0] + ([s for s in range(1, config.points + 1) if (s - 1) > 0 and (s - 1) % every == 0] if every else [])


def _replay(wsettings: Settings, clusters: ClusterSet, ratings: Sequence[Any], timeline: Timeline,
            count_states: set[int], work: Path, progress: Any) -> _Replayed:
    from streams.eval_pipeline import EvalPipeline

    chunks = timeline.chunks(ratings)
    task = progress.add_task("replay through the pipeline", total=chunks[-1][1])
    snapshots, infos, counts, lags = [], [], {}, []
    with EvalPipeline(wsettings, clusters, work / "logs") as pipeline:
        for state, (start, stop) in enumerate(chunks):
            chunk = pipeline.replay(ratings[start:stop], lambda n: progress.advance(task, n))
            snapshots.append(pipeline.snapshot())
            lags.append(chunk.sync_s)
            ts = timeline.states[state]
            infos.append({"point": "split" if state == 0 else state,
                          "date": time.strftime("%Y-%m-%d", time.gmtime(ts)), "events": chunk.events,
                          "commit_s": round(chunk.commit_s, 1), "sync_s": round(chunk.sync_s, 1)})
            if state in count_states:
                counts[state] = pipeline.state_counts()
        worker_cpu = pipeline.worker_cpu_s()
    progress.update(task, visible=False)
    return _Replayed(snapshots, infos, counts, lags, worker_cpu)


def run_eval(settings: Settings, config: EvalConfig, out_dir: Path, progress: Any, console: Any,
             cache_dir: Path | None = None) -> EvalResult:
    import torch

    from models.finetune.curation import split_day_of
    from models.llm import model_version
    from models.counts import day_of
    from streams.eval_pipeline import isolated_settings
    from streams.movielens import dataset_dir, load_ratings

    torch.set_num_threads(1)  # the SASRec scoring; on a small shared machine more threads only fight
    started_wall, started_cpu = time.perf_counter(), time.process_time()
    code, commit = code_version(), git_commit()  # of the code that runs, before anyone edits it
    phases: dict[str, float] = {}
    work = out_dir / "work"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    cache_dir = cache_dir or settings.data_dir / "eval-cache"
    wsettings = isolated_settings(settings, work)
    clusters, sequence = prepare_work_dir(settings, wsettings, console)
    ratings = load_ratings(dataset_dir(wsettings, progress=False))
    timeline = make_timeline(ratings, settings.train_fraction, config.points)
    from models.evaluation.protocol import user_events

    users = user_events(ratings, clusters.cluster_of, settings)
    every_case = all_cases(users, timeline, config.horizon, settings.recent_items_kept, config.request_every)
    cases = busiest_pairs(every_case, config.max_pairs_per_state)
    by_state: dict[int, list[Case]] = {s: [] for s in range(len(timeline.states))}
    for case in cases:
        by_state[case.state].append(case)

    # ---- who can run, and what has to be counted during the replay
    base_model = settings.resolved_model_path()  # the base, not a released fine-tune: the strategies decide
    versions: dict[str, str] = {}

    def version_of(path: str) -> str:
        if path not in versions:
            versions[path] = model_version(settings, path)
        return versions[path]

    backoff = CountBackoff(clusters, config.backoff_k, config.backoff_m)
    scores = SequenceScores(sequence, clusters, config.items_k)  # prepared for the cases after the replay
    llms = llm_strategies(len(clusters.clusters), version_of, config.finetune_every, config.early_gap_days,
                          backoff=backoff, sequence=scores, seed=config.seed, prior_k=config.backoff_k)
    for strategy in llms:
        if config.llm_strategies is not None and strategy.name not in config.llm_strategies:
            strategy.skipped = "skipped: not selected (EXPLORER_EVAL_LLM_STRATEGIES)"
    ft_reason = None if config.finetune else ("skipped: quick mode (a fine-tune takes minutes here; --finetune runs "
                                              "a budgeted one)" if config.quick else "skipped: fine-tuning disabled")
    ft_reason = ft_reason or (f"skipped: {r}" if (r := unavailable_reason()) else None)
    for strategy in llms:
        if strategy.skipped:
            continue
        if strategy.role == EARLY and not ft_reason and config.early_gap_days <= 0:
            strategy.skipped = "skipped: no early window (EXPLORER_EVAL_EARLY_FINETUNE_GAP_DAYS=0)"
        elif strategy.finetuned and ft_reason:
            strategy.skipped = ft_reason
    ft_states = _finetune_states(config) if not ft_reason else []

    # ---- 1. replay
    with _phase(phases, "replay_s"):
        replayed = _replay(wsettings, clusters, ratings, timeline, set(ft_states), work, progress)
    snapshots = replayed.snapshots
    split_knowledge = snapshots[0]
    strata = {case.key: strata_of(case, snapshots[case.state]) for case in cases}

    # ---- 2. strategies
    with _phase(phases, "sequence_scores_s"):
        scores.prepare(cases)
    baselines: list[Strategy] = [RandomNovel(clusters, config.seed), PopularNovel(clusters, config.backoff_k),
                                 CountArgmax(clusters), backoff, SequenceChoice(clusters, scores),
                                 BackoffTimesSequence(backoff, scores)]
    strategies: list[Strategy] = [*llms, *baselines]
    results = {s.name: StrategyResult(s.name, s.label, s.cadence, s.uses_llm, s.streaming, s.skipped)
               for s in strategies}
    states = [PointState(s, snapshots[s], split_knowledge, {BASE: base_model}, replayed.published_s[s])
              for s in range(len(snapshots))]

    # ---- 3. inference: the base model's plan runs beside the fine-tunes, then everything else
    cache = InferenceCache(cache_dir / "inferences.sqlite" if config.cache else None)
    engine = InferenceEngine(settings, clusters, cache, config.processes, threads=settings.llm_threads)
    infer_task = progress.add_task("LLM inferences", total=None)
    base_plan = _plan([s for s in llms if s.role == BASE and not s.skipped], states, by_state)
    stop = threading.Event()
    beside: threading.Thread | None = None
    needs_training = bool(ft_states)
    if needs_training and base_plan:
        beside = threading.Thread(target=engine.run, name="eval-inference", daemon=True,
                                  kwargs={"requests": base_plan, "stop": stop, "processes": 1,
                                          "on_progress": lambda n: progress.advance(infer_task, n)})
        beside.start()
    ft_log: list[dict[str, Any]] = []
    split_day = split_day_of(ratings, settings.train_fraction)
    with _phase(phases, "finetune_s"):
        try:
            if ft_states:
                tuner = BudgetedFineTuner(
                    settings.model_copy(update={"finetune_threads": settings.eval_finetune_threads}), clusters,
                    base_model, work / "finetuned", config.finetune_budget_s,
                    cache_dir / "finetuned" if config.cache else None, version_of(base_model))
                _fine_tunes(tuner, replayed, timeline, ft_states, split_day, config, llms, states, results, ft_log,
                            progress, console, day_of)
        finally:
            stop.set()
            if beside is not None:
                beside.join()
    with _phase(phases, "calibration_s"):
        calibration = _calibrate(engine, llms, states, replayed, config, settings, clusters, split_day, version_of,
                                 ft_reason)
        if any(s.pooled for s in _calibrated(llms)):
            from models.sequence.build import catalogue

            calibration |= _fit_pool(engine, llms, states, replayed, config, settings, clusters, split_day,
                                     version_of, ratings[:timeline.split_index], catalogue(wsettings, ratings),
                                     calibration, cache_dir if config.cache else None, results)
    with _phase(phases, "inference_s"):
        plan = base_plan + _plan([s for s in llms if s.role != BASE and not s.skipped], states, by_state)
        engine.count(plan)
        progress.update(infer_task, total=None)
        inferred = engine.run(plan, on_progress=lambda n: progress.advance(infer_task, n))
    progress.update(infer_task, visible=False)

    # ---- 4. answers -> outcomes
    head = m.popularity_head(next_totals(split_knowledge))
    bits = m.novelty_bits(next_totals(split_knowledge), list(clusters.clusters))
    with _phase(phases, "answers_s"):
        for strategy in strategies:
            if strategy.skipped:
                continue
            result = results[strategy.name]
            for state in states:
                wall_before = strategy.ledger.wall_s
                answers = strategy.answer(state, by_state[state.point], inferred)
                refresh_wall = (strategy.refresh_wall_s.get(state.point, 0.0) if isinstance(strategy, LlmTableStrategy)
                                else strategy.ledger.wall_s - wall_before)
                if state.point > 0:
                    result.lags_s.append(_lag(strategy, state, refresh_wall))
                for case, answer in zip(by_state[state.point], answers, strict=True):
                    result.outcomes.append(_outcome(case, answer, clusters, scores, head, bits, strata[case.key]))

    with _phase(phases, "free_generation_s"):
        _exact_match(config, llms, results, engine, clusters, states, settings, progress)
    cache.close()
    for strategy in strategies:
        result = results[strategy.name]
        ledger = strategy.ledger
        result.cpu_s, result.inferences = ledger.cpu_s, ledger.inferences
        result.model_updates, result.pairs_changed = ledger.model_updates, ledger.pairs_changed
    users_evaluated = summarise(list(results.values()), len(clusters.clusters), config.bootstrap, config.seed)

    points_info = replayed.infos
    for state, info in enumerate(points_info):
        here = by_state[state]
        info.update({"cases": len(here), "point_cases": sum(c.anchor == "point" for c in here),
                     "request_cases": sum(c.anchor == "request" for c in here),
                     "cases_before_cap": sum(c.state == state for c in every_case),
                     "pairs": len({c.pair for c in here})})
    drift_report = _drift(snapshots, ratings, clusters, settings, config, timeline)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    keyed = {k: v for k, v in settings.model_dump(mode="json").items() if not k.startswith(_UNKEYED)
             and "password" not in k}
    totals = {
        "wall_s": round(time.perf_counter() - started_wall, 1),
        "cpu_s_main": round(time.process_time() - started_cpu, 1),
        "cpu_s_children": round(children.ru_utime + children.ru_stime, 1),  # worker, inference processes
        "worker_cpu_s": replayed.worker_cpu_s, "phases_s": {k: round(v, 1) for k, v in phases.items()},
        "inference": engine.stats.as_dict(), "fine_tunes": ft_log, "calibration": calibration,
        "clusters": clusters.version,
        "all_pairs": len(clusters.clusters) * (len(clusters.clusters) - 1), "sequence": sequence.version,
        "split": time.strftime("%Y-%m-%d %H:%M", time.gmtime(timeline.split_ts)),
        "end": time.strftime("%Y-%m-%d %H:%M", time.gmtime(timeline.end_ts)), "base_model": base_model,
        "model_versions": dict(versions), "cases": len(cases), "users": len(users_evaluated),
        "cases_by_anchor": {a: sum(c.anchor == a for c in cases) for a in ("point", "request")},
        "users_by_anchor": {a: len({c.user_id for c in cases if c.anchor == a}) for a in ("point", "request")},
        "code_version": code, "git_commit": commit, "run_key": run_key(code, config.as_dict(), keyed),
        "settings": keyed, "cache_dir": str(cache_dir) if config.cache else None,
    }
    for bulky in ("finetuned", "lancedb", "faust"):  # the report keeps what they showed; logs stay
        shutil.rmtree(work / bulky, ignore_errors=True)
    return EvalResult(config, list(results.values()), points_info, totals, drift_report)


class _phase:
    """Adds the wall seconds of a block to `phases[name]`."""

    def __init__(self, phases: dict[str, float], name: str) -> None:
        self.phases, self.name = phases, name

    def __enter__(self) -> None:
        self.started = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.phases[self.name] = self.phases.get(self.name, 0.0) + time.perf_counter() - self.started


def _plan(strategies: Sequence[LlmTableStrategy], states: Sequence[PointState], by_state: Mapping[int, list[Case]]
          ) -> list[InferenceRequest]:
    """Every inference these strategies' tables need, state by state (in order: a row's refresh depends on the
    rows before it)."""
    plan: list[InferenceRequest] = []
    for strategy in strategies:
        for state in states:
            plan.extend(strategy.requests(state, by_state[state.point]))
    return plan


def _fine_tunes(tuner: BudgetedFineTuner, replayed: _Replayed, timeline: Timeline, ft_states: Sequence[int],
                split_day: int, config: EvalConfig, llms: Sequence[LlmTableStrategy], states: Sequence[PointState],
                results: Mapping[str, StrategyResult], ft_log: list[dict[str, Any]], progress: Any, console: Any,
                day_of: Any) -> None:
    """Train (or take from the cache) the periodic fine-tunes and the early-window one; put each model into the
    states it serves and charge its cost to the strategies that use it. A failed fine-tune is a result: its
    strategies keep their previous model, or are skipped when there is none."""
    jobs: list[tuple[str, int, int, str]] = []  # (role, state deployed at, until day, tag)
    for state in ft_states:
        until = split_day if state == 0 else day_of(timeline.states[state])
        jobs.append((FINETUNE, state, until, "ft-split" if state == 0 else f"ft-p{state}"))
    calibrates = _calibrated(llms)  # the early model is also what their temperature is fitted with
    if config.early_gap_days > 0 and (calibrates or any(s.role == EARLY and not s.skipped for s in llms)):
        jobs.append((EARLY, 0, split_day - config.early_gap_days, f"ft-early-{config.early_gap_days}d"))
    for role, deployed, until, tag in jobs:
        users = [s for s in llms if s.role == role and not s.skipped]
        if not users and not (role == EARLY and calibrates):
            continue
        task = progress.add_task(f"fine-tune {tag}", total=None)
        try:
            done: FineTuned = tuner.fine_tune(replayed.counts[deployed], until, tag,
                                              lambda d, t: progress.update(task, completed=d, total=t))
        except Exception as exc:  # noqa: BLE001 -- a failed fine-tune is a result to report, not a crash
            console.print(f"[yellow]fine-tune {tag} failed:[/] {exc}")
            ft_log.append({"tag": tag, "until_day": until, "failed": str(exc)[:300]})
            if all(state.models.get(role) is None for state in states):
                for strategy in users:
                    strategy.skipped = results[strategy.name].skipped = f"skipped: fine-tune failed ({exc})"
            continue
        finally:
            progress.update(task, visible=False)
        for state in states[deployed:]:
            state.models = {**state.models, role: str(done.model_path)}  # until a later fine-tune replaces it
        if deployed > 0:
            state = states[deployed]
            state.model_lag_s = {**state.model_lag_s, role: state.knowledge_lag_s + done.wall_s}
        # The early model also calibrates the scored strategies: they pay for it too (conservative -- in production
        # a release is calibrated on its own gate pairs, with no second fine-tune)
        charged = users + ([s for s in calibrates if s not in users] if role == EARLY else [])
        for strategy in charged:
            strategy.ledger.cpu_s += done.cpu_s
            strategy.ledger.wall_s += done.wall_s
        ft_log.append({"tag": tag, "role": role, "until_day": until,
                       "until": time.strftime("%Y-%m-%d", time.gmtime(until * 86_400)), "deployed_state": deployed,
                       "examples": done.examples, "steps": done.steps, "train_s": round(done.train_s, 1),
                       "loss": [round(done.first_loss, 3), round(done.final_loss, 3)], "cpu_s": round(done.cpu_s, 1),
                       "wall_s": round(done.wall_s, 1), "cached": done.cached, **done.timings})


def _calibrated(llms: Sequence[LlmTableStrategy]) -> list[ScoredTableStrategy]:
    """The strategies that read the model's distribution, so whose temperature is fitted."""
    return [s for s in llms if isinstance(s, ScoredTableStrategy) and not s.skipped]


def _calibrate(engine: InferenceEngine, llms: Sequence[LlmTableStrategy], states: Sequence[PointState],
               replayed: _Replayed, config: EvalConfig, settings: Settings, clusters: ClusterSet,
               split_day: int, version_of: Any, ft_reason: str | None) -> dict[str, Any]:
    """Fit the temperature of the scored strategies' distributions (models/calibration.py) before any test case is
    read: the early-window model (the same recipe, trained up to `early_gap_days` before the split) scores the
    held-out pairs of the month it never saw -- the training period's last `early_gap_days` days, with the
    knowledge of its cut, as the fine-tuning gates sample them -- and T maximises the likelihood of those pairs'
    observed next clusters. The test period is never read. The production cycle has the same data for free: its
    gates' held-out pairs follow the model's training period (models/finetune/cycle.py)."""
    from models.calibration import Observed, fit_temperature
    from models.finetune.curation import curate

    scored = _calibrated(llms)
    if not scored:
        return {"skipped": "no strategy reads the model's distribution"}
    early = states[0].models.get(EARLY)
    if early is None:
        reason = ft_reason or ("no early window (EXPLORER_EVAL_EARLY_FINETUNE_GAP_DAYS=0)" if config.early_gap_days <= 0
                               else "the early-window fine-tune failed")
        return {"skipped": f"uncalibrated (T = 1): {reason}"}
    cut = split_day - config.early_gap_days  # the early model's training data ends here (_fine_tunes)
    held_out = curate(replayed.counts[0], clusters, cut, settings).held_out
    requests = [InferenceRequest.of(SERVED_SCORES, early, version_of(early), h.history, h.knowledge) for h in held_out]
    engine.count(requests)
    inferred = engine.run(requests)
    observed = [Observed(inferred[r].result["scores"], h.next_counts) for r, h in zip(requests, held_out, strict=True)]
    try:
        fitted = fit_temperature(observed)
    except ValueError as exc:  # e.g. no held-out transitions in the window: a result to report, not a crash
        return {"skipped": f"uncalibrated (T = 1): {exc}"}
    cpu_s = sum(inferred[r].cpu_s for r in requests)
    for strategy in scored:
        strategy.temperature = fitted.temperature
        strategy.ledger.cpu_s += cpu_s  # what the fit's inferences cost, charged like the strategy's own
    return {**fitted.as_dict(), "model": "early-window fine-tune", "window_days": config.early_gap_days,
            "from": time.strftime("%Y-%m-%d", time.gmtime(cut * 86_400)), "cpu_s": round(cpu_s, 1)}


def _fit_pool(engine: InferenceEngine, llms: Sequence[LlmTableStrategy], states: Sequence[PointState],
              replayed: _Replayed, config: EvalConfig, settings: Settings, clusters: ClusterSet, split_day: int,
              version_of: Any, train_ratings: Sequence[Any], catalogue: Sequence[str], calibration: Mapping[str, Any],
              cache_dir: Path | None, results: Mapping[str, StrategyResult]) -> dict[str, Any]:
    """Fit the pooled strategies' exponents (models/evaluation/pooling.py) on the month before the split, after the
    temperature and before any test case is read: {"pool": the two experts' fit, "pool_prior": the fit with the
    prior as a third}, for the strategies that use each. A pooled strategy that cannot be fitted is skipped, not
    served with unfitted weights."""
    from models.calibration import fit_pool_weights
    from models.counts import DAY_S
    from models.evaluation.pooling import early_sequence_model, next_totals_before, pool_cases, validation_cases
    from models.finetune.curation import knowledge_at

    groups = {key: [s for s in _calibrated(llms) if s.pooled and s.pool_prior == with_prior]
              for key, with_prior in (("pool", False), ("pool_prior", True))}
    groups = {key: pooled for key, pooled in groups.items() if pooled}
    early = states[0].models.get(EARLY)
    reason = calibration.get("skipped") or (None if early is not None else "no early-window fine-tune")
    if reason is not None:
        for strategy in (s for pooled in groups.values() for s in pooled):
            strategy.skipped = results[strategy.name].skipped = f"skipped: unfitted pool ({reason})"
        return {key: {"skipped": reason} for key in groups}
    started = time.process_time()
    cut = split_day - config.early_gap_days
    cut_ts = float(cut * DAY_S)
    cases = validation_cases(train_ratings, clusters.cluster_of, cut_ts, settings, config.horizon,
                             config.request_every, settings.recent_items_kept)
    sequence = early_sequence_model(train_ratings, cut_ts, catalogue, settings,
                                    cache_dir / "sequence" if cache_dir is not None else None)
    knowledge = knowledge_at(replayed.counts[0], clusters, cut, settings)
    assert early is not None
    requests = {pair: InferenceRequest.of(SERVED_SCORES, early, version_of(early), pair, knowledge(pair))
                for pair in sorted({c.pair for c in cases})}
    engine.count(list(requests.values()))
    inferred = engine.run(list(requests.values()))
    rows = {pair: inferred[r].result["scores"] for pair, r in requests.items()}
    scores = SequenceScores(sequence, clusters, config.items_k)
    cpu_s = sum(inferred[r].cpu_s for r in requests.values()) + time.process_time() - started
    out: dict[str, Any] = {}
    for key, pooled in groups.items():
        with_prior = pooled[0].pool_prior
        prior_totals = next_totals_before(replayed.counts[0], cut) if with_prior else None
        observed = pool_cases(cases, rows, scores, prior_totals, pooled[0].prior_k)
        temperature = pooled[0].temperature
        start = (1.0 / temperature, 1.0, *((0.0,) if with_prior else ()))
        try:
            fitted = fit_pool_weights(observed, start)
            if min(fitted.weights[:2]) <= 0:  # the prior's exponent may take either sign
                raise ValueError(f"a non-positive fitted exponent {fitted.weights}: the product cannot use it")
        except ValueError as exc:
            for strategy in pooled:
                strategy.skipped = results[strategy.name].skipped = f"skipped: unfitted pool ({exc})"
            out[key] = {"skipped": str(exc)}
            continue
        for strategy in pooled:
            strategy.temperature, strategy.sequence_weight = 1.0 / fitted.weights[0], fitted.weights[1]
            strategy.prior_weight = fitted.weights[2] if with_prior else 0.0
            strategy.ledger.cpu_s += cpu_s  # the validation inferences and the early sequence model
        out[key] = {**fitted.as_dict(), "temperature": round(1.0 / fitted.weights[0], 3),
                    "sequence_weight": round(fitted.weights[1], 4),
                    **({"prior_weight": round(fitted.weights[2], 4)} if with_prior else {}),
                    "start": [round(w, 4) for w in start], "sequence_model": sequence.version,
                    "validation_cases": len(cases), "validation_pairs": len(requests),
                    "validation_users": len({c.user_id for c in cases}), "cpu_s": round(cpu_s, 1)}
    return out


def _outcome(case: Case, answer: Any, clusters: ClusterSet, scores: SequenceScores, head: frozenset[str],
             bits: Mapping[str, float], strata: Mapping[str, str]) -> m.Outcome:
    cluster = answer.cluster
    return m.Outcome(
        key=case.key, user_id=case.user_id, point=case.state, cluster=cluster, hit=is_hit(cluster, case),
        item_hit=is_item_hit(scores.items(case, cluster), case),
        valid=cluster in clusters.clusters and cluster not in case.pair,
        hit3=is_hit_at(answer.ranking, case, 3) if len(answer.ranking) >= 3 else None,
        log_loss=m.log_loss(answer.distribution, case.next_novel) if answer.distribution is not None else None,
        long_tail=cluster not in head, novelty=bits.get(cluster, 0.0), strata=strata)


def _lag(strategy: Strategy, state: PointState, refresh_wall: float) -> float | None:
    """Seconds from the chunk's events published to this strategy's answers reflecting them; None when its answers
    cannot change at this state (stale; fine-tuning only between fine-tunes; random; the sequence model)."""
    if isinstance(strategy, LlmTableStrategy):
        model_lag = state.model_lag_s.get(strategy.role)
        if strategy.streaming:  # a model deployed now came after the sync: its lag includes it
            return (model_lag if model_lag is not None else state.knowledge_lag_s) + refresh_wall
        return None if model_lag is None else model_lag + refresh_wall
    if strategy.streaming:
        return state.knowledge_lag_s + refresh_wall
    return None


def _exact_match(config: EvalConfig, llms: Sequence[LlmTableStrategy], results: Mapping[str, StrategyResult],
                 engine: InferenceEngine, clusters: ClusterSet, states: Sequence[PointState], settings: Settings,
                 progress: Any) -> None:
    """Free generation on a seeded sample of each strategy's table rows, each prompt as it would build it at the
    last state (cached like every inference: kind "free")."""
    from models.evaluation.strategies import free_generation
    from models.prompts import build_prompt

    if config.validity_sample <= 0:
        return
    names = {cid: c.name for cid, c in clusters.clusters.items()}
    last = states[-1]
    for strategy in llms:
        result = results[strategy.name]
        path = strategy.model_path(last)
        if strategy.skipped or not result.outcomes or path is None:
            continue
        pairs = sorted(strategy.rows)
        sample = random.Random(config.seed).sample(pairs, min(config.validity_sample, len(pairs)))
        prompts = [(p, strategy.prompt_knowledge(last, p)) for p in sample]
        requests = [InferenceRequest.of("free", path, strategy.version_of(path), p, k) for p, k in prompts]
        keys = [r.key(clusters.version, build_prompt(r.pair, r.knowledge, clusters)) for r in requests]
        found = engine.cache.get_many(keys)
        missing = [i for i, key in enumerate(keys) if key not in found]
        if missing:
            task = progress.add_task(f"free generation: {strategy.name}", total=None)
            started_cpu, started = time.process_time(), time.perf_counter()
            texts = free_generation(path, [prompts[i] for i in missing], clusters, settings.llm_threads)
            each_cpu = (time.process_time() - started_cpu) / len(missing)
            each_wall = (time.perf_counter() - started) / len(missing)
            engine.cache.put_many([(keys[i], Inferred({"text": text}, each_cpu, each_wall),
                                    {"kind": "free", "pair": list(prompts[i][0])})
                                   for i, text in zip(missing, texts, strict=True)])
            found.update(engine.cache.get_many([keys[i] for i in missing]))
            progress.update(task, visible=False)
        answers = [(p, str(found[key].result["text"])) for (p, _), key in zip(prompts, keys, strict=True)]
        result.exact_match = m.exact_match_rate(answers, names)
        result.exact_match_n = len(answers)


def _drift(snapshots: Sequence[Snapshot], ratings: Sequence[Any], clusters: ClusterSet, settings: Settings,
           config: EvalConfig, timeline: Timeline) -> dict[str, Any]:
    """Top-5 Jaccard of every pair, two ways. **Knowledge** (what a prompt shows: all-time counts, from the
    pipeline's snapshots): from the split to each point, from state to state, and over the early window (from its
    cut to the split: what the early fine-tune never saw). **Monthly** (as the paper's §2.1: each 30-day window's
    own transitions against the next window's), from the reference counts of every rating."""
    from models.finetune.curation import period_counts, split_day_of
    from models.reference import reference_counts
    from models.counts import DAY_S

    rows = []
    for state in range(1, len(snapshots)):
        rows.append({"point": state, "vs_split": drift(snapshots[0].top_next, snapshots[state].top_next),
                     "vs_previous": drift(snapshots[state - 1].top_next, snapshots[state].top_next)})
    out: dict[str, Any] = {"points": rows}
    counts = reference_counts(ratings, clusters.cluster_of, settings)
    split_day = split_day_of(ratings, settings.train_fraction)
    if config.early_gap_days > 0:
        early = period_counts(counts, min(counts.daily), split_day - config.early_gap_days)
        out["early_to_split"] = {"days": config.early_gap_days, **drift(_ranked(early), snapshots[0].top_next)}
    first, last = min(counts.daily), max(counts.daily)
    start = split_day - MONTH_DAYS * ((split_day - first) // MONTH_DAYS)  # whole windows, one boundary the split
    starts = list(range(start, last + 2 - MONTH_DAYS, MONTH_DAYS))
    windows = [(day, _ranked(period_counts(counts, day, day + MONTH_DAYS))) for day in starts]
    out["monthly"] = [{"from": _date(a * DAY_S), "to": _date(b * DAY_S), **drift(before, after)}
                      for (a, before), (b, after) in zip(windows, windows[1:], strict=False)]
    return out


MONTH_DAYS = 30


def _ranked(counts: Mapping[tuple[str, str], Mapping[str, int]]) -> dict[tuple[str, str], list[tuple[str, int]]]:
    return {pair: sorted(row.items(), key=lambda cn: (-cn[1], cn[0])) for pair, row in counts.items()}


def _date(ts: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts))
