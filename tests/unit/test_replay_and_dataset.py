from pathlib import Path

import pytest

from streams.movielens import DatasetError, dataset_dir, load_movies, load_ratings
from streams.replay import RateLimiter
from streams.settings import Settings


def write_dataset(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ml-100k.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        "2\t10\t5\t300\n1\t11\t3\t100\n1\t10\t4\t300\n", encoding="utf-8")
    (folder / "ml-100k.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "10\tToy Story\t1995\tAnimation Children's Comedy\n11\tUnknown Film\t\t\n", encoding="utf-8")
    (folder / "ml-100k.user").write_text("user_id:token\tage:token\n1\t24\n2\t53\n", encoding="utf-8")


def test_ratings_come_in_event_time_order_with_event_id_ties(tmp_path):
    write_dataset(tmp_path)
    ratings = load_ratings(tmp_path)
    assert [r.event_id for r in ratings] == ["ml100k-1-11-100", "ml100k-1-10-300", "ml100k-2-10-300"]
    event = ratings[1].to_event()
    assert (event.user_id, event.item_id, event.ts, event.event_type, event.value) == ("1", "10", 300.0, "rating", 4.0)


def test_movies_parse_genres_and_missing_years(tmp_path):
    write_dataset(tmp_path)
    movies = load_movies(tmp_path)
    assert movies["10"].genres == ("Animation", "Children's", "Comedy") and movies["10"].year == 1995
    assert movies["11"].year is None and movies["11"].genres == ()


def test_user_given_folder_is_used_and_checked(tmp_path):
    write_dataset(tmp_path / "ml")
    assert dataset_dir(Settings(movielens_dir=tmp_path / "ml")) == tmp_path / "ml"
    (tmp_path / "ml" / "ml-100k.item").unlink()
    with pytest.raises(DatasetError, match="ml-100k.item"):
        dataset_dir(Settings(movielens_dir=tmp_path / "ml"))


def test_rate_limiter_spaces_sends_evenly():
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    limiter = RateLimiter(rate=4.0, clock=lambda: now[0], sleep=sleep)
    for _ in range(5):
        limiter.wait()
    assert now[0] == pytest.approx(1.0)  # 5 sends at 4/s: the fifth leaves one second after the first
    assert RateLimiter(None, clock=lambda: 0.0, sleep=sleep).wait() is None
