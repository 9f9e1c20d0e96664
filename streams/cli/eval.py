"""`explorer eval`: the offline evaluation of the LLM's update strategies on a MovieLens replay (issue 6)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from streams.settings import get_settings

console = Console(stderr=True)
out = Console()


def eval_command(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for report.md, results.json and the plots")],
    quick: Annotated[bool, typer.Option("--quick", help="A few minutes: fewer points and pairs, no fine-tuning "
                                                        "unless --finetune")] = False,
    points: Annotated[Optional[int], typer.Option(help="Evaluation points (EXPLORER_EVAL_POINTS)")] = None,
    horizon: Annotated[Optional[int], typer.Option(help="Hit horizon: next N positive engagements "
                                                        "(EXPLORER_EVAL_HORIZON_EVENTS)")] = None,
    horizon_days: Annotated[Optional[float], typer.Option(help="... and within D days "
                                                               "(EXPLORER_EVAL_HORIZON_DAYS)")] = None,
    request_every: Annotated[Optional[int], typer.Option(help="A request case after every N-th positive engagement "
                                                              "(0: point cases only; EXPLORER_EVAL_REQUEST_EVERY)")
                             ] = None,
    max_pairs: Annotated[Optional[int], typer.Option(help="Only the N busiest pairs per state (default: all)")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the random baseline, bootstrap and samples "
                                                     "(EXPLORER_EVAL_SEED)")] = None,
    finetune: Annotated[Optional[bool], typer.Option("--finetune/--no-finetune", help="Run the fine-tuning "
                                                     "strategies (default: yes, but not in --quick)")] = None,
    finetune_budget: Annotated[Optional[float], typer.Option(help="Training seconds per fine-tune")] = None,
    early_gap_days: Annotated[Optional[int], typer.Option(help="The drift variant's fine-tune learns up to this "
                                                               "many days before the split (0: none)")] = None,
    processes: Annotated[Optional[int], typer.Option(help="LLM inference processes (default: one per core)")] = None,
    cache: Annotated[bool, typer.Option("--cache/--no-cache", help="Reuse (and keep) inferences and fine-tuned "
                                                                   "models of earlier runs")] = True,
    cache_dir: Annotated[Optional[Path], typer.Option(help="Where the cache lives (default: "
                                                           "$EXPLORER_DATA_DIR/eval-cache)")] = None,
) -> None:
    """Evaluate stale, RAG-only, fine-tuning-only and hybrid updates (and an early-window fine-tune) against LLM-free
    baselines on the same MovieLens replay through the real pipeline; write a Markdown report with plots to --out."""
    from models.evaluation.protocol import Horizon
    from models.evaluation.report import markdown_table, write_report
    from streams.eval_run import EvalConfig, run_eval

    settings = get_settings()
    base = EvalConfig.from_settings(settings, quick=quick)
    config = EvalConfig.from_settings(
        settings, quick=quick, points=points, max_pairs_per_state=max_pairs, seed=seed, finetune=finetune,
        finetune_budget_s=finetune_budget, request_every=request_every, early_gap_days=early_gap_days,
        processes=processes, cache=cache,
        horizon=Horizon(horizon or base.horizon.events, horizon_days if horizon_days else base.horizon.days)
        if horizon or horizon_days else None)
    try:
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console) as progress:
            result = run_eval(settings, config, out_dir, progress, console, cache_dir=cache_dir)
    except (RuntimeError, TimeoutError, ValueError) as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    paths = write_report(result, out_dir)
    out.print(markdown_table(result))
    out.print(f"report: {paths['report']} ({result.totals['wall_s']:.0f}s)")


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
