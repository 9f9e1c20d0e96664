"""Interest clusters: every catalogue item mapped to one of ~40 named clusters, versioned and kept stable.

Build: item embeddings (models/embeddings.py, training period only) -> balanced bisecting k-means (a divisive
hierarchy: the worst leaf is split in two until there are `count` leaves, each cut clamped so no child gets too
small) -> ids matched to the previous build by item overlap -> short unique names from genres, title words and
era -> persisted under <data_dir>/clusters/<version>/ with an atomically replaced `current` pointer.

Modules by job: `model` (Cluster, ClusterSet), `clustering` (k-means, stable ids), `naming`, `storage` (versions
and pointers), `build` (the whole build). The names below are the package's public API.
"""

from __future__ import annotations

from models.clusters.build import Progress, build_clusters, cluster_items
from models.clusters.clustering import bisecting_kmeans, stable_ids
from models.clusters.model import Cluster, ClusterSet, ClustersNotBuilt
from models.clusters.naming import item_tags, name_clusters
from models.clusters.storage import (
    CURRENT,
    SERVING,
    clusters_root,
    clusters_store,
    load_current,
    load_serving,
    load_version,
    set_serving,
)

__all__ = ["CURRENT", "SERVING", "Cluster", "ClusterSet", "ClustersNotBuilt", "Progress", "bisecting_kmeans",
           "build_clusters", "cluster_items", "clusters_root", "clusters_store", "item_tags", "load_current",
           "load_serving", "load_version", "name_clusters", "set_serving", "stable_ids"]
