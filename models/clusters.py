"""Interest clusters: every catalogue item mapped to one of ~40 named clusters, versioned and kept stable.

Build: item embeddings (models/embeddings.py, training period only) -> balanced bisecting k-means (a divisive
hierarchy: the worst leaf is split in two until there are `count` leaves, each cut clamped so no child gets too
small) -> ids matched to the previous build by item overlap -> short unique names from genres, title words and
era -> persisted under <data_dir>/clusters/<version>/ with an atomically replaced `current` pointer.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
import time
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from models.embeddings import (
    decade_of,
    item_embeddings,
    item_sort_key,
    training_ratings,
)
from models.storage import VersionedStore
from streams.movielens import Movie, Rating, dataset_dir, load_movies, load_ratings
from streams.settings import Settings

Progress = Callable[[str, float], None]

# Leaf sizes are kept within [mean/2, 2*mean]. On MovieLens this costs nothing measurable against a looser 3x bound
# (held-out co-engagement lift 3.46 vs 3.51) and avoids 14-item crumbs beside 120-item catch-alls.
BALANCE = 2.0  # must stay >= 2: bisecting_kmeans relies on it to always find a leaf it may split
KMEANS_RESTARTS, KMEANS_ITERATIONS = 4, 30
NAME_MAX = 40
CLUSTERS_FILE, META_FILE = "clusters.json", "meta.json"
CURRENT, SERVING = "current", "serving"  # pointers: the newest build, and the one workers count and serve with
NICHE_BELOW = 5  # training ratings under which an item counts as niche


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


# ---------------------------------------------------------------- public API
def build_clusters(settings: Settings, progress: Progress | None = None, count: int | None = None) -> ClusterSet:
    """Build clusters from the configured MovieLens data, persist them and make them current."""
    report = progress or (lambda stage, fraction: None)
    count = settings.cluster_count if count is None else count
    report("loading MovieLens", 0.0)
    folder = dataset_dir(settings, progress=False)
    movies, ratings = load_movies(folder), load_ratings(folder)
    built = cluster_items(movies, ratings, settings, count, _previous_build(settings), report)
    report("saving", 0.95)
    _save(settings, built, meta={
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
    version = f"c{count}-{_assignment_hash(item_to_cluster)}"
    return ClusterSet(version=version, item_to_cluster=item_to_cluster, clusters=clusters)


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


# ---------------------------------------------------------------- clustering
def bisecting_kmeans(vectors: np.ndarray, count: int, seed: int) -> list[np.ndarray]:
    """`count` leaves of row indices, in tree order (neighbouring leaves are siblings or cousins)."""
    mean = len(vectors) / count
    min_size = max(1, int(mean / BALANCE))
    max_size = max(2 * min_size, math.ceil(mean * BALANCE))
    rng = np.random.default_rng(seed)
    leaves = [np.arange(len(vectors))]
    while len(leaves) < count:
        pick = _leaf_to_split(vectors, leaves, min_size, max_size)
        members = leaves[pick]
        cut = _balanced_split(vectors[members], min_size, rng)
        leaves[pick : pick + 1] = [members[cut[0]], members[cut[1]]]
    return leaves


def _leaf_to_split(vectors: np.ndarray, leaves: Sequence[np.ndarray], min_size: int, max_size: int) -> int:
    """Oversized leaves first (balance), then the leaf with the largest squared error (coherence)."""
    # a leaf of 2*min_size or more always exists while len(leaves) < count, since 2*min_size <= mean (BALANCE >= 2)
    candidates = [i for i, leaf in enumerate(leaves) if len(leaf) >= 2 * min_size]
    oversized = [i for i in candidates if len(leaves[i]) > max_size]
    if oversized:
        return max(oversized, key=lambda i: (len(leaves[i]), -i))
    return max(candidates, key=lambda i: (_sse(vectors[leaves[i]]), -i))


def _sse(points: np.ndarray) -> float:
    return float(((points - points.mean(axis=0)) ** 2).sum())


def _balanced_split(points: np.ndarray, min_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """2-means, then the cut along the centroid axis moved just enough that both sides keep min_size points."""
    best = min((_two_means(points, rng) for _ in range(KMEANS_RESTARTS)), key=lambda r: r[0])
    centroids = best[1]
    projection = points @ (centroids[1] - centroids[0])
    order = np.argsort(projection, kind="stable")
    first = int((projection < (centroids[1] @ centroids[1] - centroids[0] @ centroids[0]) / 2).sum())
    cut = min(max(first, min_size), len(points) - min_size)
    return order[:cut], order[cut:]


def _two_means(points: np.ndarray, rng: np.random.Generator) -> tuple[float, np.ndarray]:
    centroids = _plus_plus_init(points, rng)
    labels = np.zeros(len(points), dtype=int)
    for step in range(KMEANS_ITERATIONS):
        distances = ((points[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=2)
        new_labels = distances.argmin(axis=1)
        if step > 0 and (new_labels == labels).all():
            break
        labels = new_labels
        for k in (0, 1):
            if (labels == k).any():
                centroids[k] = points[labels == k].mean(axis=0)
    sse = float(((points - centroids[labels]) ** 2).sum())
    return sse, centroids


def _plus_plus_init(points: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    first = points[rng.integers(len(points))]
    weights = ((points - first) ** 2).sum(axis=1)
    total = weights.sum()
    second = points[rng.choice(len(points), p=weights / total)] if total > 0 else points[rng.integers(len(points))]
    return np.stack([first, second]).astype(np.float64)


# ---------------------------------------------------------------- stable ids
def stable_ids(groups: Sequence[Sequence[str]], previous: ClusterSet | None) -> list[str]:
    """Reuse the previous build's id for each new cluster it overlaps most (greedy by overlap, largest first).

    With an unchanged count and data every id carries over; ids can exceed c{count-1} only when clusters appear
    that share no item with any previous one left unmatched."""
    if previous is None:
        return [f"c{i}" for i in range(len(groups))]
    old = {cid: set(items) for cid, items in previous.members().items()}
    new = [set(group) for group in groups]
    pairs = sorted(
        ((len(members & old_members), g, _id_number(cid), cid)
         for g, members in enumerate(new) for cid, old_members in old.items()),
        key=lambda p: (-p[0], p[1], p[2]),
    )
    ids: list[str | None] = [None] * len(groups)
    taken: set[str] = set()
    for overlap, g, _, cid in pairs:
        if overlap > 0 and ids[g] is None and cid not in taken:
            ids[g] = cid
            taken.add(cid)
    # an id never passes to a cluster unrelated to the one it named: unmatched clusters get ids unused last time
    fresh = (f"c{n}" for n in itertools.count() if f"c{n}" not in old)
    return [cid if cid is not None else next(fresh) for cid in ids]


def _id_number(cluster_id: str) -> int:
    return int(cluster_id[1:]) if cluster_id[1:].isdigit() else 1 << 30


def _previous_build(settings: Settings) -> ClusterSet | None:
    try:
        return load_current(settings)
    except (ClustersNotBuilt, ValueError, KeyError, TypeError):
        return None  # none yet, or unreadable: ids then start afresh


# ---------------------------------------------------------------- names
_STOPWORDS = frozenset("""
a an the and or of in on at to for from with by into over under as is it its my your his her our their this that
these those be are was were not no nor but so if than then too very can will just what who whom why how when where
all any some one two three four five part vol volume ii iii iv vi de la le les el los las il lo der die das des du
un une et en von van di del da dei do o y i me you we he she they him them us am mr mrs ms dr st
""".split())
_FOREIGN_ARTICLES = ("La", "Le", "Les", "L'", "Il", "Lo", "I", "El", "Los", "Las", "Der", "Die", "Das", "Det")
_FOREIGN_WORDS = frozenset("la le les il der die das det des du de el los las une un et con para som och eine ein"
                           " und del della di och ja ni wa".split())
_ERA_TAGS = frozenset({"X:Early 90s", "X:Late 90s"})
_ALLOWED = re.compile(r"[^A-Za-z0-9' -]+")


def name_clusters(members: dict[str, list[str]], movies: dict[str, Movie],
                  tags: dict[str, frozenset[str]] | None = None,
                  popularity: dict[str, int] | None = None) -> dict[str, Cluster]:
    """A Cluster per id with a unique short name; clusters are listed in id order."""
    tags, popularity = tags or {}, popularity or {}
    shares = {cid: _keyword_shares(items, movies, tags) for cid, items in members.items()}
    catalogue = _keyword_shares(sorted({*movies, *(i for items in members.values() for i in items)}), movies, tags)
    eras = {cid: _era_label(items, movies) for cid, items in members.items()}
    parts = _unique_parts({cid: _base_parts(shares[cid], catalogue, eras[cid]) for cid in members}, eras, shares)
    names = _anchored_if_clashing({cid: _render(parts[cid], eras[cid]) for cid in members}, members, movies,
                                  popularity)
    names = _numbered_if_clashing(names)
    return {
        cid: Cluster(id=cid, name=names[cid], size=len(members[cid]),
                     keywords=_keywords(parts[cid], shares[cid], catalogue, eras[cid], len(members[cid])))
        for cid in sorted(members, key=_id_number)
    }


def item_tags(movies: dict[str, Movie], train: Sequence[Rating]) -> dict[str, frozenset[str]]:
    """Descriptors beyond genre that tell same-genre clusters apart: popularity, reception, foreign titles, and
    the part of the 90s (where 80% of MovieLens-100k sits)."""
    ratings: dict[str, list[float]] = defaultdict(list)
    for rating in train:
        ratings[rating.item_id].append(rating.rating)
    counts = sorted(len(ratings.get(i, ())) for i in movies)
    popular_at = max(counts[int(0.9 * (len(counts) - 1))], 1) if counts else 1
    tags: dict[str, frozenset[str]] = {}
    for item_id in set(movies) | set(ratings):
        given = ratings.get(item_id, [])
        found = set()
        if len(given) >= popular_at:
            found.add("X:Popular")
        elif len(given) < NICHE_BELOW:
            found.add("X:Niche")
        if len(given) >= 10 and sum(given) / len(given) >= 4.0:
            found.add("X:Acclaimed")
        elif len(given) >= 10 and sum(given) / len(given) < 3.0:
            found.add("X:Low-Rated")
        year = movies[item_id].year if item_id in movies else None
        if year is not None and year // 10 == 199 and not 4 <= year % 10 <= 6:  # 62% of the 90s are 1994-96
            found.add("X:Early 90s" if year % 10 <= 3 else "X:Late 90s")
        if item_id in movies and _is_foreign(movies[item_id].title):
            found.add("X:Foreign")
        tags[item_id] = frozenset(found)
    return tags


def _is_foreign(title: str) -> bool:
    """Non-English titles: accents, a trailing foreign article ('Postino, Il') or a foreign original in brackets."""
    if _ascii(title) != title or re.search(r", (" + "|".join(_FOREIGN_ARTICLES) + r")$", title):
        return True
    bracketed = " ".join(re.findall(r"\(([^)]*)\)", title)).lower()
    return bool(set(re.findall(r"[a-z']+", bracketed)) & _FOREIGN_WORDS)


def _keyword_shares(items: Sequence[str], movies: dict[str, Movie], tags: dict[str, frozenset[str]]
                    ) -> dict[str, float]:
    """Share of the items carrying each keyword: genres as given, 'T:' title words, 'X:' tags."""
    counts: Counter[str] = Counter()
    for item_id in items:
        movie = movies.get(item_id)
        genres = movie.genres if movie and movie.genres else ("unknown",)
        words = _title_words(movie.title) if movie else set()
        counts.update({_clean(g) for g in genres} | words | tags.get(item_id, frozenset()))
    return {k: v / max(len(items), 1) for k, v in counts.items()}


def _title_words(title: str) -> set[str]:
    words = (w.strip("'") for w in re.findall(r"[a-z][a-z']+", _ascii(title).lower()))
    return {"T:" + w.capitalize() for w in words if len(w) >= 3 and w not in _STOPWORDS}


def _is_genre(keyword: str) -> bool:
    return not keyword.startswith(("T:", "X:"))


def _display(keyword: str) -> str:
    return keyword if _is_genre(keyword) else keyword[2:]


def _salience(keyword: str, share: float, catalogue: dict[str, float]) -> float:
    """How much a keyword marks a cluster: its share there times the log-lift over the catalogue."""
    base = catalogue.get(keyword, share) or share
    return share * math.log(share / base) if share > base else 0.0


def _base_parts(shares: dict[str, float], catalogue: dict[str, float], era: str) -> list[str]:
    """A strong tag (on >= half the items, twice as common as in the catalogue), then one or two dominant
    genres (on >= 30% of the items and over-represented), most salient first."""
    def salient(keys: list[str], min_share: float, min_lift: float) -> list[str]:
        keep = [k for k in keys if shares[k] >= min_share and shares[k] >= min_lift * catalogue.get(k, 0.0)]
        return sorted(keep, key=lambda k: (-_salience(k, shares[k], catalogue), k))

    genres = [k for k in shares if _is_genre(k) and k != "unknown"]
    tags = salient([k for k in shares if k.startswith("X:") and _allowed(k, [], era)], 0.5, 2.0)[:1]
    dominant = salient(genres, 0.3, 1.0001)[:2]
    if not dominant and genres:
        dominant = [max(genres, key=lambda k: (shares[k], k))]
    return tags + dominant or ["Mixed"]


def _allowed(keyword: str, parts: list[str], era: str) -> bool:
    """Whether a keyword may join a name: a finer era only refines a '90s' cluster, and only once."""
    if keyword in _ERA_TAGS:
        return era == "90s" and not any(p in _ERA_TAGS for p in parts)
    return keyword not in ("unknown", "T:Unknown")


def _render(parts: list[str], era: str) -> str:
    """Tags, genres, title words, then the era (or the finer era tag in its place), e.g. 'Niche Drama Late 90s'."""
    words = [_display(k) for k in _in_name_order(parts)]
    if era and not any(k in _ERA_TAGS for k in parts):
        words.append(era)
    return _clean(" ".join(words))[:NAME_MAX].rstrip(" -")


def _in_name_order(parts: list[str]) -> list[str]:
    def rank(keyword: str) -> int:
        if keyword in _ERA_TAGS:
            return 3
        return 0 if keyword.startswith("X:") else 2 if keyword.startswith("T:") else 1

    return sorted(parts, key=rank)  # stable: within a kind, the order they were chosen in


def _keywords(parts: list[str], shares: dict[str, float], catalogue: dict[str, float], era: str, size: int
              ) -> tuple[str, ...]:
    """The name's parts, then other salient genres/tags (>= 20% of items) and title words (>= 10% and 2 items),
    then the era: at most eight."""
    salient = sorted(((k, _salience(k, s, catalogue)) for k, s in shares.items()), key=lambda kv: (-kv[1], kv[0]))
    labels = [k for k, score in salient if score > 0 and not k.startswith("T:") and shares[k] >= 0.2]
    words = [k for k, score in salient if score > 0 and k.startswith("T:") and shares[k] >= 0.1
             and shares[k] * size >= 2]
    ordered = [_clean(_display(k)) for k in [*_in_name_order(parts), *labels[:3], *words[:3]] if _allowed(k, [], era)]
    return tuple(dict.fromkeys(k for k in ordered if k and k != era))[:7] + ((era,) if era else ())


def _era_label(items: Sequence[str], movies: dict[str, Movie]) -> str:
    """'90s' when one decade holds >= 60% of the items, else the span of the middle half, e.g. '70s-80s'."""
    years = sorted(m.year for i in items if (m := movies.get(i)) and m.year)
    if not years:
        return ""
    decades = Counter(decade_of(y) for y in years)
    decade, n = max(decades.items(), key=lambda kv: (kv[1], kv[0]))
    if n >= 0.6 * len(years):
        return _decade_name(decade)
    low, high = decade_of(years[len(years) // 4]), decade_of(years[(3 * len(years) - 1) // 4])
    return _decade_name(low) if low == high else f"{_decade_name(low)}-{_decade_name(high)}"


def _decade_name(decade: int | None) -> str:
    if decade is None:
        return ""
    return f"{decade % 100:02d}s" if 1900 <= decade < 2000 else f"{decade}s"


def _unique_parts(parts: dict[str, list[str]], eras: dict[str, str], shares: dict[str, dict[str, float]]
                  ) -> dict[str, list[str]]:
    """Where names clash, give each clashing cluster its most distinguishing keyword; repeat while it helps."""
    parts = {cid: list(p) for cid, p in parts.items()}
    for _ in range(4):
        clashes = [group for group in _clashes({cid: _render(p, eras[cid]) for cid, p in parts.items()})]
        added = False
        for group in clashes:
            for cid in group:
                extra = _distinguishing(cid, [o for o in group if o != cid], parts[cid], eras[cid], shares)
                if extra:
                    parts[cid].append(extra)
                    added = True
        if not added:
            break
    return parts


def _clashes(names: dict[str, str]) -> list[list[str]]:
    """Clusters whose names use the same words: 'Drama Romance 90s' and 'Romance Drama 90s' read as one."""
    groups: dict[tuple[str, ...], list[str]] = defaultdict(list)
    for cid in sorted(names, key=_id_number):
        groups[tuple(sorted(names[cid].lower().split()))].append(cid)
    return [group for group in groups.values() if len(group) > 1]


def _distinguishing(cid: str, others: list[str], parts: list[str], era: str, shares: dict[str, dict[str, float]]
                    ) -> str | None:
    """The keyword most over-represented in this cluster relative to the clusters it clashes with."""
    best: tuple[float, str] | None = None
    for keyword, share in shares[cid].items():
        if share < 0.15 or keyword in parts or not _allowed(keyword, parts, era):
            continue
        if len(_render([*parts, keyword], era)) >= NAME_MAX:
            continue  # a name that would be cut short reads worse than a number
        margin = share - max(shares[o].get(keyword, 0.0) for o in others)
        if margin > 0 and (best is None or (margin, keyword) > best):
            best = (margin, keyword)
    return best[1] if best else None


def _anchored_if_clashing(names: dict[str, str], members: dict[str, list[str]], movies: dict[str, Movie],
                          popularity: dict[str, int]) -> dict[str, str]:
    """Clusters that keywords cannot tell apart are named after their best-known film whose title fits:
    'Niche Drama Late 90s like Showgirls'."""
    names = dict(names)
    for group in _clashes(names):
        for cid in group:
            known = sorted((i for i in members[cid] if i in movies),
                           key=lambda i: (-popularity.get(i, 0), item_sort_key(i)))
            fitting = (f"{names[cid]} like {t}" for i in known if (t := _short_title(movies[i].title)))
            names[cid] = next((name for name in fitting if len(name) <= NAME_MAX), names[cid])
    return names


def _short_title(title: str) -> str:
    """'Truman Show, The' -> 'Truman Show'; bracketed originals and trailing articles dropped."""
    title = re.sub(r"\s*\([^)]*\)", "", title)
    title = re.sub(r",\s*(The|A|An|" + "|".join(_FOREIGN_ARTICLES) + r")$", "", title)
    return _clean(title)


def _numbered_if_clashing(names: dict[str, str]) -> dict[str, str]:
    """The last resort for names still equal: 'Drama 90s 1', 'Drama 90s 2'."""
    names = dict(names)
    for group in _clashes(names):
        for n, cid in enumerate(group, start=1):
            suffix = f" {n}"
            names[cid] = names[cid][: NAME_MAX - len(suffix)].rstrip(" -") + suffix
    return names


def _ascii(text: str) -> str:
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")


def _clean(text: str) -> str:
    """Plain ASCII letters, digits, spaces, hyphens and apostrophes only."""
    return " ".join(_ALLOWED.sub(" ", _ascii(text)).split())


# ---------------------------------------------------------------- persistence
def _assignment_hash(item_to_cluster: dict[str, str]) -> str:
    return hashlib.sha256(orjson.dumps(item_to_cluster, option=orjson.OPT_SORT_KEYS)).hexdigest()[:10]


def _save(settings: Settings, built: ClusterSet, meta: dict[str, Any]) -> Path:
    def fill(staging: Path) -> None:
        (staging / CLUSTERS_FILE).write_bytes(orjson.dumps(built.to_json(), option=orjson.OPT_INDENT_2))
        (staging / META_FILE).write_bytes(orjson.dumps(meta, option=orjson.OPT_INDENT_2))

    store = clusters_store(settings)
    # The version names the assignment; a rebuild of it may still name clusters anew: replace the files.
    folder = store.publish(built.version, fill, exists="replace")
    store.set_pointer(CURRENT, built.version)
    return folder


