"""`explorer eval --quick` end to end on the real broker: the report's structure, not its values."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import settings_env

pytestmark = pytest.mark.integration

STRATEGIES = ("stale", "rag", "finetune", "hybrid", "random", "popular", "count")


def run_eval(settings, out: Path, *args: str, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, **settings_env(settings)}
    return subprocess.run([sys.executable, "-m", "streams.cli", "eval", "--out", str(out), *args], env=env, check=False,
                          capture_output=True, text=True, timeout=timeout)


def check_report(out: Path) -> dict:
    for name in ("report.md", "results.json", "hit_rate_over_time.png", "refresh_lag.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "hit_rate_over_time.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    rows = [line for line in report.splitlines() if line.startswith("| ") and line.count("|") > 10]
    names = [row.split("|")[1].strip() for row in rows[1:]]  # rows[0] is the header
    assert names == list(STRATEGIES)
    results = json.loads((out / "results.json").read_text())
    assert [s["name"] for s in results["strategies"]] == list(STRATEGIES)
    for strategy in results["strategies"]:
        if strategy["skipped"]:
            assert strategy["skipped"].startswith("skipped:")
            continue
        assert strategy["evaluations"] > 0
        for key in ("hit_rate", "item_hit_rate"):
            interval = strategy[key]
            assert 0.0 <= interval["low"] <= interval["value"] <= interval["high"] <= 1.0, (strategy["name"], key)
        for key in ("validity", "coverage"):
            assert 0.0 <= strategy[key] <= 1.0, (strategy["name"], key)
        if strategy["exact_match"] is not None:
            assert 0.0 <= strategy["exact_match"] <= 1.0
        if strategy["vs_count"] is not None:
            diff = strategy["vs_count"]
            assert -1.0 <= diff["low"] <= diff["value"] <= diff["high"] <= 1.0
        assert all(0.0 <= rate <= 1.0 for rate in strategy["hit_rate_by_point"].values())
        assert strategy["update_cpu_s"] >= 0
    return results


@pytest.mark.timeout(900)  # the session fixtures (clusters, a small sequence model) come first
def test_eval_quick_writes_a_complete_report(serving_settings, tmp_path) -> None:
    out = tmp_path / "report"
    done = run_eval(serving_settings, out, "--quick", timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = check_report(out)
    by_name = {s["name"]: s for s in results["strategies"]}
    assert by_name["finetune"]["skipped"] and by_name["hybrid"]["skipped"]  # quick: no fine-tuning unless asked
    assert not by_name["rag"]["skipped"] and not by_name["count"]["skipped"]


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_eval_quick_with_a_budgeted_fine_tune(serving_settings, tmp_path) -> None:
    out = tmp_path / "report"
    done = run_eval(serving_settings, out, "--quick", "--finetune", "--finetune-budget", "20", timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = check_report(out)
    assert not any(s["skipped"] for s in results["strategies"])
    assert results["totals"]["fine_tunes"]
