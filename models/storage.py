"""Files and versioned artefacts that readers in other processes may open at any moment: `write_atomic` for a
single file (version pointers, metadata, caches), `VersionedStore` for `<root>/<version>/` folders and pointers."""

from __future__ import annotations

import os
import re
import shutil
import threading
from collections.abc import Callable
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


def _fsync_file(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def fsync_dir(folder: Path) -> None:
    """Make renames and removals inside `folder` durable (POSIX: a rename lives in the folder's own entry)."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class VersionedStore:
    """Versioned artefacts under one root: `<root>/<version>/` folders that appear whole, and named pointers.

    One layout for every artefact a worker loads while another process may be writing a new one (interest
    clusters, sequence models, LLM releases):

    * a version is assembled in a hidden staging folder and renamed into place (`publish`), so a reader -- or a
      crash -- never sees half a version; hidden names (a leading dot) are work in progress, never versions;
    * a pointer (`current`, `serving`) is a small file holding one version name, replaced with `write_atomic`;
    * version names are checked against one pattern, so a name read from a pointer cannot leave the root.

    Errors are the caller's to name (ClustersNotBuilt, SequenceModelNotTrained, RegistryError): the store answers
    None or False where something is missing.
    """

    NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$")

    def __init__(self, root: Path, reserved: frozenset[str] = frozenset()) -> None:
        self.root = root
        self.reserved = reserved  # names in the root that are not versions (pointers, state files)

    def valid(self, version: str) -> bool:
        return bool(self.NAME.match(version)) and version not in self.reserved

    def folder(self, version: str) -> Path:
        return self.root / version

    def has(self, version: str, marker: str) -> bool:
        """Whether `version` is published and holds `marker` (the file that makes a version loadable)."""
        return self.valid(version) and (self.root / version / marker).is_file()

    def versions(self, marker: str) -> list[str]:
        """Every published version holding `marker`, by name."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if self.valid(p.name) and (p / marker).is_file())

    def publish(self, version: str, fill: Callable[[Path], None], *, exists: str = "error",
                undo: Callable[[Path], None] | None = None) -> Path:
        """Make `<root>/<version>/` from what `fill(staging)` writes into an empty staging folder, in one rename.

        `exists` says what happens when the version is already there: "error" (FileExistsError), "keep" (another
        writer published it first: the same name means the same content, keep theirs), or "replace" (each file
        `fill` wrote replaces its namesake atomically, other files stay). On any failure the staging folder is
        removed, after `undo(staging)` had the chance to take back what the caller moved in."""
        if not self.valid(version):
            raise ValueError(f"invalid version name {version!r}")
        folder = self.root / version
        if folder.exists() and exists == "error":
            raise FileExistsError(f"version {version} already exists under {self.root}")
        # pid and thread: two writers of one version (processes, or threads of one process) never share a folder
        staging = self.root / f".staging-{version}-{os.getpid()}-{threading.get_ident()}"
        shutil.rmtree(staging, ignore_errors=True)  # left by a publish of this process that crashed
        staging.mkdir(parents=True)
        try:
            fill(staging)
            for child in staging.iterdir():  # durable before the rename makes them visible (as write_atomic's are)
                if child.is_file():
                    _fsync_file(child)
            if exists == "replace" and folder.is_dir():
                for child in sorted(staging.iterdir()):
                    child.replace(folder / child.name)
                fsync_dir(folder)
                staging.rmdir()
            else:
                try:
                    os.rename(staging, folder)  # the whole version appears at once
                except OSError:
                    if exists != "keep" or not folder.is_dir():
                        raise
                    shutil.rmtree(staging, ignore_errors=True)  # published by another writer meanwhile
            fsync_dir(self.root)
        except BaseException:
            if undo is not None and staging.is_dir():
                undo(staging)
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return folder

    def pointer(self, name: str) -> str | None:
        """The version a pointer names, or None when the pointer was never set."""
        path = self.root / name
        if not path.is_file():
            return None
        return path.read_text(encoding="utf-8").strip() or None

    def set_pointer(self, name: str, version: str) -> None:
        if not self.valid(version):
            raise ValueError(f"invalid version name {version!r}")
        write_atomic(self.root / name, version.encode("utf-8") + b"\n")
