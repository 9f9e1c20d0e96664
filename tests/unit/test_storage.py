"""The one versioned-artefact store (models/storage.py) that clusters, sequence models and LLM releases share."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.storage import VersionedStore


def _write(files: dict[str, bytes]):  # type: ignore[no-untyped-def]
    def fill(staging: Path) -> None:
        for name, data in files.items():
            (staging / name).write_bytes(data)

    return fill


def test_a_version_appears_whole_and_pointers_name_it(tmp_path: Path) -> None:
    store = VersionedStore(tmp_path / "root", reserved=frozenset({"current"}))
    assert store.versions("a") == [] and store.pointer("current") is None
    folder = store.publish("v1", _write({"a": b"1", "b": b"2"}))
    assert folder == store.folder("v1") and sorted(p.name for p in folder.iterdir()) == ["a", "b"]
    store.set_pointer("current", "v1")
    assert store.pointer("current") == "v1" and store.has("v1", "a") and not store.has("v1", "c")
    assert store.versions("a") == ["v1"]
    assert [p.name for p in store.root.iterdir() if p.name.startswith(".")] == []  # no staging left behind


def test_a_failed_fill_leaves_nothing_and_undo_runs_first(tmp_path: Path) -> None:
    store = VersionedStore(tmp_path)
    seen: list[list[str]] = []

    def fill(staging: Path) -> None:
        (staging / "model").write_bytes(b"x")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        store.publish("v1", fill, undo=lambda staging: seen.append(sorted(p.name for p in staging.iterdir())))
    assert seen == [["model"]]  # the caller could take its file back before the staging folder went
    assert list(tmp_path.iterdir()) == []


def test_an_existing_version_is_refused_kept_or_replaced_file_by_file(tmp_path: Path) -> None:
    store = VersionedStore(tmp_path)
    store.publish("v1", _write({"a": b"old", "keep": b"k"}))
    with pytest.raises(FileExistsError):
        store.publish("v1", _write({"a": b"new"}))
    store.publish("v1", _write({"a": b"new"}), exists="keep")
    assert (tmp_path / "v1" / "a").read_bytes() == b"old"
    store.publish("v1", _write({"a": b"new"}), exists="replace")
    assert (tmp_path / "v1" / "a").read_bytes() == b"new" and (tmp_path / "v1" / "keep").read_bytes() == b"k"
    assert [p.name for p in tmp_path.iterdir()] == ["v1"]


@pytest.mark.parametrize("name", ["", ".", "..", ".hidden", "a/b", "current", "with space"])
def test_names_that_are_not_versions_are_refused(tmp_path: Path, name: str) -> None:
    store = VersionedStore(tmp_path, reserved=frozenset({"current"}))
    assert not store.valid(name) and not store.has(name, "a")
    with pytest.raises(ValueError):
        store.publish(name, _write({"a": b""}))
    with pytest.raises(ValueError):
        store.set_pointer("current", name)
