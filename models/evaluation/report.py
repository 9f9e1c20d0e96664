"""The evaluation report: `report.md` (overall, per-stratum and drift tables, costs, seeds and settings),
`results.json`, and the PNG plots (hit rate over time, refresh lag, hit rate vs novelty, hit rate per stratum)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import orjson

from models.evaluation.costs import median
from models.evaluation.strata import DIMENSIONS

REPORT, RESULTS, ANSWERS = "report.md", "results.json", "answers.jsonl"
HIT_PLOT, LAG_PLOT = "hit_rate_over_time.png", "refresh_lag.png"
NOVELTY_PLOT, STRATA_PLOT = "hit_vs_novelty.png", "hit_by_stratum.png"
PLOTS = (HIT_PLOT, LAG_PLOT, NOVELTY_PLOT, STRATA_PLOT)
COLUMNS = ("strategy", "hit@1 [95% CI]", "Δ hit@1 vs count [95% CI]", "hit@3 [95% CI]", "Δ hit@3 vs count",
           "log-loss [95% CI]", "item hit@10", "distinct clusters", "long-tail share", "novelty (bits)",
           "validity", "exact match (free gen.)", "update CPU s", "LLM inferences", "model updates",
           "pairs a full table re-infers", "lag p50 (s)", "update cadence")
DIMENSION_TITLES = {"support": "pair support in the serving knowledge (transitions)",
                    "sparse": "sparse pairs (support < 5, issue 13's target 2) vs the rest",
                    "retrieved": "the user's next novel cluster vs the pair's top-3 retrieved next clusters",
                    "anchor": "case anchor"}


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _num(value: float | None, digits: int = 3) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _interval(interval: Any, digits: int = 3) -> str:
    if interval is None or math.isnan(interval.value):
        return "–"
    return f"{interval.value:.{digits}f} [{interval.low:.{digits}f}, {interval.high:.{digits}f}]"


def _difference(interval: Any) -> str:
    if interval is None or math.isnan(interval.value):
        return "–"
    mark = " *" if interval.excludes_zero() else ""
    return f"{interval.value:+.3f} [{interval.low:+.3f}, {interval.high:+.3f}]{mark}"


def table_rows(result: Any) -> list[list[str]]:
    rows = []
    for s in result.strategies:
        if s.skipped or not s.outcomes:
            rows.append([s.name, s.skipped or "no cases"] + ["–"] * (len(COLUMNS) - 3) + [s.cadence])
            continue
        lag = median([lag for lag in s.lags_s if lag is not None])
        metrics, vs = s.metrics, s.vs_count
        reference = s.name == "count"
        rows.append([
            s.name, _interval(metrics.get("hit")), "(baseline)" if reference else _difference(vs.get("hit")),
            _interval(metrics.get("hit3")), "(baseline)" if reference and "hit3" in metrics else
            _difference(vs.get("hit3")), _interval(metrics.get("log_loss"), 2), _num(_value(metrics, "item_hit")),
            str(s.distinct), _num(_value(metrics, "long_tail")), _num(_value(metrics, "novelty"), 2),
            _num(s.validity), f"{_num(s.exact_match)} (n={s.exact_match_n})" if s.exact_match_n else "–",
            f"{s.cpu_s:.1f}", str(s.inferences) if s.uses_llm else "–", str(s.model_updates) if s.uses_llm else "–",
            str(s.pairs_changed) if s.uses_llm else "–",
            "never" if lag is None and not s.streaming else ("–" if lag is None else f"{lag:.1f}"), s.cadence,
        ])
    return rows


def _value(metrics: dict[str, Any], name: str) -> float | None:
    interval = metrics.get(name)
    return None if interval is None else interval.value


def markdown_table(result: Any) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(result)]
    return "\n".join(lines)


def strata_table(result: Any, dimension: str) -> str:
    """One row per strategy, one column per stratum value: hit@1 [CI] and the paired Δ to count."""
    values = DIMENSIONS[dimension]
    counted = next((s for s in result.strategies if s.strata), None)
    heads = [f"{v} (n={counted.strata[dimension][v]['cases']}, {counted.strata[dimension][v]['users']} users)"
             if counted else v for v in values]
    lines = ["| strategy | " + " | ".join(heads) + " |", "|" + "---|" * (len(values) + 1)]
    for s in result.strategies:
        if s.skipped or not s.strata:
            continue
        cells = []
        for v in values:
            numbers = s.strata[dimension][v]
            cell = _interval(numbers["hit"])
            if "vs_count" in numbers:
                cell += f"<br>Δ {_difference(numbers['vs_count'])}"
            cells.append(cell)
        lines.append(f"| {s.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def best_free_table(result: Any) -> str:
    """Each LLM strategy's paired hit@1 difference to the best LLM-free strategy, overall and per stratum (the
    best there)."""
    llm = [s for s in result.strategies if s.vs_best_free]
    if not llm:
        return "No LLM strategy was evaluated."
    columns = [(d, v) for d in DIMENSIONS for v in DIMENSIONS[d]]
    lines = ["| strategy | overall | " + " | ".join(f"{d}: {v}" for d, v in columns) + " |",
             "|" + "---|" * (len(columns) + 2)]
    for s in llm:
        cells = [f"{_difference(s.vs_best_free['hit'])} vs {s.vs_best_free['against']}"]
        for d, v in columns:
            numbers = s.strata[d][v]
            cells.append(f"{_difference(numbers['vs_best_free'])} vs {numbers['best_free']}"
                         if "vs_best_free" in numbers else "–")
        lines.append(f"| {s.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def drift_table(result: Any) -> str:
    lines = ["| point | vs split: mean Jaccard (pairs) | weighted | pairs ≥20: mean (pairs) | unchanged share | "
             "new pairs | vs previous state: mean | weighted |", "|---|---|---|---|---|---|---|---|"]
    for row in result.drift.get("points", []):
        a, b = row["vs_split"], row["vs_previous"]
        lines.append(f"| {row['point']} | {_num(a['mean_jaccard'])} ({a['pairs']}) | {_num(a['weighted_jaccard'])} | "
                     f"{_num(a['dense_mean_jaccard'])} ({a['dense_pairs']}) | {_num(a['unchanged_share'])} | "
                     f"{a['new_pairs']} | {_num(b['mean_jaccard'])} | {_num(b['weighted_jaccard'])} |")
    early = result.drift.get("early_to_split")
    if early:
        lines.append(f"| early cut ({early['days']} d before) → split | {_num(early['mean_jaccard'])} "
                     f"({early['pairs']}) | {_num(early['weighted_jaccard'])} | {_num(early['dense_mean_jaccard'])} "
                     f"({early['dense_pairs']}) | {_num(early['unchanged_share'])} | {early['new_pairs']} | – | – |")
    lines += ["", "| month over month: 30-day windows starting | mean Jaccard (pairs) | weighted | "
              "pairs ≥20: mean (pairs) | unchanged share |", "|---|---|---|---|---|"]
    for row in result.drift.get("monthly", []):
        lines.append(f"| {row['from']} → {row['to']} | {_num(row['mean_jaccard'])} ({row['pairs']}) | "
                     f"{_num(row['weighted_jaccard'])} | {_num(row['dense_mean_jaccard'])} ({row['dense_pairs']}) | "
                     f"{_num(row['unchanged_share'])} |")
    return "\n".join(lines)


def write_report(result: Any, out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"report": out_dir / REPORT, "results": out_dir / RESULTS, "answers": out_dir / ANSWERS}
    paths.update({name: out_dir / name for name in PLOTS})
    _plot_hits(result, paths[HIT_PLOT])
    _plot_lags(result, paths[LAG_PLOT])
    _plot_novelty(result, paths[NOVELTY_PLOT])
    _plot_strata(result, paths[STRATA_PLOT])
    data = orjson.dumps(as_json(result), option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
    paths["results"].write_bytes(data)
    paths["report"].write_text(_markdown(result), encoding="utf-8")
    _write_answers(result, paths["answers"])
    cache_dir = result.totals.get("cache_dir")
    if cache_dir:  # every run's results, by its key (code version + configuration + settings)
        keyed = Path(cache_dir) / "runs" / f"{result.totals['run_key']}.json"
        keyed.parent.mkdir(parents=True, exist_ok=True)
        keyed.write_bytes(data)
    return paths


def _write_answers(result: Any, path: Path) -> None:
    """Every strategy's answer to every case, one JSON line each: what a reader needs to check a table, or to ask
    a question the report does not (which clusters one strategy serves and another never does)."""
    with path.open("wb") as out:
        for s in result.strategies:
            for o in s.outcomes:
                out.write(orjson.dumps({
                    "strategy": s.name, "case": [str(part) for part in o.key], "user": o.user_id, "point": o.point,
                    "cluster": o.cluster, "hit": o.hit, "hit3": o.hit3, "log_loss": o.log_loss,
                    "item_hit": o.item_hit, "valid": o.valid, "long_tail": o.long_tail, "strata": dict(o.strata),
                }) + b"\n")


def _intervals(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v.as_dict() for k, v in values.items()}


def _plain(values: dict[str, Any]) -> dict[str, Any]:
    """Intervals as dicts, everything else as it is."""
    return {k: (v.as_dict() if hasattr(v, "as_dict") else v) for k, v in values.items()}


def as_json(result: Any) -> dict[str, Any]:
    return {
        "config": result.config.as_dict(),
        "strategies": [{
            "name": s.name, "label": s.label, "skipped": s.skipped, "cadence": s.cadence, "uses_llm": s.uses_llm,
            "metrics": _intervals(s.metrics), "vs_count": _intervals(s.vs_count),
            "vs_best_free": _plain(s.vs_best_free),
            "strata": {d: {v: _plain(numbers) for v, numbers in per.items()} for d, per in s.strata.items()},
            "validity": s.validity, "exact_match": s.exact_match, "exact_match_n": s.exact_match_n,
            "distinct_clusters": s.distinct, "coverage": s.coverage, "update_cpu_s": round(s.cpu_s, 2),
            "llm_inferences": s.inferences, "model_updates": s.model_updates, "pairs_changed": s.pairs_changed,
            "lags_s": [None if lag is None else round(lag, 2) for lag in s.lags_s],
            "hit_rate_by_point": {str(k): v for k, v in s.by_point.items()}, "evaluations": len(s.outcomes),
        } for s in result.strategies],
        "points": result.points, "drift": result.drift, "totals": result.totals,
    }


def _calibration_text(calibration: dict[str, Any]) -> str:
    if "temperature" not in calibration:
        return calibration.get("skipped", "not fitted (T = 1)")
    return (f"T = {calibration['temperature']:.2f}, fitted on the {calibration['prompts']} held-out pairs "
            f"({calibration['transitions']} transitions) of the {calibration['window_days']} days from "
            f"{calibration['from']} to the split, scored by the {calibration['model']} that never saw them — never on "
            f"the test period; their log-loss {calibration['log_loss_uncalibrated']:.2f} at T = 1, "
            f"{calibration['log_loss']:.2f} at T ({calibration['cpu_s']} CPU s)."
            f"{_pool_text(calibration.get('pool'), 'hybrid-seq-fitted')}"
            f"{_pool_text(calibration.get('pool_prior'), 'hybrid-seq-fitted-prior')}")


def _pool_text(pool: dict[str, Any] | None, name: str) -> str:
    if not pool:
        return ""
    if "weights" not in pool:
        return f" {name}'s exponents: not fitted ({pool.get('skipped', 'no reason given')})."
    prior = f", next-cluster prior {pool['prior_weight']:+.3f}" if "prior_weight" in pool else ""
    return (f" {name}'s exponents (models/evaluation/pooling.py), fitted on {pool['validation_cases']} "
            f"request cases of {pool['validation_users']} users in the same 30 days ({pool['validation_pairs']} pairs "
            f"scored by the same model, a sequence model `{pool['sequence_model']}` trained on the ratings before "
            f"them): LLM temperature {pool['temperature']:.2f}, sequence weight {pool['sequence_weight']:.3f}{prior}; "
            f"those cases' log-loss {pool['log_loss_start']:.3f} with the unfitted product (T, 1), "
            f"{pool['log_loss']:.3f} fitted ({pool['cpu_s']} CPU s).")


def _markdown(result: Any) -> str:
    config, totals = result.config, result.totals
    points = "\n".join(f"| {p['point']} | {p.get('date', '')} | {p['events']} | {p['sync_s']} | {p.get('cases', '')} "
                       f"| {p.get('point_cases', '')} | {p.get('request_cases', '')} | {p.get('cases_before_cap', '')} "
                       f"| {p.get('pairs', '')} |" for p in result.points)
    fine_tunes = "\n".join(f"- {f['tag']}: failed: {f['failed']}" if "failed" in f else
                           f"- {f['tag']} (data before {f['until']}, serves from state {f['deployed_state']}): "
                           f"{f['examples']} examples, {f['steps']} steps, loss {f['loss'][0]} -> {f['loss'][1]}, "
                           f"{f['cpu_s']} CPU s ({f['wall_s']} s wall){' — from the cache' if f['cached'] else ''}"
                           for f in totals.get("fine_tunes", [])) or "- none"
    inference = totals["inference"]
    calibration = _calibration_text(totals.get("calibration") or {})
    strata = "\n\n".join(f"**By {DIMENSION_TITLES[d]}** (hit@1 [95% CI], Δ to count, `*`: outside 0)\n\n"
                         f"{strata_table(result, d)}" for d in DIMENSIONS)
    phases = ", ".join(f"{k.removesuffix('_s')} {v:.0f} s" for k, v in totals["phases_s"].items())
    return f"""# Update strategies: offline evaluation (`explorer eval{' --quick' if config.quick else ''}`)

