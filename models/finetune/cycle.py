"""One fine-tuning cycle: curate -> train -> export -> quantize -> gates -> release (`explorer finetune`).

Inputs default to the system's own: the serving clusters, MovieLens ratings (streams/movielens.py) split at
EXPLORER_TRAIN_FRACTION by event time, and the base GGUF (EXPLORER_FINETUNE_BASE_MODEL_PATH, else the configured
serving model). Every stage reports to an optional rich Progress. The candidate is filed in the registry whatever
the outcome (metadata with metrics, gate results and the gate report); only a model that passed every gate is
released. The relative gate compares the candidate's served hit rate with the model serving now (the registry's
released version, else the base) on the same held-out pairs, so both are always measured; `served` only adds the
base's when the base is not what serves.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from models.clusters import ClusterSet
from models.finetune import curation, export, gates, quantize, registry, scheduler, training
from models.identity import identify
from models.llm import model_version
from streams.settings import Settings

log = logging.getLogger(__name__)
DAY_S = 86_400


@dataclass
class CycleResult:
    version: str
    released: bool
    reasons: list[str]
    metrics: dict[str, dict[str, float]]
    base_metrics: dict[str, dict[str, float]] | None
    baselines: dict[str, float]
    agreement: float  # the gated export agreement (gates.ExportCheck.agreement)
    train: dict[str, Any]
    curation: dict[str, Any]
    quant_type: str
    model_bytes: int
    served_hit_rate: float | None = None
    base_served_hit_rate: float | None = None
    timings: dict[str, float] = field(default_factory=dict)
    model_path: str | None = None
    model_version: str | None = None  # the released/registered model's identity label (models/identity.py)
    gate_report: dict[str, Any] = field(default_factory=dict)  # gates.gate_report: what the release rests on
    calibration: dict[str, Any] = field(default_factory=dict)  # the fitted temperature (models/calibration.py)
    export_check: dict[str, Any] = field(default_factory=dict)  # gates.ExportCheck.as_dict: exact share, gaps

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class _Stages:
    """Thin adapter from stage callbacks to a rich Progress (or nothing)."""

    def __init__(self, progress: Any | None):
        self.progress = progress
        self.timings: dict[str, float] = {}

    def start(self, name: str, total: float | None = 1.0) -> Callable[[float, float | None], None]:
        started = time.perf_counter()
        task = self.progress.add_task(name, total=total) if self.progress is not None else None

        def update(done: float, total_now: float | None = None) -> None:
            self.timings[name] = round(time.perf_counter() - started, 1)
            if self.progress is not None:
                self.progress.update(task, completed=done, total=total_now if total_now is not None else total)

        return update


def run_cycle(settings: Settings, progress: Any | None = None, *, clusters: ClusterSet | None = None,
              ratings: Sequence[Any] | None = None, evaluate_base: bool = True, served: bool = True,
              release_model: bool = True, keep_f16: Path | None = None) -> CycleResult:
    """One cycle. `keep_f16`: also keep the unquantized export there (to compare quantization types).

    The export and the quantized candidate are written under a hidden work folder of the registry, removed when
    the cycle ends, whether it succeeds or fails (a failed cycle leaves no half-written GGUFs behind)."""
    version = _version_name()
    work = registry.llm_root(settings) / f".work-{version}"
    try:
        return _run_cycle(settings, progress, version, work, clusters, ratings, evaluate_base, served, release_model,
                          keep_f16)
    finally:
        _remove_dir(work)


def _run_cycle(settings: Settings, progress: Any | None, version: str, work: Path, clusters: ClusterSet | None,
               ratings: Sequence[Any] | None, evaluate_base: bool, served: bool, release_model: bool,
               keep_f16: Path | None) -> CycleResult:
    stages = _Stages(progress)
    clusters, ratings = _inputs(settings, clusters, ratings)
    base = Path(settings.finetune_base_model_path or settings.resolved_model_path())
    threads = settings.finetune_threads
    serving = Path(registry.current_model_path(settings))  # what users get now: the bar a candidate must clear
    serving_label = model_version(settings, serving)

    step = stages.start("curate")
    counts = curation.transition_counts(ratings, clusters.cluster_of, settings)
    curated = curation.curate(counts, clusters, curation.split_day_of(ratings, settings.train_fraction), settings)
    step(1)
    tokenizer = training.PromptTokenizer(base)
    try:
        base_metrics = base_served = None
        if evaluate_base:
            step = stages.start("evaluate base", None)
            base_metrics = gates.evaluate(base, curated.held_out, clusters, tokenizer, threads, step).metrics
            if served:
                step = stages.start("served hit rate, base", None)
                base_served = gates.served_hit_rate(base, curated.held_out, clusters, settings, step)

        step = stages.start("load base")
        model = training.load_base(base)
        prefix, encoded = training.encode(curated.examples, clusters, tokenizer)
        step(1)
        step = stages.start("train", None)
        model, trained = training.train(model, prefix, encoded, settings, pad_id=tokenizer.eos,
                                        on_step=lambda done, planned, loss: step(done, planned))

        step = stages.start("export")
        f16 = export.export_model(model, base, work / "model-f16.gguf")
        step(1)
        step = stages.start(f"quantize {settings.finetune_quant_type}")
        candidate = quantize.quantize(f16, work / registry.MODEL_FILE, settings.finetune_quant_type, threads)
        if keep_f16 is not None:
            f16.replace(keep_f16)
        else:
            f16.unlink()
        step(1)

        step = stages.start("evaluate candidate", None)
        evaluation = gates.evaluate(candidate, curated.held_out, clusters, tokenizer, threads, step)
        step = stages.start("compare with PyTorch", None)
        export_check = _export_check(model, evaluation, clusters, tokenizer, settings, step)
        agreement = export_check.agreement
        step = stages.start("served hit rate, candidate", None)
        answers = gates.served_answers(candidate, curated.held_out, clusters, settings, step)
        candidate_served = answers.hit_rate
        calibration = _calibrate(answers.observed)
        if base_served is not None and _same_file(serving, base):
            serving_served = base_served
        else:
            step = stages.start("served hit rate, serving model", None)
            serving_served = gates.served_hit_rate(serving, curated.held_out, clusters, settings, step)
    finally:
        tokenizer.close()

    result = gates.check_gates(evaluation.metrics, agreement, settings, candidate_served, serving_served)
    held_out_baselines = gates.baselines(curated.held_out, curated.popular)
    report = gates.gate_report(result, pairs=len(curated.held_out), served=candidate_served,
                               serving_model=serving_label, serving_served=serving_served,
                               count_argmax=held_out_baselines["knowledge_top1_hit_rate"],
                               metrics=evaluation.metrics, export_agreement=agreement)
    report["temperature"] = calibration.get("temperature")  # what the release serves with, beside its gates
    base_identity = identify(settings, base)  # what the candidate was tuned from, by content, not by path
    model_bytes = candidate.stat().st_size
    metadata = {
        "version": version, "created_at": time.time(), "base": str(base),
        "base_model_version": base_identity.label, "base_sha256": base_identity.sha256,
        "clusters_version": clusters.version, "data_period": _period(curated.period),
        "curation": curated.stats, "train": trained.as_dict(), "quant_type": settings.finetune_quant_type,
        "model_bytes": model_bytes, "metrics": evaluation.metrics, "base_metrics": base_metrics,
        # What the model was trained to know, for the scheduler's drift check (models/finetune/scheduler.py).
        "trained_top_next": scheduler.top_next_snapshot(
            curation.period_counts(counts, curated.period.first_day, curated.period.split_day)),
        "baselines": held_out_baselines, "export_agreement": agreement, "export_check": export_check.as_dict(),
        "served_hit_rate": candidate_served, "base_served_hit_rate": base_served, "gates": result.as_dict(),
        "gate_report": report,
        # The temperature "llm-x-sequence" divides this model's log-probabilities by (models/recommend.py), fitted on
        # the held-out pairs above: the period after its training data, never seen by it
        "calibration": calibration,
        "settings": {k: v for k, v in settings.model_dump().items() if k.startswith("finetune_")},
        "timings": stages.timings,
    }
    filed = registry.register(settings, version, candidate if result.passed else None, metadata)
    if not result.passed:
        candidate.unlink(missing_ok=True)  # a rejected model keeps its metadata (and the reasons), not its weights
        log.warning("fine-tuned model %s not released: %s", version, "; ".join(result.reasons))
    elif release_model:
        registry.release(settings, version)
        log.info("released fine-tuned model %s", version)
    return CycleResult(version=version, released=result.passed and release_model, reasons=result.reasons,
                       metrics=evaluation.metrics, base_metrics=base_metrics, baselines=metadata["baselines"],
                       agreement=agreement, export_check=export_check.as_dict(), train=trained.as_dict(),
                       curation=curated.stats,
                       quant_type=settings.finetune_quant_type, model_bytes=model_bytes,
                       served_hit_rate=candidate_served, base_served_hit_rate=base_served, timings=stages.timings,
                       gate_report=report, calibration=calibration,
                       model_path=str(filed.model_path) if result.passed else None,
                       model_version=identify(settings, filed.model_path).label if result.passed else None)


def _calibrate(observed: Sequence[Any]) -> dict[str, Any]:
    """The model's fitted temperature on its held-out distributions (models/calibration.py), or why there is none."""
    from models.calibration import fit_temperature

    if not observed:
        return {"skipped": "novel_choice is 'llm': rows hold one answer, no distribution to calibrate"}
    try:
        return {**fit_temperature(observed).as_dict(), "source": "gate held-out pairs"}
    except ValueError as exc:  # no held-out transition among the candidates
        return {"skipped": f"uncalibrated (T = 1): {exc}"}


