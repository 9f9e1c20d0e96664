"""The evaluation report: `report.md` (the table of every strategy), `results.json`, and two PNG plots
(hit rate over the evaluation points per strategy; the refresh lag per strategy)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import orjson

from models.evaluation.costs import median

REPORT, RESULTS = "report.md", "results.json"
HIT_PLOT, LAG_PLOT = "hit_rate_over_time.png", "refresh_lag.png"
COLUMNS = ("strategy", "hit rate [95% CI]", "Δ vs count argmax [95% CI]", "item hit rate [95% CI]",
           "validity", "exact match (free gen.)", "distinct clusters", "coverage", "update CPU s",
           "LLM inferences", "model updates", "pairs a full table re-infers", "lag p50 (s)", "update cadence")


def _pct(value: float | None) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def _interval(interval: Any) -> str:
    if interval is None:
        return "–"
    return f"{interval.value:.3f} [{interval.low:.3f}, {interval.high:.3f}]"


def _difference(interval: Any) -> str:
    if interval is None:
        return "–"
    mark = " *" if interval.excludes_zero() else ""
    return f"{interval.value:+.3f} [{interval.low:+.3f}, {interval.high:+.3f}]{mark}"


def table_rows(result: Any) -> list[list[str]]:
    rows = []
    for s in result.strategies:
        if s.skipped:
            rows.append([s.name, s.skipped] + ["–"] * (len(COLUMNS) - 3) + [s.cadence])
            continue
        lags = [lag for lag in s.lags_s if lag is not None]
        lag = median(lags)
        rows.append([
            s.name, _interval(s.hit), _difference(s.vs_count) if s.name != "count" else "(baseline)",
            _interval(s.item_hit), _pct(s.validity),
            f"{_pct(s.exact_match)} (n={s.exact_match_n})" if s.exact_match_n else "–",
            str(s.distinct), _pct(s.coverage), f"{s.cpu_s:.1f}", str(s.inferences) if s.uses_llm else "–",
            str(s.model_updates) if s.uses_llm else "–", str(s.pairs_changed) if s.uses_llm else "–",
            "never" if lag is None and s.name == "stale" else ("–" if lag is None else f"{lag:.1f}"), s.cadence,
        ])
    return rows


def markdown_table(result: Any) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(result)]
    return "\n".join(lines)


def write_report(result: Any, out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"report": out_dir / REPORT, "results": out_dir / RESULTS, "hit_plot": out_dir / HIT_PLOT,
             "lag_plot": out_dir / LAG_PLOT}
    _plot_hits(result, paths["hit_plot"])
    _plot_lags(result, paths["lag_plot"])
    paths["results"].write_bytes(orjson.dumps(as_json(result), option=orjson.OPT_INDENT_2))
    paths["report"].write_text(_markdown(result), encoding="utf-8")
    return paths


def as_json(result: Any) -> dict[str, Any]:
    config = result.config
    return {
        "config": {**{k: getattr(config, k) for k in config.__dataclass_fields__ if k != "horizon"},
                   "horizon": config.horizon.describe()},
        "strategies": [{
            "name": s.name, "label": s.label, "skipped": s.skipped, "cadence": s.cadence,
            "hit_rate": s.hit.as_dict() if s.hit else None, "item_hit_rate": s.item_hit.as_dict() if s.item_hit else None,
            "vs_count": s.vs_count.as_dict() if s.vs_count else None, "validity": s.validity,
            "exact_match": s.exact_match, "exact_match_n": s.exact_match_n, "distinct_clusters": s.distinct,
            "coverage": s.coverage, "update_cpu_s": round(s.cpu_s, 2), "llm_inferences": s.inferences,
            "model_updates": s.model_updates, "pairs_changed": s.pairs_changed,
            "lags_s": [None if lag is None else round(lag, 2) for lag in s.lags_s],
            "hit_rate_by_point": {str(k + 1): v for k, v in s.by_point.items()}, "evaluations": len(s.outcomes),
        } for s in result.strategies],
        "points": result.points, "totals": result.totals,
    }


def _markdown(result: Any) -> str:
    config, totals = result.config, result.totals
    evaluations = max((len(s.outcomes) for s in result.strategies), default=0)
    users = len({o.user_id for s in result.strategies for o in s.outcomes})
    points = "\n".join(f"| {p['point']} | {p.get('date', '')} | {p['events']} | {p['sync_s']} | "
                       f"{p.get('cases', '')} | {p.get('cases_before_cap', '')} | {p.get('pairs', '')} |"
                       for p in result.points)
    fine_tunes = "\n".join(f"- {f['tag']}: failed: {f['failed']}" if "failed" in f else
                           f"- {f['tag']}: {f['examples']} examples, {f['steps']} steps, loss {f['loss'][0]} -> "
                           f"{f['loss'][1]}, {f['cpu_s']} CPU s ({f['wall_s']} s wall)"
                           for f in totals.get("fine_tunes", [])) or "- none"
    return f"""# Update strategies: offline evaluation (`explorer eval{' --quick' if config.quick else ''}`)

