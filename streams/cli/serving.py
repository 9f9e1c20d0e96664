"""CLI commands of the serving side: `recommend`, `sequence train`, `pairs build|show`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from streams.settings import Settings, get_settings

console = Console(stderr=True)
out = Console()

sequence_app = typer.Typer(help="The transformer sequence recommender (SASRec-style) that grounds recommendations.")
pairs_app = typer.Typer(help="The pair table: the LLM's novel cluster for every cluster pair, computed ahead.")


def _fail(message: str, code: int = 1) -> typer.Exit:
    from rich.markup import escape

    # escaped: broker and TLS errors carry [brackets]; soft-wrapped: one line a test or log grep can match
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def recommend(
    user_id: Annotated[str, typer.Argument(help="The user to recommend for")],
    k: Annotated[int, typer.Option(help="Number of items")] = 10,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the answer")] = 60.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw recommendation record")] = False,
) -> None:
    """Send a recommendation request for USER_ID through Kafka, wait for the worker's answer and print it."""
    from streams.acls import recommend_access
    from streams.kafka_check import KafkaAccessError, check_kafka
    from streams.recommend_client import RecommendationClient, RecommendationTimeout

    settings = get_settings()
    try:
        check_kafka(settings, recommend_access(settings))
    except KafkaAccessError as exc:
        raise _fail(f"Kafka start-up check failed: {exc}") from exc
    try:
        with RecommendationClient(settings) as client:
            answer = client.recommend(user_id, k=k, timeout_s=timeout)
    except (RecommendationTimeout, RuntimeError) as exc:
        raise _fail(str(exc)) from exc
    if as_json:
        import orjson

        out.print_json(orjson.dumps(answer.recommendation).decode())
        return
    print_recommendation(settings, answer.recommendation, answer.latency_s)


def print_recommendation(settings: Settings, rec: dict[str, Any], latency_s: float | None = None) -> None:
    names, titles = _names_and_titles(settings)
    history = " -> ".join(f"{names.get(c, c)} ({c})" for c in rec["history_clusters"]) or "(no history yet)"
    novel = rec["novel_cluster"]
    out.print(f"[bold]user {rec['user_id']}[/]  history: {history}")
    out.print(f"novel interest: [bold green]{novel['name']}[/] ({novel['id']})  source: {rec['source']}"
              + (f"  latency: {latency_s * 1000:.0f} ms" if latency_s is not None else ""))
    table = Table("#", "item", "title", "score")
    for rank, item in enumerate(rec["items"], 1):
        table.add_row(str(rank), item["item_id"], titles.get(item["item_id"], "?"), f"{item['score']:.3f}")
    out.print(table)
    out.print(f"[dim]model {rec['model_version']}  knowledge {rec['knowledge_version']}[/]")


def _names_and_titles(settings: Settings) -> tuple[dict[str, str], dict[str, str]]:
    from models.clusters import ClustersNotBuilt, load_serving
    from streams.movielens import DatasetError, dataset_dir, load_movies

    names: dict[str, str] = {}
    titles: dict[str, str] = {}
    try:
        names = {cid: c.name for cid, c in load_serving(settings).clusters.items()}
    except ClustersNotBuilt:
        pass
    try:
        titles = {item: movie.title for item, movie in load_movies(dataset_dir(settings, progress=False)).items()}
    except (DatasetError, OSError):
        pass
    return names, titles


@sequence_app.command("train")
def sequence_train(
    budget: Annotated[float | None, typer.Option(help="Wall-clock budget in seconds (EXPLORER_SEQUENCE_BUDGET_S)")]
    = None,
) -> None:
    """Train the sequence recommender on MovieLens's training period (seeded), save it and make it current."""
    from models.sequence import SequenceConfig, train_and_save

    settings = get_settings()
    config = SequenceConfig.from_settings(settings, **({"budget_s": budget} if budget else {}))
    recommender, report = train_and_save(settings, config, progress=True)
    out.print(f"trained {recommender.version}: {report}")


