"""Model identity (models/identity.py) and the hot-swap loader (models/model_loading.py): files that agree in their
first MiBs are still different models; a digest is computed once, not per look-up; swaps are decided by identity
and loaded on a thread of their own."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from models import digests, identity
from models.finetune import registry
from models.identity import ModelIdentity, cached_sha256, identify
from models.model_loading import ModelLoader
from streams.settings import Settings

MIB = 1 << 20
PASSED = {"gates": {"passed": True, "reasons": []}}


def _settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data")


def _twins(folder: Path, prefix_mib: int = 4) -> tuple[Path, Path]:
    """Two files of one size whose first `prefix_mib` MiB are identical (a GGUF's metadata) and whose rest differs."""
    folder.mkdir(parents=True, exist_ok=True)
    head = b"GGUF" + os.urandom(prefix_mib * MIB - 4)
    first, second = folder / "a" / "model.gguf", folder / "b" / "model.gguf"
    for path, fill in ((first, b"\x01"), (second, b"\x02")):
        path.parent.mkdir()
        path.write_bytes(head + fill * MIB)
    return first, second


def test_files_identical_in_their_first_mibs_are_different_models(tmp_path):
    settings = _settings(tmp_path)
    first, second = _twins(tmp_path / "files")
    # What the old version string saw is the same: name, size, the first MiB (and the first 4 MiB).
    assert first.name == second.name and first.stat().st_size == second.stat().st_size
    with first.open("rb") as a, second.open("rb") as b:
        assert hashlib.sha256(a.read(4 * MIB)).digest() == hashlib.sha256(b.read(4 * MIB)).digest()
    assert identify(settings, first) != identify(settings, second)
    assert identify(settings, first).label != identify(settings, second).label
    assert identify(settings, first).sha256 == hashlib.sha256(first.read_bytes()).hexdigest()


def test_registered_twins_keep_the_digest_recorded_at_registration(tmp_path, monkeypatch):
    settings = _settings(tmp_path)
    first, second = _twins(tmp_path / "files")
    registry.register(settings, "ft-a", first, PASSED)
    registry.register(settings, "ft-b", second, PASSED)
    a_path, b_path = (registry.get_version(settings, v).model_path for v in ("ft-a", "ft-b"))
    calls = []
    monkeypatch.setattr(digests, "file_sha256", lambda path: calls.append(path) or "never")
    a, b = identify(settings, a_path), identify(settings, b_path)
    assert calls == []  # the registry's recorded digest, no hashing at look-up
    assert (a.name, b.name) == ("ft-a", "ft-b") and a.sha256 != b.sha256
    assert a.label.startswith("ft-a:") and len(a.label.split(":")[1]) == 16


def test_an_unregistered_file_is_hashed_once_per_content(tmp_path, monkeypatch):
    settings = _settings(tmp_path)
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF" + b"x" * 1000)
    real, calls = digests.file_sha256, []
    monkeypatch.setattr(digests, "file_sha256", lambda path: calls.append(path) or real(path))
    first = identify(settings, model)
    assert identify(settings, model) == first and len(calls) == 1  # the cache answers (another process too)
    assert (registry.llm_root(settings) / identity.DIGEST_CACHE).is_file()

    model.write_bytes(b"GGUF" + b"y" * 1000)  # same size, new content (and mtime)
    os.utime(model, ns=(model.stat().st_atime_ns, model.stat().st_mtime_ns + 1_000_000))
    second = identify(settings, model)
    assert len(calls) == 2 and second != first and second.name == first.name == "model.gguf"


def test_an_unwritable_cache_still_gives_the_digest(tmp_path):
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF1234")
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache folder would be")
    assert cached_sha256(model, blocker / "digests.json") == hashlib.sha256(b"GGUF1234").hexdigest()


def test_a_registered_file_of_another_size_than_registered_is_hashed_as_it_is(tmp_path):
    settings = _settings(tmp_path)
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF-original")
    path = registry.register(settings, "v1", model, PASSED).model_path
    recorded = identify(settings, path)
    path.write_bytes(b"GGUF-replaced-by-hand")
    replaced = identify(settings, path)
    assert replaced.name == "v1" and replaced.sha256 == hashlib.sha256(b"GGUF-replaced-by-hand").hexdigest()
    assert replaced != recorded


# ---------------------------------------------------------------------------------------------------- the loader
class _Fake:
    def __init__(self, settings: Settings, path: str) -> None:
        self.identity: ModelIdentity = identify(settings, path)
        self.thread = threading.current_thread().name
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_the_loader_swaps_by_identity_on_its_own_thread(tmp_path):
    settings = _settings(tmp_path)
    base = tmp_path / "base.gguf"
    base.write_bytes(b"GGUF-base")
    settings = settings.model_copy(update={"model_path": str(base)})
    first, second = _twins(tmp_path / "files", prefix_mib=2)
    registry.register(settings, "ft-a", first, PASSED)
    registry.register(settings, "ft-b", second, PASSED)
    loader: ModelLoader[_Fake] = ModelLoader(settings, lambda path: _Fake(settings, path))
    try:
        serving = loader.submit_load(loader.released()).result(10)
        assert serving.identity.name == "base.gguf" and serving.thread.startswith(ModelLoader.THREAD_NAME)
        assert loader.submit_check(serving.identity).result(10) is None  # nothing new

        seen = []
        for step in ("ft-a", "ft-b", "rollback"):
            if step == "rollback":
                registry.rollback(settings)
            else:
                registry.release(settings, step)
            release = loader.submit_check(serving.identity).result(10)
            assert release is not None
            serving = loader.submit_load(release).result(10)
            seen.append(serving.identity.name)
            assert loader.submit_check(serving.identity).result(10) is None
        assert seen == ["ft-a", "ft-b", "ft-a"]  # same-size, same-header twins, told apart; rollback swaps back
    finally:
        loader.close()


def test_the_loader_refuses_a_file_that_changed_while_it_loaded(tmp_path):
    settings = _settings(tmp_path)
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF-one")
    settings = settings.model_copy(update={"model_path": str(model)})
    loaded: list[_Fake] = []

    def load_after_a_change(path: str) -> _Fake:
        Path(path).write_bytes(b"GGUF-two!")
        loaded.append(_Fake(settings, path))
        return loaded[-1]

    loader: ModelLoader[_Fake] = ModelLoader(settings, load_after_a_change)
    try:
        with pytest.raises(RuntimeError, match="changed while it was loaded"):
            loader.submit_load(loader.released()).result(10)
        assert loaded[0].closed
    finally:
        loader.close()