MovieLens-100k split by event time at {totals['split']} (training period before it), streamed through the real
pipeline (broker, worker agents, LanceDB knowledge) up to {config.points} evaluation points; the data ends
{totals['end']}. Clusters `{totals['clusters']}`, sequence model `{totals['sequence']}`, base LLM
`{Path(totals['base_model']).name}`.

**Protocol.** At each point, every user with two distinct recent clusters (the pair) and at least one positive
engagement in the horizon; only the {config.max_pairs_per_point or 'all'} busiest pairs per point (LLM inference
is paid per pair; every strategy answers the same cases). **Hit**: the predicted novel cluster is among the
clusters of the user's {config.horizon.describe()}. **Item hit**: one of the {config.items_k} grounded items
(SASRec restricted to the cluster, the user's items excluded) is one of those engagements. Intervals: 95%
percentile bootstrap over users ({config.bootstrap} resamples, seed {config.seed}); Δ is paired (same resamples),
`*` marks a difference whose interval excludes 0. {evaluations} evaluations of {users} users.

{markdown_table(result)}

Columns: *validity* = served answers that are a real cluster outside the pair (the constrained decoder guarantees
it); *exact match* = free greedy generation (no constraint) on a seeded sample of pairs that names a valid novel
cluster exactly; *update CPU s* = process CPU of the strategy's refresh work (LLM inferences of the evaluated pairs,
fine-tunes, knowledge reads); *pairs a full table re-infers* = pairs of all {totals.get('all_pairs', '')} ordered
pairs whose fingerprint or model changed after the split (the real refresher's work); *lag* = seconds from a chunk's
events being published to the strategy's answers reflecting them (knowledge sync + its refresh; fine-tunes only at
fine-tune points; "never" for the stale table). The streaming pipeline (worker: ingest, counts, LanceDB sync),
which every streaming strategy relies on, used {_pct(totals.get('worker_cpu_s'))} CPU s; one LLM inference
took {_pct(totals.get('llm_cpu_s_per_inference'))} CPU s (median of {totals['llm_inferences']}).

Fine-tunes:
{fine_tunes}

| point | date | events replayed | knowledge sync (s) | cases | cases before the pair cap | pairs |
|---|---|---|---|---|---|---|
{points}

![hit rate over time]({HIT_PLOT})
![refresh lag]({LAG_PLOT})

Whole run: {totals['wall_s']} s wall.
"""


def _plot_hits(result: Any, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    top = 0.0
    for s in result.strategies:
        if s.skipped or not s.by_point:
            continue
        xs = [k + 1 for k in s.by_point]
        ax.plot(xs, list(s.by_point.values()), marker="o", label=s.name)
        top = max(top, *s.by_point.values())
    ax.set_xlabel("evaluation point")
    ax.set_ylabel("hit rate")
    ax.set_ylim(0, min(1.0, top * 1.25 + 0.02))
    ax.set_title("Hit rate of the predicted novel cluster over time")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_lags(result: Any, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    fig, ax = plt.subplots(figsize=(8, 4.5))
    never = []
    for s in result.strategies:
        if s.skipped:
            continue
        points = [(k + 1, lag) for k, lag in enumerate(s.lags_s) if lag is not None]
        if not points:
            never.append(s.name)
            continue
        ax.plot([p for p, _ in points], [lag for _, lag in points], marker="o", label=s.name)
    ax.set_xlabel("evaluation point")
    ax.set_ylabel("seconds (log scale)")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.set_title("Events published -> can change a recommendation")
    if never:
        ax.text(0.01, 0.01, "answers never change: " + ", ".join(never), transform=ax.transAxes, fontsize=8)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