@pairs_app.command("build")
def pairs_build(
    limit: Annotated[int | None, typer.Option(help="Only the N busiest pairs (default: every pair)")] = None,
    processes: Annotated[int | None, typer.Option(help="Worker processes, each with its own model (default: "
                                                          "the CPU count / threads)")] = None,
    threads: Annotated[int | None, typer.Option(help="llama.cpp threads per process (default "
                                                        "EXPLORER_LLM_THREADS)")] = None,
) -> None:
    """Infer the novel cluster of every cluster pair with the LLM against the current knowledge, into LanceDB.

    Pairs are spread over processes in chunks sharing their first cluster, the busiest pairs first; rows are keyed
    upserts, so an interrupted build can be run again."""
    from models.clusters import ClustersNotBuilt, load_serving
    from models.finetune.registry import current_model_path
    from models.knowledge import KnowledgeStore
    from models.llm import ModelNotFound, NovelClusterPredictor, model_version
    from models.pair_bulk import build, bulk_order, default_processes
    from models.pair_table import PairTable
    from models.prompts import MAX_TOP_NEXT

    settings = get_settings()
    threads = threads or settings.llm_threads
    processes = processes or default_processes(threads)
    if processes < 1 or threads < 1:
        raise _fail("--processes and --threads must be at least 1")
    try:
        clusters = load_serving(settings)
        store = KnowledgeStore.from_settings(settings, clusters.version)
        model_path = str(current_model_path(settings))
        version = model_version(settings, model_path) if Path(model_path).is_file() else None
        predictor = None
        if processes == 1 or version is None:  # a missing model fails here, with the predictor's clear message
            with console.status("Loading the LLM..."):
                predictor = NovelClusterPredictor(settings, clusters, model_path=model_path, n_threads=threads)
    except (ClustersNotBuilt, ModelNotFound) as exc:
        raise _fail(str(exc)) from exc
    table = PairTable.from_settings(settings, clusters.version)
    order = bulk_order(clusters, store.all_top_next(n=MAX_TOP_NEXT + 2))
    todo = order[:limit] if limit else order
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=console) as progress:
        task = progress.add_task(f"inferring pairs ({processes} process{'es' if processes > 1 else ''} x "
                                 f"{threads} thread{'s' if threads > 1 else ''})", total=len(todo))
        try:
            report = build(predictor, store, table, clusters, todo, on_progress=lambda n: progress.advance(task, n),
                           processes=processes, settings=settings, model_path=model_path, threads=threads,
                           scored=settings.scored_pairs)
        except RuntimeError as exc:
            raise _fail(str(exc)) from exc
    out.print(f"{report.pairs} pairs ({report.with_knowledge} with retrieved knowledge) in {report.seconds:.1f}s: "
              f"{report.pairs_per_s:.2f} pairs/s with {report.processes} process(es), "
              f"{report.mean_inference_ms:.0f} ms per pair in one process, model {version}, rows "
              f"{'scored (novel_choice llm-x-sequence)' if settings.scored_pairs else 'one answer each'}; "
              f"table rows: {table.count()}, fragments: {table.fragments()}")


@pairs_app.command("show")
def pairs_show(
    n: Annotated[int, typer.Option(help="Rows to show")] = 20,
) -> None:
    """Show pair-table rows (most recently inferred first) with cluster names."""
    from models.clusters import ClustersNotBuilt, load_serving
    from models.pair_table import PairTable

    settings = get_settings()
    try:
        clusters = load_serving(settings)
    except ClustersNotBuilt as exc:
        raise _fail(str(exc)) from exc
    names = {cid: c.name for cid, c in clusters.clusters.items()}
    rows = [row for rows in PairTable.from_settings(settings, clusters.version).load().values() for row in rows.values()]
    rows.sort(key=lambda row: -row.updated_at)
    table = Table("c1", "c2", "novel", "top next seen", "model", "ms", title=f"pair table ({len(rows)} rows)")
    for row in rows[:n]:
        table.add_row(names.get(row.c1, row.c1), names.get(row.c2, row.c2), names.get(row.novel, row.novel),
                      ", ".join(names.get(c, c) for c in row.fingerprint), row.model_version.split(":")[0],
                      f"{row.inference_ms:.0f}")
    out.print(table)


def register(app: typer.Typer) -> None:
    app.command()(recommend)
    app.add_typer(sequence_app, name="sequence")
    app.add_typer(pairs_app, name="pairs")
