"""Short unique cluster names from genres, title words and era (and keywords), ASCII, at most NAME_MAX characters."""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Sequence


from models.clusters.clustering import id_number
from models.clusters.model import Cluster
from models.embeddings import decade_of, item_sort_key
from streams.movielens import Movie, Rating


NAME_MAX = 40


NICHE_BELOW = 5  # training ratings under which an item counts as niche


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
        for cid in sorted(members, key=id_number)
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
    for cid in sorted(names, key=id_number):
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
