"""The fine-tuning step of the fine-tuning-only and hybrid strategies, behind a small interface.

`FineTuner.fine_tune(counts, until_day)` returns a quantized GGUF fine-tuned on the transitions of every day before
`until_day`. The implementation calls models/finetune's public functions (curate -> train -> export -> quantize:
the cycle of `explorer finetune` without its base-model evaluation and quality gates, which would double the cost
here; the evaluation itself measures the result). Each fine-tune starts from the base model, as the cycle does, on
all data up to the point, within `eval_finetune_budget_s` of training.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from models.clusters import ClusterSet
from models.counts import AllCounts
from streams.settings import Settings

StepCallback = Callable[[int, int], None]  # (done, total)


@dataclass
class FineTuned:
    model_path: Path
    examples: int
    steps: int
    train_s: float
    first_loss: float
    final_loss: float
    timings: dict[str, float] = field(default_factory=dict)


class FineTuner(Protocol):
    def fine_tune(self, counts: AllCounts, until_day: int, tag: str, on_step: StepCallback | None = None
                  ) -> FineTuned: ...


def unavailable_reason() -> str | None:
    """Why fine-tuning cannot run here (its modules or dependencies missing), or None when it can."""
    try:
        import gguf  # noqa: F401
        import peft  # noqa: F401

        from models.finetune import curation, export, quantize, training  # noqa: F401
    except ImportError as exc:  # another session builds models/finetune; say so rather than fake a number
        return f"fine-tuning unavailable ({exc})"
    return None


class BudgetedFineTuner:
    """models/finetune's curate -> train -> export -> quantize, each run within a training budget."""

    def __init__(self, settings: Settings, clusters: ClusterSet, base_model: str | Path, work_dir: Path,
                 budget_s: float) -> None:
        self.settings, self.clusters, self.base = settings, clusters, Path(base_model)
        self.work_dir, self.budget_s = work_dir, budget_s

    def fine_tune(self, counts: AllCounts, until_day: int, tag: str, on_step: StepCallback | None = None
                  ) -> FineTuned:
        from models.finetune import curation, export, quantize, training

        timings: dict[str, float] = {}
        started = time.perf_counter()
        curated = curation.curate(counts, self.clusters, until_day, self.settings)
        tokenizer = training.PromptTokenizer(self.base)
        try:
            model: Any = training.load_base(self.base)
            prefix, encoded = training.encode(curated.examples, self.clusters, tokenizer)
            pad = tokenizer.eos
        finally:
            tokenizer.close()
        timings["prepare_s"] = round(time.perf_counter() - started, 1)
        tick = time.perf_counter()
        model, trained = training.train(model, prefix, encoded, self.settings, pad_id=pad, budget_s=self.budget_s,
                                        on_step=(lambda done, planned, _loss: on_step(done, planned))
                                        if on_step else None)
        timings["train_s"] = round(time.perf_counter() - tick, 1)
        tick = time.perf_counter()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        f16 = export.export_model(model, self.base, self.work_dir / f"{tag}-f16.gguf")
        out = quantize.quantize(f16, self.work_dir / f"{tag}.gguf", self.settings.finetune_quant_type,
                                self.settings.finetune_threads)
        f16.unlink(missing_ok=True)
        timings["export_quantize_s"] = round(time.perf_counter() - tick, 1)
        return FineTuned(out, len(curated.examples), trained.steps, trained.train_s, trained.first_loss,
                         trained.final_loss, timings)
