import csv
import io
import random
import re
import statistics
import time
from pathlib import Path

import orjson
import pytest
import typer
from typer.testing import CliRunner

from models.clusters import (
    Cluster,
    ClusterSet,
    ClustersNotBuilt,
    build_clusters,
    load_current,
    load_version,
    stable_ids,
)
from streams.cli import clusters as cli_clusters
from streams.movielens import dataset_dir
from streams.settings import Settings

NAME_RE = re.compile(r"^[A-Za-z0-9' -]{1,40}$")
TASTES = [  # (genres, year) of each synthetic taste group: 10 items each
    ("Action Sci-Fi", 1996), ("Comedy Romance", 1995), ("Drama", 1994), ("Film-Noir Thriller", 1948),
    ("Children's Animation", 1992), ("Horror", 1978),
]
UNRATED = ["901", "902", "903"]  # catalogue items nobody rated: they must still get a cluster


def write_dataset(folder: Path, flip_test_period: bool = False) -> None:
    """60 items in 6 taste groups and 48 users who each like one group; seeded, so every call writes the same."""
    rng = random.Random(5)
    folder.mkdir(parents=True, exist_ok=True)
    items = [f"{g * 10 + k + 1}" for g in range(len(TASTES)) for k in range(10)]
    movie_rows = [f"{item}\t{_title(rng, int(item))}\t{TASTES[(int(item) - 1) // 10][1] + rng.randint(0, 3)}"
                  f"\t{TASTES[(int(item) - 1) // 10][0]}" for item in items]
    movie_rows += [f"{item}\tLost Reel {item}\t1931\tDrama" for item in UNRATED]
    ratings = []
    for user in range(48):
        taste = user % len(TASTES)
        liked = rng.sample(range(10), 7)
        ratings += [(user, taste * 10 + k + 1, 5) for k in liked]
        ratings += [(user, rng.randrange(60) + 1, rng.choice([1, 2])) for _ in range(3)]
    rng.shuffle(ratings)
    rows = []
    for ts, (user, item, value) in enumerate(ratings):
        if flip_test_period and ts >= 0.8 * len(ratings):
            value = 6 - value  # only the held-out period changes
        rows.append(f"u{user}\t{item}\t{value}\t{1_000_000 + ts}")
    (folder / "ml-100k.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + "\n".join(rows) + "\n", encoding="utf-8")
    (folder / "ml-100k.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n" + "\n".join(movie_rows) + "\n",
        encoding="utf-8")
    (folder / "ml-100k.user").write_text("user_id:token\tage:token\n", encoding="utf-8")


def _title(rng: random.Random, item: int) -> str:
    words = ["Night", "Star", "Love", "City", "Dark", "Blue", "Café", "River", "Ghost", "Road"]
    return f"{rng.choice(words)} {rng.choice(words)} {item}, The"


@pytest.fixture
def movielens(tmp_path: Path) -> Path:
    write_dataset(tmp_path / "ml")
    return tmp_path / "ml"


def settings_for(movielens: Path, data_dir: Path, **extra: object) -> Settings:
    return Settings(movielens_dir=movielens, data_dir=data_dir, cluster_count=6, **extra)


def check_invariants(built: ClusterSet, items: int, count: int, bound: float = 4.0) -> None:
    assert len(built.item_to_cluster) == items
    assert len(built.clusters) == count
    members = built.members()
    assert set(members) == set(built.clusters)
    assert all(built.clusters[cid].size == len(ids) for cid, ids in members.items())
    names = [c.name for c in built.clusters.values()]
    assert len({tuple(sorted(n.lower().split())) for n in names}) == len(names), names  # unique, even as word sets
    assert all(NAME_RE.match(n) for n in names), names
    assert all(c.keywords for c in built.clusters.values())
    mean = items / count
    assert all(mean / bound <= c.size <= mean * bound for c in built.clusters.values())


def test_every_item_gets_one_of_count_named_balanced_clusters(movielens, tmp_path):
    built = build_clusters(settings_for(movielens, tmp_path / "d"))
    check_invariants(built, items=63, count=6)
    assert set(built.clusters) == {f"c{i}" for i in range(6)}
    assert all(built.cluster_of(item) for item in UNRATED)
    assert built.cluster_of("no-such-item") is None
    assert re.fullmatch(r"c6-[0-9a-f]{10}", built.version)


def test_clusters_follow_the_tastes(movielens, tmp_path):
    built = build_clusters(settings_for(movielens, tmp_path / "d"))
    for group in range(len(TASTES)):
        ids = [built.cluster_of(str(group * 10 + k + 1)) for k in range(10)]
        assert max(ids.count(c) for c in set(ids)) >= 8  # a taste group stays together


def test_count_argument_overrides_the_setting(movielens, tmp_path):
    check_invariants(build_clusters(settings_for(movielens, tmp_path / "d"), count=3), items=63, count=3)
    with pytest.raises(ValueError, match="cluster count"):
        build_clusters(settings_for(movielens, tmp_path / "d"), count=64)


def test_same_seed_same_clusters_in_separate_data_dirs(movielens, tmp_path):
    first = build_clusters(settings_for(movielens, tmp_path / "a"))
    second = build_clusters(settings_for(movielens, tmp_path / "b"))
    assert first == second


def test_only_the_training_period_shapes_the_clusters(movielens, tmp_path):
    write_dataset(tmp_path / "flipped", flip_test_period=True)
    original = build_clusters(settings_for(movielens, tmp_path / "a"))
    flipped = build_clusters(settings_for(tmp_path / "flipped", tmp_path / "b"))
    assert flipped.item_to_cluster == original.item_to_cluster


def test_build_is_persisted_and_made_current(movielens, tmp_path):
    settings = settings_for(movielens, tmp_path / "d")
    with pytest.raises(ClustersNotBuilt, match="explorer clusters build"):
        load_current(settings)
    stages: list[tuple[str, float]] = []
    built = build_clusters(settings, progress=lambda stage, done: stages.append((stage, done)))
    assert stages[-1] == ("done", 1.0) and [d for _, d in stages] == sorted(d for _, d in stages)
    assert load_current(settings) == built == load_version(settings, built.version)
    root = tmp_path / "d" / "clusters"
    assert (root / "current").read_text().strip() == built.version
    assert not list(root.rglob("*.part"))
    with pytest.raises(ClustersNotBuilt):
        load_version(settings, "../../etc")


def test_rebuild_with_same_data_keeps_ids_and_version(movielens, tmp_path):
    settings = settings_for(movielens, tmp_path / "d")
    first = build_clusters(settings)
    assert build_clusters(settings) == first


def test_rebuild_with_other_count_reuses_best_overlapping_ids(movielens, tmp_path):
    settings = settings_for(movielens, tmp_path / "d")
    old = build_clusters(settings, count=6)
    new = build_clusters(settings, count=4)
    check_invariants(new, items=63, count=4)
    overlap = {(n, o): len(set(ni) & set(oi)) for n, ni in new.members().items() for o, oi in old.members().items()}
    for n in new.clusters:
        best_old = max(old.clusters, key=lambda o: overlap[n, o])
        best_new = max(new.clusters, key=lambda m: overlap[m, best_old])
        if best_new == n and overlap[n, best_old] > 0:  # mutual best match: it must keep the old id
            assert n == best_old
    assert set(new.clusters) <= set(old.clusters)  # fewer clusters: every one maps onto an old id
    grown = build_clusters(settings, count=7)
    assert len(set(grown.clusters) & set(new.clusters)) == 4  # more clusters: all 4 keep ids, 3 get fresh ones
    assert load_current(settings) == grown


def test_stable_ids_greedy_by_overlap_and_fresh_ids_skip_used_ones():
    previous = ClusterSet(
        version="v", clusters={c: Cluster(c, c, (c,), 2) for c in ("c0", "c1", "c5")},
        item_to_cluster={"1": "c0", "2": "c0", "3": "c1", "4": "c1", "5": "c5", "6": "c5"},
    )
    groups = [["9"], ["3", "4", "1"], ["2", "5", "6"], ["7"]]
    assert stable_ids(groups, previous) == ["c2", "c1", "c5", "c3"]
    assert stable_ids(groups, None) == ["c0", "c1", "c2", "c3"]


def test_export_round_trips_as_json_and_csv(movielens, tmp_path, monkeypatch):
    settings = settings_for(movielens, tmp_path / "d")
    monkeypatch.setattr(cli_clusters, "get_settings", lambda: settings)
    app = typer.Typer()
    app.add_typer(cli_clusters.clusters_app, name="clusters")
    runner = CliRunner()
    assert runner.invoke(app, ["clusters", "show"]).exit_code == 1  # nothing built yet
    result = runner.invoke(app, ["clusters", "build"])
    assert result.exit_code == 0, result.output
    built = load_current(settings)
    assert built.version in result.stdout

    exported = runner.invoke(app, ["clusters", "export"])
    assert ClusterSet.from_json(orjson.loads(exported.stdout)) == built
    assert set(orjson.loads(exported.stdout)) == {"version", "item_to_cluster", "clusters"}
    out = tmp_path / "clusters.csv"
    assert runner.invoke(app, ["clusters", "export", "--format", "csv", "--out", str(out)]).exit_code == 0
    rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"))))
    assert {r["item_id"]: r["cluster_id"] for r in rows} == built.item_to_cluster
    assert all(r["cluster_name"] == built.clusters[r["cluster_id"]].name for r in rows)
    shown = runner.invoke(app, ["clusters", "show"])
    assert shown.exit_code == 0 and built.version in shown.stdout


def test_real_movielens_builds_40_named_balanced_clusters_quickly(tmp_path):
    settings = Settings(movielens_dir=dataset_dir(Settings()), data_dir=tmp_path)
    started = time.perf_counter()
    built = build_clusters(settings)
    assert time.perf_counter() - started < 30
    check_invariants(built, items=1682, count=40)
    sizes = [c.size for c in built.clusters.values()]
    assert statistics.median(sizes) >= 20
    assert not [c.name for c in built.clusters.values() if re.search(r" \d+$", c.name)]  # no bare "Drama 90s 2"
