"""LanceDB conventions the knowledge store and the pair table share: per-deployment table names, SQL string
literals, and scalar indexes whose creation may race between processes."""

from __future__ import annotations

import logging
import time
from typing import Any

from lancedb.index import BTree

log = logging.getLogger(__name__)


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


def create_table(db: Any, name: str, schema: Any, attempts: int = 5, pause_s: float = 0.05) -> Any:
    """``db.create_table(name, schema, exist_ok=True)``, tried again when it lost a race: two openers of a fresh store
    (a worker's threads, processes starting together) both find no table, both commit its first version, and the
    later commit fails ("Incompatible transaction ... Overwrite") although the table now exists -- the next attempt
    opens it. Any other error, or the last attempt's, is raised."""
    for attempt in range(1, attempts + 1):
        try:
            return db.create_table(name, schema=schema, exist_ok=True)
        except (RuntimeError, OSError) as exc:
            if attempt == attempts or not lost_race(exc):
                raise
            log.warning("creating LanceDB table %s lost a race with another writer (%s); attempt %d of %d",
                        name, exc, attempt + 1, attempts)
            time.sleep(pause_s * attempt)
    raise AssertionError("unreachable")


def lost_race(exc: Exception) -> bool:
    """LanceDB's error for a commit preempted by another process's (or an index another process created)."""
    text = str(exc).lower()
    return "conflict" in text or "already exists" in text or "incompatible transaction" in text


def deployment_table(deployment: str, name: str) -> str:
    """The LanceDB table `name` of one deployment: deployments sharing one LanceDB never see each other's rows
    (models/knowledge.py's docstring says more)."""
    if not deployment:
        raise ValueError("a knowledge-store table needs a deployment (Settings.deployment_id())")
    return f"{deployment}__{name}"


def sql_str(value: str) -> str:
    """A SQL string literal."""
    return "'" + value.replace("'", "''") + "'"
