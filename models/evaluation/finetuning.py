"""The fine-tuning step of the fine-tuning strategies, behind a small interface, with a cache of its models.

`BudgetedFineTuner.fine_tune(counts, until_day, tag)` returns a quantized GGUF fine-tuned on the transitions of
every day before `until_day`. It calls models/finetune's public functions (curate -> train -> export -> quantize:
the cycle of `explorer finetune` without its base-model evaluation and quality gates, which would double the cost
here; the evaluation itself measures the result). Each fine-tune starts from the base model, as the cycle does,
within `eval_finetune_budget_s` of training.

**Cache.** Training is budgeted by wall time, so two runs on a loaded machine make different models. A model is
therefore kept under a key of everything that decides its training -- the base model's identity, the curated
examples (prompt, answer, weight), every `finetune_*` setting and the budget -- and a rerun with the same inputs
re-uses it (and its recorded costs) instead of training a new one, which would also invalidate every cached
inference of it.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson

from models.clusters import ClusterSet
from models.counts import AllCounts
from models.storage import write_atomic
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
    cpu_s: float = 0.0  # process CPU of the whole fine-tune (curation to quantization), as first paid
    wall_s: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    cached: bool = False


class FineTuner(Protocol):
    def fine_tune(self, counts: AllCounts, until_day: int, tag: str, on_step: StepCallback | None = None
                  ) -> FineTuned: ...


def unavailable_reason() -> str | None:
    """Why fine-tuning cannot run here (its modules or dependencies missing), or None when it can."""
    try:
        import gguf  # noqa: F401
        import peft  # noqa: F401

        from models.finetune import curation, export, quantize, training  # noqa: F401
    except ImportError as exc:  # say so rather than fake a number
        return f"fine-tuning unavailable ({exc})"
    return None


# Settings left out of a cached fine-tune's key because they cannot change the model it holds: threads change the
# speed, not what a step computes; the agreement settings shape only the release cycle's export check, after
# training. (The gates' settings are read after training too, but were in the key before this list existed;
# they stay, so that models cached before it keep their keys.)
_NOT_WHAT_IS_TRAINED = frozenset({"finetune_threads", "finetune_agreement_prompts",
                                  "finetune_agreement_margin_nats"})


class BudgetedFineTuner:
    """models/finetune's curate -> train -> export -> quantize, each run within a training budget; models kept in
    `cache_dir` (None: no cache, the model is written to `work_dir`)."""

    def __init__(self, settings: Settings, clusters: ClusterSet, base_model: str | Path, work_dir: Path,
                 budget_s: float, cache_dir: Path | None = None, base_version: str = "") -> None:
        self.settings, self.clusters, self.base = settings, clusters, Path(base_model)
        self.work_dir, self.budget_s, self.cache_dir, self.base_version = work_dir, budget_s, cache_dir, base_version

    def cache_key(self, curated: Any) -> str:
        digest = hashlib.sha256()
        tuning = {k: str(v) for k, v in self.settings.model_dump().items() if k.startswith("finetune_")
                  and k not in _NOT_WHAT_IS_TRAINED}
        digest.update(orjson.dumps({"base": self.base_version or str(self.base), "budget_s": self.budget_s,
                                    "settings": tuning}, option=orjson.OPT_SORT_KEYS))
        for example in curated.examples:
            digest.update(orjson.dumps([example.segments(self.clusters).text, example.target, example.weight]))
        return digest.hexdigest()[:16]

    def fine_tune(self, counts: AllCounts, until_day: int, tag: str, on_step: StepCallback | None = None
                  ) -> FineTuned:
        from models.finetune import curation

        cpu, wall = time.process_time(), time.perf_counter()
        curated = curation.curate(counts, self.clusters, until_day, self.settings)
        key = self.cache_key(curated)
        if self.cache_dir is not None:
            hit = self._cached(key)
            if hit is not None:
                return hit
        target_dir = self.cache_dir if self.cache_dir is not None else self.work_dir
        done = self._train(curated, target_dir / f"{key}.gguf" if self.cache_dir is not None
                           else target_dir / f"{tag}.gguf", tag, on_step)
        done.cpu_s, done.wall_s = time.process_time() - cpu, time.perf_counter() - wall
        if self.cache_dir is not None:
            meta = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(done).items()}
            write_atomic(self.cache_dir / f"{key}.json", orjson.dumps(meta, option=orjson.OPT_INDENT_2))
        return done

    def _cached(self, key: str) -> FineTuned | None:
        assert self.cache_dir is not None
        meta_path, model_path = self.cache_dir / f"{key}.json", self.cache_dir / f"{key}.gguf"
        if not (meta_path.is_file() and model_path.is_file()):
            return None
        meta = orjson.loads(meta_path.read_bytes())
        meta.update(model_path=model_path, cached=True)
        return FineTuned(**meta)

    def _train(self, curated: Any, out_path: Path, tag: str, on_step: StepCallback | None) -> FineTuned:
        from models.finetune import export, quantize, training

        timings: dict[str, float] = {}
        started = time.perf_counter()
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
        out_path.parent.mkdir(parents=True, exist_ok=True)
        f16 = export.export_model(model, self.base, self.work_dir / f"{tag}-f16.gguf")
        partial = self.work_dir / f"{tag}.gguf"
        quantize.quantize(f16, partial, self.settings.finetune_quant_type, self.settings.finetune_threads)
        f16.unlink(missing_ok=True)
        if partial != out_path:
            shutil.move(str(partial), str(out_path))  # into the cache only once complete
        timings["export_quantize_s"] = round(time.perf_counter() - tick, 1)
        return FineTuned(out_path, len(curated.examples), trained.steps, trained.train_s, trained.first_loss,
                         trained.final_loss, timings=timings)
