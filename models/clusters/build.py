"""A build: embed the training period's items, cluster, match ids to the previous build, name, save, make current."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence


from models.clusters.clustering import bisecting_kmeans, stable_ids
from models.clusters.model import ClusterSet
from models.clusters.naming import item_tags, name_clusters
from models.clusters.storage import assignment_hash, previous_build, save
from models.embeddings import item_embeddings, item_sort_key, training_ratings
from streams.movielens import Movie, Rating, dataset_dir, load_movies, load_ratings
from streams.settings import Settings


Progress = Callable[[str, float], None]


# ---------------------------------------------------------------- public API
def build_clusters(settings: Settings, progress: Progress | None = None, count: int | None = None) -> ClusterSet:
    """Build clusters from the configured MovieLens data, persist them and make them current."""
    report = progress or (lambda stage, fraction: None)
    count = settings.cluster_count if count is None else count
    report("loading MovieLens", 0.0)
    folder = dataset_dir(settings, progress=False)
    movies, ratings = load_movies(folder), load_ratings(folder)
    built = cluster_items(movies, ratings, settings, count, previous_build(settings), report)
    report("saving", 0.95)
    save(settings, built, meta={
        "count": count, "seed": settings.cluster_seed, "train_fraction": settings.train_fraction,
        "positive_rating_threshold": settings.positive_rating_threshold, "built_at": time.time(),
        "items": len(built.item_to_cluster),
    })
    report("done", 1.0)
    return built


def cluster_items(movies: dict[str, Movie], ratings: Sequence[Rating], settings: Settings, count: int,
                  previous: ClusterSet | None = None, report: Progress | None = None) -> ClusterSet:
    """The pure part of a build: embed, cluster, match ids to `previous`, name. Nothing is written."""
    report = report or (lambda stage, fraction: None)
    report("embedding items", 0.1)
    embeddings = item_embeddings(movies, ratings, settings)
    if not 2 <= count <= len(embeddings.item_ids):
        raise ValueError(f"cluster count must be between 2 and the {len(embeddings.item_ids)} items, got {count}")
    report("clustering", 0.4)
    leaves = bisecting_kmeans(embeddings.vectors, count, settings.cluster_seed)
    groups = [sorted((embeddings.item_ids[i] for i in leaf), key=item_sort_key) for leaf in leaves]
    report("matching the previous build", 0.7)
    members = dict(zip(stable_ids(groups, previous), groups, strict=True))
    report("naming clusters", 0.8)
    train = training_ratings(ratings, settings.train_fraction)
    clusters = name_clusters(members, movies, item_tags(movies, train), Counter(r.item_id for r in train))
    item_to_cluster = dict(sorted(((item, cid) for cid, items in members.items() for item in items),
                                  key=lambda pair: item_sort_key(pair[0])))
    version = f"c{count}-{assignment_hash(item_to_cluster)}"
    return ClusterSet(version=version, item_to_cluster=item_to_cluster, clusters=clusters)