MovieLens-100k split by event time at {totals['split']} (training period before it), streamed through the real
pipeline (broker, worker agents, LanceDB knowledge) up to {config.points} evaluation points; the data ends
{totals['end']}. Clusters `{totals['clusters']}`, sequence model `{totals['sequence']}`, base LLM
`{Path(totals['base_model']).name}`.

**Protocol** (models/evaluation/protocol.py). A case is a user with a pair (two latest distinct clusters) and, in
the horizon, a positive engagement outside the pair; anchored at every evaluation point, and after every
{_ordinal(config.request_every)} positive engagement made after the split (a request), each answered with the state (the
knowledge and every strategy's pair table) of the latest point at or before it.
{'Only the ' + str(config.max_pairs_per_state) + ' busiest pairs per state (quick mode). ' if config.max_pairs_per_state else 'Every pair the cases need is inferred. '}**Hit@1**: the served novel cluster is among the clusters of the user's
{config.horizon.describe()}; **hit@3**: one of a ranking's first three is; **log-loss**: −ln p(next novel cluster)
for a strategy with a distribution (floored at 1e-9); **item hit@10**: one of the {config.items_k} grounded items
(SASRec restricted to the cluster, the user's items excluded) is one of those engagements; **long-tail share**:
served clusters outside the 10 most popular next clusters at the split; **novelty**: mean self-information (bits)
of the served cluster's next-cluster share at the split. Intervals: 95% percentile bootstrap over users
({config.bootstrap} resamples, seed {config.seed}); Δ is paired (same resamples), `*` marks a difference whose
interval excludes 0. **{totals['cases']} cases of {totals['users']} users** ({totals['cases_by_anchor']['point']}
point cases of {totals['users_by_anchor']['point']} users, {totals['cases_by_anchor']['request']} request cases of
{totals['users_by_anchor']['request']} users).

{markdown_table(result)}

Columns: *validity* = served answers that are a real cluster outside the pair (the constrained decoder guarantees
it); *exact match* = free greedy generation (no constraint) on a seeded sample of table rows that names a valid novel
cluster exactly; *update CPU s* = process CPU of the strategy's refresh work (LLM inferences it needed, fine-tunes,
knowledge reads); *pairs a full table re-infers* = pairs of all {totals.get('all_pairs', '')} ordered pairs whose
fingerprint or model changed after the split (the real refresher's work); *lag* = seconds from a chunk's events
being published to the strategy's answers reflecting them (knowledge sync + its refresh, serially; fine-tunes only
at fine-tune points; "never" when its answers do not follow the knowledge).

## Where a method gains

{strata}

**Against the best LLM-free strategy** (paired Δ hit@1 [95% CI]; the competitor with the best hit@1 overall and,
per stratum, the best in that stratum — picked after the fact, so it only makes the LLM's case harder)

{best_free_table(result)}

## Drift (top-5 next clusters per pair, Jaccard)

{drift_table(result)}

## Fine-tunes

{fine_tunes}

**Temperature of the model's distribution** (the scored strategies; models/calibration.py): {calibration}

## States

| state | date | events replayed | knowledge sync (s) | cases | point cases | request cases | cases before the pair cap | pairs |
|---|---|---|---|---|---|---|---|---|
{points}

![hit rate over time]({HIT_PLOT})
![hit rate vs novelty]({NOVELTY_PLOT})
![hit rate per stratum]({STRATA_PLOT})
![refresh lag]({LAG_PLOT})

## Run

Run key `{totals['run_key']}` (code `{totals['code_version']}`, git `{totals['git_commit']}`); seeds: evaluation
{config.seed}, fine-tuning {totals['settings'].get('finetune_seed')}, clusters {totals['settings'].get('cluster_seed')},
sequence {totals['settings'].get('sequence_seed')}. Wall {totals['wall_s']} s; CPU {totals['cpu_s_main']} s in this
process + {totals['cpu_s_children']} s in its children (worker, inference processes) — phases: {phases}. LLM
inferences: {inference['requested']} requested by the strategies, {inference['unique']} distinct prompts,
{inference['cached']} from the cache, {inference['inferred']} run now ({inference['cpu_s']} CPU s, median
{inference['cpu_s_per_inference_p50']} s each) over {config.processes} processes. The streaming pipeline (worker:
ingest, counts, LanceDB sync), which every streaming strategy relies on, used {_num(totals.get('worker_cpu_s'), 1)}
CPU s. Settings: `results.json` → `totals.settings`.
"""


# ---------------------------------------------------------------------------------------------------- plots
def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _evaluated(result: Any) -> list[Any]:
    return [s for s in result.strategies if not s.skipped and s.outcomes]


MARKERS = "osD^vP*Xhp<>"


def _colors(result: Any) -> dict[str, tuple[Any, str]]:
    """One (colour, marker) per strategy, the same in every plot (tab20 has enough distinct colours)."""
    import matplotlib

    palette = matplotlib.colormaps["tab20"]
    return {s.name: (palette(i % 20), MARKERS[i % len(MARKERS)]) for i, s in enumerate(result.strategies)}


def _plot_hits(result: Any, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    top = 0.0
    styles = _colors(result)
    for s in _evaluated(result):
        if not s.by_point:
            continue
        color, marker = styles[s.name]
        ax.plot(list(s.by_point), list(s.by_point.values()), marker=marker, color=color, label=s.name)
        top = max(top, *s.by_point.values())
    ax.set_xlabel("state (0: the split, k: evaluation point k)")
    ax.set_ylabel("hit@1")
    ax.set_ylim(0, min(1.0, top * 1.25 + 0.02))
    ax.set_title("Hit rate of the served novel cluster over time")
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_novelty(result: Any, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    styles = _colors(result)
    for s in _evaluated(result):
        hit, novelty = s.metrics.get("hit"), s.metrics.get("novelty")
        if hit is None or novelty is None:
            continue
        color, marker = styles[s.name]
        ax.errorbar([novelty.value], [hit.value], yerr=[[hit.value - hit.low], [hit.high - hit.value]],
                    xerr=[[novelty.value - novelty.low], [novelty.high - novelty.value]], fmt=marker, capsize=3,
                    color=color, label=s.name)
        ax.annotate(s.name, (novelty.value, hit.value), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel("novelty of the served cluster (mean self-information at the split, bits)")
    ax.set_ylabel("hit@1 (95% CI)")
    ax.set_title("Accuracy vs novelty")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_strata(result: Any, path: Path) -> None:
    plt = _pyplot()
    strategies = [s for s in _evaluated(result) if s.strata]
    groups = [(d, v) for d in ("support", "retrieved") for v in DIMENSIONS[d]]
    fig, ax = plt.subplots(figsize=(11, 4.8))
    width = 0.8 / max(1, len(strategies))
    styles = _colors(result)
    for i, s in enumerate(strategies):
        xs, ys, lows, highs = [], [], [], []
        for g, (d, v) in enumerate(groups):
            interval = s.strata[d][v]["hit"]
            if math.isnan(interval.value):
                continue
            xs.append(g + (i - (len(strategies) - 1) / 2) * width)
            ys.append(interval.value)
            lows.append(interval.value - interval.low)
            highs.append(interval.high - interval.value)
        ax.bar(xs, ys, width=width, yerr=[lows, highs], capsize=1.5, label=s.name, color=styles[s.name][0],
               error_kw={"elinewidth": 0.6})
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([f"support {v}" if d == "support" else v for d, v in groups], fontsize=8)
    ax.set_ylabel("hit@1 (95% CI)")
    ax.set_title("Hit rate per stratum")
    ax.legend(fontsize=7, ncol=4)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_lags(result: Any, path: Path) -> None:
    plt = _pyplot()
    from matplotlib.ticker import ScalarFormatter

    fig, ax = plt.subplots(figsize=(8, 4.5))
    never = []
    styles = _colors(result)
    for s in _evaluated(result):
        points = [(k + 1, lag) for k, lag in enumerate(s.lags_s) if lag is not None]
        if not points:
            never.append(s.name)
            continue
        color, marker = styles[s.name]
        ax.plot([p for p, _ in points], [lag for _, lag in points], marker=marker, color=color, label=s.name)
    ax.set_xlabel("evaluation point")
    ax.set_ylabel("seconds (log scale)")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.set_title("Events published -> can change a recommendation")
    if never:
        ax.text(0.01, 0.01, "answers never follow the events: " + ", ".join(never), transform=ax.transAxes,
                fontsize=8)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
