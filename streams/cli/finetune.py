"""`explorer finetune` (one fine-tuning cycle) and `explorer llm list|release|rollback` (the LLM model registry)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from streams.settings import get_settings

llm_app = typer.Typer(help="The fine-tuned LLM versions under $EXPLORER_DATA_DIR/models/llm (the serving model).",
                      no_args_is_help=True)
console = Console(stderr=True)
out = Console()


def finetune(
    budget: Annotated[Optional[float], typer.Option(help="Training budget in seconds (default: "
                                                          "EXPLORER_FINETUNE_BUDGET_S)")] = None,
    schedule: Annotated[bool, typer.Option(help="Keep running: a cycle on the cadence or when the streaming "
                                                "knowledge drifts from the serving model's (the hybrid scheduler)")]
    = False,
    base_eval: Annotated[bool, typer.Option(help="Also evaluate the base model's free generation (the 'before' "
                                                 "numbers of a report; the relative gate measures the serving "
                                                 "model anyway)")] = False,
    served_eval: Annotated[bool, typer.Option(help="Also measure the base model's hit rate with the server's "
                                                   "constrained decoding (the candidate's and the serving "
                                                   "model's are always measured: the relative gate)")] = True,
    release: Annotated[bool, typer.Option(help="Release the model if it passes the gates")] = True,
    keep_f16: Annotated[Optional[Path], typer.Option(help="Also keep the unquantized F16 export here")] = None,
) -> None:
    """Run one fine-tuning cycle: curate -> train -> export -> quantize -> gates -> release."""
    from models.clusters import ClustersNotBuilt
    from models.finetune.cycle import run_cycle
    from streams.movielens import DatasetError

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    if budget is not None:
        settings = settings.model_copy(update={"finetune_budget_s": budget})
    if schedule:
        _run_schedule(settings, release)
        return
    try:
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console) as progress:
            result = run_cycle(settings, progress, evaluate_base=base_eval, served=served_eval,
                               release_model=release, keep_f16=keep_f16)
    except (ClustersNotBuilt, DatasetError, ValueError) as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    out.print(_summary(result))
    if result.released:
        out.print(f"[green]released[/] {result.version}: {result.model_path}")
    elif result.reasons:
        out.print(f"[red]not released[/] {result.version}: {'; '.join(result.reasons)}")
        raise typer.Exit(2)
    else:
        out.print(f"passed the gates, not released (--no-release): {result.version}")


def _summary(result: Any) -> Table:
    table = Table("metric", "base", "fine-tuned", title=f"fine-tuning cycle {result.version}")
    base = result.base_metrics or {}
    for mode in ("knowledge", "plain", "all"):
        for key in ("exact_match", "hit_rate"):
            before = base.get(mode, {}).get(key)
            table.add_row(f"{key} ({mode})", "-" if before is None else f"{before:.3f}",
                          f"{result.metrics[mode][key]:.3f}")
    table.add_row("served hit rate (the served answer, knowledge)", _fmt(result.base_served_hit_rate),
                  _fmt(result.served_hit_rate))
    calibration = result.calibration
    if "temperature" in calibration:
        table.add_row("temperature fitted on the held-out pairs (log-loss at T = 1 -> at T)", "",
                      f"T = {calibration['temperature']:.2f} ({calibration['log_loss_uncalibrated']:.2f} -> "
                      f"{calibration['log_loss']:.2f}, {calibration['transitions']} transitions)")
    elif calibration:
        table.add_row("temperature", "", calibration.get("skipped", "-"))
    for name, value in result.baselines.items():
        table.add_row(f"baseline {name}", f"{value:.3f}", "")
    check = result.export_check
    detail = (f" (exact {check['exact_agreement']:.3f}; {check['prompts']} prompts, near-tie margin "
              f"{check['margin_nats']:.2f} nats)") if check else ""
    table.add_row("export agreement (quantized vs PyTorch)", "", f"{result.agreement:.3f}{detail}")
    report = result.gate_report
    if report:
        table.add_row(f"relative gate: served hit rate vs the serving model ({report['serving_model']})",
                      _fmt(report["serving_served_hit_rate"]), _fmt(report["served_hit_rate"]))
        table.add_row("count argmax on the same held-out pairs", _fmt(report["count_argmax_hit_rate"]), "")
    train = result.train
    table.add_row("training", "", f"{train['method']}, {train['steps']} steps ({train['epochs']} epochs), "
                                  f"{train['train_s']}s, loss {train['first_loss']:.3f} -> {train['final_loss']:.3f}")
    table.add_row("model", "", f"{result.quant_type}, {result.model_bytes / 1e6:.1f} MB")
    table.add_row("examples", "", f"{result.curation['examples']} ({result.curation['with_knowledge']} with "
                                  f"knowledge), {result.curation['eval_pairs']} held-out pairs")
    table.add_row("stage times", "", ", ".join(f"{k} {v:.0f}s" for k, v in result.timings.items()))
    return table


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


@llm_app.command("list")
def list_models() -> None:
    """Every filed fine-tuned version with its gate results; the current one is marked."""
    from models.finetune import registry

    settings = get_settings()
    current = registry.current_version(settings)
    from models.identity import LABEL_DIGEST_CHARS, identify

    table = Table("", "version", "sha256", "gates", "hit rate", "exact match", "quant", "test from",
                  title="LLM versions")
    for model in registry.list_versions(settings):
        meta = model.metadata
        metrics = meta.get("metrics", {})
        table.add_row("*" if model.version == current else "", model.version,
                      str(meta.get("model_sha256", ""))[:LABEL_DIGEST_CHARS],
                      "passed" if model.passed_gates else "failed: " + "; ".join(meta.get("gates", {})
                                                                                   .get("reasons", [])),
                      _fmt(metrics.get("knowledge", {}).get("hit_rate")),
                      _fmt(metrics.get("knowledge", {}).get("exact_match")), str(meta.get("quant_type", "")),
                      str(meta.get("data_period", {}).get("test_from", "")))
    out.print(table)
    serving = registry.current_model_path(settings)
    label = identify(settings, serving).label if Path(serving).is_file() else "missing"
    out.print(f"serving model: {serving} ({label})")


@llm_app.command("release")
def release_model(version: Annotated[str, typer.Argument(help="A version that passed its gates")]) -> None:
    """Make a version current (workers load it on their next model load)."""
    from models.finetune import registry

    try:
        registry.release(get_settings(), version)
    except registry.RegistryError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    out.print(f"current LLM: {version}")


@llm_app.command("rollback")
def rollback() -> None:
    """Go back to the previously released version (or the base model)."""
    from models.finetune import registry

    settings = get_settings()
    try:
        previous = registry.rollback(settings)
    except registry.RegistryError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    out.print(f"current LLM: {previous or 'the base model'} ({registry.current_model_path(settings)})")


def _run_schedule(settings, release: bool) -> None:  # type: ignore[no-untyped-def]
    """The hybrid scheduler until interrupted: drift is measured against the LanceDB knowledge of the serving
    clusters version, every EXPLORER_FINETUNE_CHECK_INTERVAL_S."""
    from models.clusters import load_serving
    from models.finetune.cycle import run_cycle
    from models.finetune.scheduler import knowledge_overlap, run_scheduler, serving_snapshot
    from models.knowledge import KnowledgeStore

    store = KnowledgeStore.from_settings(settings, load_serving(settings).version)

    def overlap_now() -> float:
        store.refresh()
        return knowledge_overlap(store.all_top_next(n=3), serving_snapshot(settings))

    def cycle(current) -> None:  # type: ignore[no-untyped-def]
        result = run_cycle(current, None, evaluate_base=False, served=False, release_model=release)
        out.print(f"cycle {result.version}: " + ("released" if result.released else
                                                 f"not released ({'; '.join(result.reasons)})"))

    run_scheduler(settings, cycle, overlap_now)


def register(app: typer.Typer) -> None:
    app.command()(finetune)
    app.add_typer(llm_app, name="llm")
