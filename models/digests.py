"""Content digests of model files: the sha256 of a whole file, computed once per (path, size, mtime) and cached.

The primitives of a model's identity (models/identity.py says why a whole-file digest, and how names are chosen);
kept apart from `identify` so that the registry, which records digests, and `identify`, which asks the registry
first, do not import each other.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import orjson

from models.storage import write_atomic

log = logging.getLogger(__name__)

DIGEST_CACHE = "digests.json"  # under models/llm/ of the data dir, beside the registry's versions
LABEL_DIGEST_CHARS = 16  # 64 bits of the digest in the label: no two files a deployment ever sees share them
_cache_lock = threading.Lock()  # one process's threads (the LLM and model-loading threads) share the cache file


@dataclass(frozen=True)
class ModelIdentity:
    name: str  # the registry version, or the file name of an unregistered model
    sha256: str  # of the whole file

    @property
    def label(self) -> str:
        """`<name>:<first 16 hex digits of the sha256>`: the model_version of rows and answers."""
        return f"{self.name}:{self.sha256[:LABEL_DIGEST_CHARS]}"


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The sha256 of the whole file (hex), streamed."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def cached_sha256(path: str | os.PathLike[str], cache_file: Path) -> str:
    """`file_sha256(path)`, computed once per (resolved path, size, mtime) and remembered in `cache_file`.

    A file that changes while it is hashed is hashed again (a digest must belong to one content). A cache that
    cannot be read or written costs only the hashing: the digest is still returned."""
    file = Path(path).resolve()
    key = str(file)
    stamp = _stamp(file)
    entry = _read_cache(cache_file).get(key)
    if entry is not None and (entry.get("size"), entry.get("mtime_ns")) == stamp:
        return str(entry["sha256"])
    for _ in range(3):
        digest = file_sha256(file)
        after = _stamp(file)
        if after == stamp:
            break
        stamp = after
    else:
        raise RuntimeError(f"{file} keeps changing while it is hashed; cannot name the model it holds")
    with _cache_lock:
        cache = {path: entry for path, entry in _read_cache(cache_file).items() if Path(path).exists()}  # prune
        cache[key] = {"size": stamp[0], "mtime_ns": stamp[1], "sha256": digest}
        try:
            write_atomic(cache_file, orjson.dumps(cache, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
        except OSError as exc:
            log.warning("could not cache the digest of %s in %s (%s); it is computed again next time",
                        file, cache_file, exc)
    return digest


def _read_cache(cache_file: Path) -> dict[str, dict[str, object]]:
    try:
        loaded = orjson.loads(cache_file.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    return loaded if isinstance(loaded, dict) else {}