def _same_file(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


def _inputs(settings: Settings, clusters: ClusterSet | None, ratings: Sequence[Any] | None
            ) -> tuple[ClusterSet, Sequence[Any]]:
    if clusters is None:
        from models.clusters import load_serving

        clusters = load_serving(settings)
    if ratings is None:
        from streams.movielens import dataset_dir, load_ratings

        ratings = load_ratings(dataset_dir(settings, progress=False))
    return clusters, ratings


def _export_check(model: Any, evaluation: gates.Evaluation, clusters: ClusterSet,
                  tokenizer: training.PromptTokenizer, settings: Settings,
                  step: Callable[[float, float | None], None]) -> gates.ExportCheck:
    """The PyTorch model's greedy answers to a sample of the evaluated prompts (half of each prompt mode) against
    the quantized model's, with the PyTorch model's gap where they differ (gates.ExportCheck)."""
    per_mode = max(1, settings.finetune_agreement_prompts // len(gates.MODES))
    sample = [i for mode in gates.MODES
              for i in [k for k, p in enumerate(evaluation.prompts) if p.mode == mode][:per_mode]]
    max_new = max((len(t) for t in evaluation.tokens), default=0) + 4
    gaps: list[float | None] = []
    for done, index in enumerate(sample):
        static, rest = gates.prompt_tokens(evaluation.prompts[index], clusters, tokenizer)
        gaps.append(training.answer_gap(model, static + rest, evaluation.tokens[index], tokenizer.eog, max_new))
        step(done + 1, len(sample))
    return gates.ExportCheck(tuple(gaps), settings.finetune_agreement_margin_nats)


def _version_name() -> str:
    now = datetime.now(UTC)
    return f"ft-{now:%Y%m%d-%H%M%S}-{now.microsecond:06d}"


def _period(period: curation.Period) -> dict[str, str | int]:
    def iso(day: int) -> str:
        return datetime.fromtimestamp(day * DAY_S, UTC).date().isoformat()

    return {**period.as_dict(), "train_from": iso(period.first_day), "test_from": iso(period.split_day),
            "test_to": iso(period.last_day)}


def _remove_dir(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
