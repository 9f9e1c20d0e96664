"""`explorer eval --quick` end to end on the real broker: the report's structure, not its values."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import settings_env

pytestmark = pytest.mark.integration

STRATEGIES = ("stale", "rag", "finetune", "hybrid", "hybrid-scores", "hybrid-poe", "hybrid-poe-seq", "hybrid-seq",
              "hybrid-seq-sampled", "hybrid-seq-sampled-sq", "hybrid-seq-fitted", "hybrid-seq-fitted-prior",
              "finetune-early", "hybrid-early", "random", "popular", "count", "backoff", "sequence", "backoff-x-sequence")
PLOTS = ("hit_rate_over_time.png", "refresh_lag.png", "hit_vs_novelty.png", "hit_by_stratum.png")
RANKERS = ("random", "popular", "count", "backoff", "sequence", "backoff-x-sequence")  # hit@3 (and the scored LLM tables)
SCORED = ("hybrid-scores", "hybrid-poe", "hybrid-poe-seq", "hybrid-seq", "hybrid-seq-sampled", "hybrid-seq-sampled-sq",
          "hybrid-seq-fitted", "hybrid-seq-fitted-prior")
DISTRIBUTIONS = ("random", "popular", "backoff", "sequence", "backoff-x-sequence", *SCORED)  # log-loss


def run_eval(settings, out: Path, *args: str, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, **settings_env(settings)}
    return subprocess.run([sys.executable, "-m", "streams.cli", "eval", "--out", str(out), *args], env=env, check=False,
                          capture_output=True, text=True, timeout=timeout)


def in_unit(interval: dict, low: float = 0.0, high: float = 1.0) -> bool:
    return low <= interval["low"] <= interval["value"] <= interval["high"] <= high


def check_report(out: Path) -> dict:
    for name in ("report.md", "results.json", *PLOTS):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for name in PLOTS:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    report = (out / "report.md").read_text()
    header = next(i for i, line in enumerate(report.splitlines()) if line.startswith("| strategy | hit@1"))
    lines = report.splitlines()[header + 2:]
    names = [row.split("|")[1].strip() for row in itertools.takewhile(lambda line: line.startswith("| "), lines)]
    assert names == list(STRATEGIES)
    for section in ("## Where a method gains", "## Drift", "## Run", "Run key"):
        assert section in report
    results = json.loads((out / "results.json").read_text())
    assert [s["name"] for s in results["strategies"]] == list(STRATEGIES)
    totals = results["totals"]
    assert totals["cases"] == sum(p["cases"] for p in results["points"]) > 0
    assert totals["run_key"] and totals["code_version"] and totals["wall_s"] > 0 and totals["cpu_s_main"] > 0
    assert totals["settings"]["eval_seed"] == results["config"]["seed"]
    assert not any("password" in key for key in totals["settings"])
    for row in results["drift"]["points"]:
        for side in ("vs_split", "vs_previous"):
            assert 0.0 <= row[side]["mean_jaccard"] <= 1.0
    assert results["drift"]["monthly"] and all(0.0 <= r["mean_jaccard"] <= 1.0 for r in results["drift"]["monthly"])
    evaluated = [s for s in results["strategies"] if not s["skipped"]]
    for strategy in results["strategies"]:
        if strategy["skipped"]:
            assert strategy["skipped"].startswith("skipped:")
            continue
        name, metrics = strategy["name"], strategy["metrics"]
        assert strategy["evaluations"] == totals["cases"]  # every strategy answers the same cases
        for key in ("hit", "item_hit", "long_tail"):
            assert in_unit(metrics[key]), (name, key)
        assert ("hit3" in metrics) == (name in RANKERS + SCORED) and ("log_loss" in metrics) == (name in DISTRIBUTIONS)
        if "hit3" in metrics:
            assert in_unit(metrics["hit3"]) and metrics["hit3"]["value"] >= metrics["hit"]["value"], name
        if "log_loss" in metrics:
            assert in_unit(metrics["log_loss"], 0.0, 25.0), name
        assert metrics["novelty"]["value"] > 0
        for key in ("validity", "coverage"):
            assert 0.0 <= strategy[key] <= 1.0, (name, key)
        assert strategy["validity"] == 1.0  # every strategy serves a real cluster outside the pair
        if strategy["exact_match"] is not None:
            assert 0.0 <= strategy["exact_match"] <= 1.0
        for diff in strategy["vs_count"].values():
            assert in_unit(diff, -1.0, 1.0), name
        assert (name == "count") == (not strategy["vs_count"])
        for dimension, values in strategy["strata"].items():
            assert sum(v["cases"] for v in values.values()) == totals["cases"], (name, dimension)
            for value in values.values():
                if value["cases"]:
                    assert in_unit(value["hit"]), (name, dimension)
        assert all(0.0 <= rate <= 1.0 for rate in strategy["hit_rate_by_point"].values())
        assert strategy["update_cpu_s"] >= 0
    assert {s["name"] for s in evaluated} >= {"stale", "rag", *RANKERS}
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
    assert "no strategy reads" in results["totals"]["calibration"]["skipped"]  # the scored ones need a fine-tune
    inference = results["totals"]["inference"]
    assert inference["inferred"] == inference["unique"] > 0 and inference["cached"] == 0  # a fresh cache

    # a rerun through the pipeline again: every inference comes from the cache, every number is the same
    again_out = tmp_path / "again"
    done = run_eval(serving_settings, again_out, "--quick", timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    again = check_report(again_out)
    assert again["totals"]["inference"]["inferred"] == 0
    assert again["totals"]["inference"]["cached"] == inference["unique"]
    assert again["totals"]["run_key"] == results["totals"]["run_key"]
    for first, second in zip(results["strategies"], again["strategies"], strict=True):
        assert first["metrics"] == second["metrics"] and first["strata"] == second["strata"], first["name"]


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_eval_quick_with_a_budgeted_fine_tune(serving_settings, tmp_path) -> None:
    out = tmp_path / "report"
    done = run_eval(serving_settings, out, "--quick", "--finetune", "--finetune-budget", "20", timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = check_report(out)
    assert not any(s["skipped"] for s in results["strategies"])
    assert results["totals"]["fine_tunes"]
    # the scored strategies' temperature was fitted with the early-window model on the month before the split
    calibration = results["totals"]["calibration"]
    assert calibration["temperature"] > 0 and calibration["prompts"] > 0 and calibration["transitions"] > 0
    assert calibration["log_loss"] <= calibration["log_loss_uncalibrated"]
    # ... and the pooled strategy's exponents on user-level cases of that month, no worse than the unfitted product
    pool = calibration["pool"]
    assert pool["validation_cases"] > 0 and pool["validation_pairs"] > 0 and min(pool["weights"]) > 0
    assert pool["log_loss"] <= pool["log_loss_start"]
    with_prior = calibration["pool_prior"]  # a third exponent, the prior's, on the same cases: no worse a fit
    assert len(with_prior["weights"]) == 3 and with_prior["validation_cases"] == pool["validation_cases"]
    assert with_prior["log_loss"] <= pool["log_loss"] + 1e-9
