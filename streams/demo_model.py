"""Which LLM the demo serves: the released fine-tune, or -- when none has been released yet -- one fine-tuning cycle
first (`explorer demo`, before its worker starts, so the worker loads whatever the cycle released).

* A released model exists: it is reused, nothing is trained.
* None exists: one cycle (models/finetune/cycle.py) with `EXPLORER_DEMO_FINETUNE_BUDGET_S` of training, its gates
  (the absolute ones and the relative one: no worse than the serving base on the same held-out pairs) deciding
  the release. The base model's free-generation evaluation is skipped (only the "before" numbers of
  `explorer finetune`); the base's served hit rate is measured anyway, as the bar of the relative gate.
* A cycle with the same training settings already failed its gates: it is not re-run on every demo (it would cost
  the same minutes and most likely fail the same way); the base serves, and the summary says why and how to try
  again (`explorer finetune`, or another budget).
* Budget 0: fine-tuning is off; the base serves.

Whatever happens, the result says which model serves and, for a fine-tune, its gate figures; when the base serves,
it says so (its answers carry a `base:` model_version and the worker logs a warning, models/llm.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streams.settings import Settings

Cycle = Callable[..., Any]  # models.finetune.cycle.run_cycle's signature


@dataclass(frozen=True)
class ServingLLM:
    path: str
    label: str  # the model_version its answers carry (models.llm.model_version)
    fine_tuned: bool
    version: str | None = None  # the registry version serving, when a fine-tune serves
    trained_now: bool = False  # this demo ran the cycle that released it (or failed to)
    gate_report: dict[str, Any] = field(default_factory=dict)  # of the serving fine-tune, or of the failed attempt
    note: str = ""  # why the base serves, when it does

    def summary(self) -> str:
        """One line for the demo's summary table."""
        if self.fine_tuned:
            how = "fine-tuned and released by this demo" if self.trained_now else "released fine-tune, reused"
            return f"{self.label} ({how}); {format_gates(self.gate_report)}"
        return f"BASE model {self.label}, not fine-tuned: {self.note}"


def format_gates(report: dict[str, Any]) -> str:
    if not report:
        return "no gate report recorded"

    def num(key: str) -> str:
        value = report.get(key)
        return "-" if value is None else f"{value:.3f}"

    return (f"held-out served hit rate {num('served_hit_rate')} vs serving model {num('serving_served_hit_rate')} "
            f"(count argmax {num('count_argmax_hit_rate')}, {report.get('held_out_pairs', '?')} pairs), exact match "
            f"{num('exact_match')}, llama.cpp vs PyTorch {num('export_agreement')}"
            + (f", temperature {report['temperature']:.2f}" if report.get("temperature") else ""))


def ensure_released_model(settings: Settings, cycle: Cycle | None = None, progress: Any | None = None,
                          say: Callable[[str], None] = print) -> ServingLLM:
    """The model the demo's worker will serve, after one fine-tuning cycle when none is released yet."""
    from models.finetune import registry

    current = registry.current_version(settings)
    if current is not None and Path(registry.current_model_path(settings)).is_file():
        model = registry.get_version(settings, current)
        return _serving(settings, trained_now=False, report=_report_of(model.metadata))
    budget = settings.demo_finetune_budget_s
    if budget <= 0:
        return _serving(settings, note="fine-tuning is off in the demo (EXPLORER_DEMO_FINETUNE_BUDGET_S=0)")
    tuning = _training_settings(settings, budget)
    failed = [m for m in registry.list_versions(settings)
              if not m.passed_gates and _same_training(m.metadata.get("settings", {}), tuning)]
    if failed:
        last = failed[-1]
        reasons = "; ".join(last.metadata.get("gates", {}).get("reasons", [])) or "no reasons recorded"
        return _serving(settings, report=_report_of(last.metadata),
                        note=f"the demo's fine-tune {last.version} with these settings failed its gates ({reasons}); "
                             "not retried -- run `explorer finetune` or change EXPLORER_DEMO_FINETUNE_BUDGET_S")
    if cycle is None:
        from models.finetune.cycle import run_cycle as cycle
    say(f"No fine-tuned LLM released yet: one fine-tuning cycle first (training budget {budget:.0f}s, "
        "then export, quantization and the release gates)...")
    result = cycle(settings.model_copy(update={"finetune_budget_s": budget}), progress, evaluate_base=False,
                   served=False, release_model=True)
    if result.released:
        return _serving(settings, trained_now=True, report=result.gate_report)
    return _serving(settings, trained_now=True, report=result.gate_report,
                    note=f"the demo's fine-tune {result.version} failed its gates ({'; '.join(result.reasons)})")


def _serving(settings: Settings, *, trained_now: bool = False, report: dict[str, Any] | None = None,
             note: str = "") -> ServingLLM:
    from models.finetune import registry
    from models.llm import is_fine_tuned, model_version

    path = registry.current_model_path(settings)
    if not Path(path).is_file():
        return ServingLLM(path, "missing", False, note=f"no model file at {path}; misses use the fallback")
    tuned = is_fine_tuned(settings, path)
    return ServingLLM(path, model_version(settings, path), tuned, registry.current_version(settings) if tuned else None,
                      trained_now, dict(report or {}), note)


def _report_of(metadata: dict[str, Any]) -> dict[str, Any]:
    """A version's gate report (versions filed before the relative gate: rebuilt from what they recorded)."""
    report = metadata.get("gate_report")
    if report:
        return dict(report)
    metrics = metadata.get("metrics", {})
    return {"served_hit_rate": metadata.get("served_hit_rate"),
            "serving_served_hit_rate": metadata.get("base_served_hit_rate"),
            "count_argmax_hit_rate": metadata.get("baselines", {}).get("knowledge_top1_hit_rate"),
            "exact_match": metrics.get("knowledge", {}).get("exact_match"),
            "export_agreement": metadata.get("export_agreement")}


def _training_settings(settings: Settings, budget: float) -> dict[str, str]:
    dumped = settings.model_copy(update={"finetune_budget_s": budget}).model_dump()
    return {k: str(v) for k, v in dumped.items() if k.startswith("finetune_") and k != "finetune_threads"}


def _same_training(recorded: dict[str, Any], tuning: dict[str, str]) -> bool:
    return bool(recorded) and all(str(recorded.get(k)) == v for k, v in tuning.items())
