"""`explorer clusters build|show|export`: the interest clusters the recommender and the LLM speak in."""

from __future__ import annotations

import csv
import io
import statistics
import sys
import time
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import orjson
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from streams.settings import get_settings

if TYPE_CHECKING:
    from models.clusters import ClusterSet  # imported lazily at run time: numpy would slow every `explorer --help`

clusters_app = typer.Typer(
    help="Build, inspect and export the interest clusters (MovieLens items -> named clusters, versioned).",
    no_args_is_help=True,
)
console = Console(stderr=True)
out = Console()


class ExportFormat(str, Enum):
    json = "json"
    csv = "csv"


@clusters_app.command("build")
def build(
    count: Annotated[
        Optional[int], typer.Option(min=2, help="Number of clusters (default: EXPLORER_CLUSTER_COUNT)")
    ] = None,
) -> None:
    """Embed items from the training period, cluster them, name the clusters and make the build current."""
    from models.clusters import build_clusters
    from streams.movielens import DatasetError

    started = time.perf_counter()
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task("building clusters", total=1.0)
        try:
            built = build_clusters(get_settings(), lambda stage, done: bar.update(task, description=stage,
                                                                                   completed=done), count=count)
        except (DatasetError, ValueError) as exc:
            console.print(f"[bold red]error:[/] {exc}")
            raise typer.Exit(1) from exc
    sizes = sorted(c.size for c in built.clusters.values())
    out.print(f"clusters version {built.version}: {len(sizes)} clusters over {len(built.item_to_cluster)} items, "
              f"sizes min {sizes[0]} / median {statistics.median(sizes):g} / max {sizes[-1]}, "
              f"built in {time.perf_counter() - started:.1f}s")


@clusters_app.command("show")
def show() -> None:
    """List the current clusters: id, name, size and top keywords."""
    clusters = _current()
    table = Table("id", "name", "size", "keywords", title=f"interest clusters {clusters.version}")
    for cluster in clusters.clusters.values():
        table.add_row(cluster.id, cluster.name, str(cluster.size), ", ".join(cluster.keywords[:5]))
    out.print(table)


@clusters_app.command("export")
def export(
    out_file: Annotated[Optional[Path], typer.Option("--out", help="Write here instead of stdout")] = None,
    fmt: Annotated[ExportFormat, typer.Option("--format", help="json (whole build) or csv (one row per item)")] = (
        ExportFormat.json),
) -> None:
    """Export the current build: JSON {version, item_to_cluster, clusters} or CSV item_id,cluster_id,cluster_name."""
    clusters = _current()
    if fmt is ExportFormat.json:
        data = orjson.dumps(clusters.to_json(), option=orjson.OPT_INDENT_2) + b"\n"
    else:
        data = _csv(clusters).encode("utf-8")
    if out_file is None:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        out_file.write_bytes(data)
        console.print(f"wrote {clusters.version} to {out_file}")


def _csv(clusters: ClusterSet) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["item_id", "cluster_id", "cluster_name"])
    for item_id, cluster_id in clusters.item_to_cluster.items():
        writer.writerow([item_id, cluster_id, clusters.clusters[cluster_id].name])
    return buffer.getvalue()


def _current() -> ClusterSet:
    from models.clusters import ClustersNotBuilt, load_current

    try:
        return load_current(get_settings())
    except ClustersNotBuilt as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from exc


if __name__ == "__main__":  # pragma: no cover - handy before the lead registers the sub-app
    clusters_app()
