"""Which LLM `explorer demo` serves (streams/demo_model.py): a cycle only when nothing is released, reuse after, and
the base never passed off as a fine-tune. The cycle is a fake that files versions in a real registry."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from models.finetune import registry
from streams.demo_model import ensure_released_model
from streams.settings import Settings

REPORT = {"passed": True, "reasons": [], "held_out_pairs": 150, "served_hit_rate": 0.16,
          "serving_model": "base:SmolLM2.gguf:0123456789abcdef", "serving_served_hit_rate": 0.11,
          "count_argmax_hit_rate": 0.17, "exact_match": 0.93, "hit_rate": 0.15, "export_agreement": 0.96}


class FakeCycle:
    """Files a version the way run_cycle does: released with its weights when `passes`, else metadata only."""

    def __init__(self, tmp: Path, passes: bool) -> None:
        self.tmp, self.passes, self.calls = tmp, passes, []

    def __call__(self, settings: Settings, progress: Any, **kwargs: Any) -> SimpleNamespace:
        self.calls.append((settings.finetune_budget_s, kwargs))
        version = f"ft-fake-{len(self.calls)}"
        report = {**REPORT, "passed": self.passes, "reasons": [] if self.passes else ["exact_match 0.830 < 0.900"]}
        gates = {"passed": self.passes, "reasons": report["reasons"]}
        meta = {"gates": gates, "gate_report": report, "created_at": len(self.calls),
                "settings": {k: v for k, v in settings.model_dump().items() if k.startswith("finetune_")}}
        weights = None
        if self.passes:
            weights = self.tmp / f"{version}.gguf"
            weights.write_bytes(version.encode() * 1000)
        registry.register(settings, version, weights, meta)
        if self.passes:
            registry.release(settings, version)
        return SimpleNamespace(released=self.passes, version=version, reasons=report["reasons"], gate_report=report)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", demo_finetune_budget_s=120.0)


def test_one_cycle_when_nothing_is_released_then_the_release_is_reused(settings, tmp_path) -> None:
    cycle = FakeCycle(tmp_path, passes=True)
    first = ensure_released_model(settings, cycle, say=lambda _: None)
    assert len(cycle.calls) == 1
    budget, kwargs = cycle.calls[0]
    assert budget == 120.0 and kwargs["release_model"] and not kwargs["evaluate_base"]
    assert first.fine_tuned and first.trained_now and first.version == "ft-fake-1"
    assert first.label.startswith("ft-fake-1:") and first.path.endswith("ft-fake-1/model.gguf")
    assert "released by this demo" in first.summary() and "0.160 vs serving model 0.110" in first.summary()
    assert "count argmax 0.170" in first.summary()
    again = ensure_released_model(settings, cycle, say=lambda _: None)
    assert len(cycle.calls) == 1  # reused, not retrained
    assert again.fine_tuned and not again.trained_now and again.version == "ft-fake-1"
    assert "reused" in again.summary() and again.gate_report == REPORT


def test_a_failed_cycle_leaves_the_base_serving_and_saying_so_and_is_not_rerun(settings, tmp_path) -> None:
    cycle = FakeCycle(tmp_path, passes=False)
    failed = ensure_released_model(settings, cycle, say=lambda _: None)
    assert not failed.fine_tuned and failed.version is None and failed.trained_now
    assert failed.label.startswith("base:") and failed.path == settings.resolved_model_path()
    assert failed.summary().startswith("BASE model base:") and "exact_match 0.830 < 0.900" in failed.summary()
    again = ensure_released_model(settings, cycle, say=lambda _: None)
    assert len(cycle.calls) == 1  # the same settings failed already: no second attempt on every demo
    assert not again.fine_tuned and "not retried" in again.note
    other = settings.model_copy(update={"demo_finetune_budget_s": 200.0})
    ensure_released_model(other, cycle, say=lambda _: None)
    assert [budget for budget, _ in cycle.calls] == [120.0, 200.0]  # another budget is another attempt


def test_budget_zero_serves_the_base_labelled_as_such(settings, tmp_path) -> None:
    cycle = FakeCycle(tmp_path, passes=True)
    off = settings.model_copy(update={"demo_finetune_budget_s": 0.0})
    served = ensure_released_model(off, cycle, say=lambda _: None)
    assert not cycle.calls and not served.fine_tuned and served.label.startswith("base:")
    assert "EXPLORER_DEMO_FINETUNE_BUDGET_S=0" in served.summary()
