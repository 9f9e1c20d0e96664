"""Files that readers in other processes may open at any moment (version pointers, metadata)."""

from __future__ import annotations

import os
import threading
from pathlib import Path


def write_atomic(path: Path, data: bytes) -> None:
    """Write beside the target, fsync, rename over it: readers see the old file or the new one, never half of one,
    and after a crash the rename has either happened entirely or not at all (the folder is fsynced too)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # pid and thread: two writers of one file (processes, or threads of one process) never share a partial file
    partial = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.part")
    with partial.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    partial.replace(path)
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """Make renames and removals inside `folder` durable (POSIX: a rename lives in the folder's own entry)."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
