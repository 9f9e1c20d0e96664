"""What a build is: clusters (id, name, keywords, size) and every item's cluster, under one version."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any


class ClustersNotBuilt(RuntimeError):
    """No cluster build is available; the message says how to make one."""


@dataclass(frozen=True)
class Cluster:
    id: str
    name: str
    keywords: tuple[str, ...]
    size: int


@dataclass(frozen=True)
class ClusterSet:
    version: str
    item_to_cluster: dict[str, str]
    clusters: dict[str, Cluster]

    def cluster_of(self, item_id: str) -> str | None:
        return self.item_to_cluster.get(item_id)

    def members(self) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = defaultdict(list)
        for item_id, cluster_id in self.item_to_cluster.items():
            groups[cluster_id].append(item_id)
        return dict(groups)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "item_to_cluster": dict(self.item_to_cluster),
            "clusters": {
                c.id: {"name": c.name, "keywords": list(c.keywords), "size": c.size} for c in self.clusters.values()
            },
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ClusterSet:
        clusters = {
            cid: Cluster(id=cid, name=c["name"], keywords=tuple(c["keywords"]), size=int(c["size"]))
            for cid, c in data["clusters"].items()
        }
        return cls(version=data["version"], item_to_cluster=dict(data["item_to_cluster"]), clusters=clusters)
