"""Where builds live: `<data_dir>/clusters/<version>/` in the versioned store (models/storage.py), with a
`current` pointer (the newest build) and a `serving` one (what the workers count and serve with)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import orjson

from models.clusters.model import ClusterSet, ClustersNotBuilt
from models.storage import VersionedStore
from streams.settings import Settings


CLUSTERS_FILE, META_FILE = "clusters.json", "meta.json"
CURRENT, SERVING = "current", "serving"  # pointers: the newest build, and the one workers count and serve with


def load_current(settings: Settings) -> ClusterSet:
    version = clusters_store(settings).pointer(CURRENT)
    if version is None:
        raise ClustersNotBuilt(f"no interest clusters under {clusters_root(settings)}: run `explorer clusters build`")
    return load_version(settings, version)


def load_serving(settings: Settings) -> ClusterSet:
    """The clusters the workers count and serve with: the version a backfill switched to, else the current build.

    Keeping this apart from `current` lets `explorer clusters build` make a new build while workers keep serving
    the old one, until `explorer backfill` has filled the new version's state and switches.
    """
    version = clusters_store(settings).pointer(SERVING)
    if version is not None:
        return load_version(settings, version)
    return load_current(settings)


def set_serving(settings: Settings, version: str) -> None:
    load_version(settings, version)  # refuse to point at a build that does not exist
    clusters_store(settings).set_pointer(SERVING, version)


def load_version(settings: Settings, version: str) -> ClusterSet:
    store = clusters_store(settings)
    if not store.has(version, CLUSTERS_FILE):
        raise ClustersNotBuilt(f"cluster version {version!r} not found under {clusters_root(settings)}: "
                               "run `explorer clusters build`")
    return ClusterSet.from_json(orjson.loads((store.folder(version) / CLUSTERS_FILE).read_bytes()))


def clusters_root(settings: Settings) -> Path:
    return settings.resolved_data_dir() / "clusters"


def clusters_store(settings: Settings) -> VersionedStore:
    return VersionedStore(clusters_root(settings), reserved=frozenset({CURRENT, SERVING}))


def previous_build(settings: Settings) -> ClusterSet | None:
    try:
        return load_current(settings)
    except (ClustersNotBuilt, ValueError, KeyError, TypeError):
        return None  # none yet, or unreadable: ids then start afresh


def assignment_hash(item_to_cluster: dict[str, str]) -> str:
    return hashlib.sha256(orjson.dumps(item_to_cluster, option=orjson.OPT_SORT_KEYS)).hexdigest()[:10]


def save(settings: Settings, built: ClusterSet, meta: dict[str, Any]) -> Path:
    def fill(staging: Path) -> None:
        (staging / CLUSTERS_FILE).write_bytes(orjson.dumps(built.to_json(), option=orjson.OPT_INDENT_2))
        (staging / META_FILE).write_bytes(orjson.dumps(meta, option=orjson.OPT_INDENT_2))

    store = clusters_store(settings)
    # The version names the assignment; a rebuild of it may still name clusters anew: replace the files.
    folder = store.publish(built.version, fill, exists="replace")
    store.set_pointer(CURRENT, built.version)
    return folder
