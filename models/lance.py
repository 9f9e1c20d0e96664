"""LanceDB conventions the knowledge store and the pair table share: per-deployment table names, SQL string
literals, and scalar indexes whose creation may race between processes."""

from __future__ import annotations

from typing import Any

from lancedb.index import BTree


def ensure_btree(table: Any, column: str) -> None:
    """A scalar index for the reads' filter (top_next: c1); compaction adds new rows to it. Only speed depends on
    it, so losing the race to create it (processes starting together) is fine: the winner's index serves all."""
    if any(index.columns == [column] for index in table.list_indices()):
        return
    try:
        table.create_index(column, config=BTree())
    except RuntimeError as exc:
        if not lost_race(exc):
            raise


def lost_race(exc: RuntimeError) -> bool:
    """LanceDB's error for a commit preempted by another process's (or an index another process created)."""
    text = str(exc).lower()
    return "conflict" in text or "already exists" in text


def deployment_table(deployment: str, name: str) -> str:
    """The LanceDB table `name` of one deployment: deployments sharing one LanceDB never see each other's rows
    (models/knowledge.py's docstring says more)."""
    if not deployment:
        raise ValueError("a knowledge-store table needs a deployment (Settings.deployment_id())")
    return f"{deployment}__{name}"


def sql_str(value: str) -> str:
    """A SQL string literal."""
    return "'" + value.replace("'", "''") + "'"
