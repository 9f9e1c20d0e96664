"""Versioned LLMs under `$EXPLORER_DATA_DIR/models/llm/<version>/` (model.gguf + metadata.json) with a release
state the serving side reads.

* `current_model_path(settings)` is THE function serving code calls for the GGUF to load: the released current
  version, else `settings.resolved_model_path()` (EXPLORER_MODEL_PATH or the packaged SmolLM2).
* `register` files a candidate (released or not: a model that failed its gates keeps its metadata, with the
  reasons, and loses its weights). The version is assembled in a hidden staging folder and renamed into place, so a
  crash never leaves half a version; the sha256 of the whole model file is recorded then, once (`model_sha256`):
  with the version name it is the model's identity (models/identity.py), which every pair row and answer carries.
* `release` makes a version that passed current; `rollback` goes back to the previously released version (or to
  the base when there is none). The current version and the release history (what rollback walks back) live in ONE
  file, `released.json`, written atomically (write beside, fsync, rename, fsync the folder) under an exclusive
  lock: a reader sees the old state or the new one, and a crash between two writes cannot leave a history that
  disagrees with the current version. (Registries written before kept `current` + `history.json`; they are read
  when `released.json` is missing and replaced by it on the next release or rollback.)

Cheap to import (no torch): the serving side imports it on every model load.
"""

from __future__ import annotations

import fcntl
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from models.digests import DIGEST_CACHE, ModelIdentity, cached_sha256, file_sha256
from models.storage import VersionedStore, write_atomic
from streams.settings import Settings

STATE = "released.json"
CURRENT, HISTORY = "current", "history.json"  # the layout before released.json: read, never written
LOCK = ".lock"
MODEL_FILE = "model.gguf"
METADATA_FILE = "metadata.json"
_RESERVED = {STATE, CURRENT, HISTORY, LOCK, DIGEST_CACHE}


class RegistryError(RuntimeError):
    """A registry operation was refused; the message says why."""


@dataclass(frozen=True)
class ModelVersion:
    version: str
    path: Path  # the version's folder
    metadata: dict[str, Any]

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def passed_gates(self) -> bool:
        return bool(self.metadata.get("gates", {}).get("passed"))


@dataclass(frozen=True)
class _Released:
    current: str | None
    history: list[str]  # released versions in release order


def llm_root(settings: Settings) -> Path:
    return settings.resolved_data_dir() / "models" / "llm"


def _store(settings: Settings) -> VersionedStore:
    # The release state is one JSON file (current + history), not a bare pointer: rollback walks the history.
    return VersionedStore(llm_root(settings), reserved=frozenset(_RESERVED))


def current_version(settings: Settings) -> str | None:
    return _read_state(settings).current


def current_model_path(settings: Settings) -> str:
    """The GGUF the server should load: the released current fine-tuned model, else the configured base."""
    version = current_version(settings)
    if version is not None:
        path = llm_root(settings) / version / MODEL_FILE
        if path.is_file():
            return str(path)
    return settings.resolved_model_path()


def register(settings: Settings, version: str, model_file: Path | None, metadata: dict[str, Any]) -> ModelVersion:
    """File a candidate: its GGUF moved into `<version>/model.gguf` (none for a rejected model) and its metadata,
    with the model file's size and full sha256 added (`model_size`, `model_sha256`)."""
    _check_name(version)
    store = _store(settings)
    metadata = dict(metadata)

    def fill(staging: Path) -> None:
        if model_file is not None:
            shutil.move(str(model_file), staging / MODEL_FILE)
            metadata["model_size"] = (staging / MODEL_FILE).stat().st_size
            metadata["model_sha256"] = file_sha256(staging / MODEL_FILE)  # once, here: the model's identity
        write_atomic(staging / METADATA_FILE, orjson.dumps(metadata, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))

    def undo(staging: Path) -> None:
        if model_file is not None and (staging / MODEL_FILE).is_file() and not Path(model_file).exists():
            shutil.move(str(staging / MODEL_FILE), str(model_file))  # the caller keeps its file

    with _locked(settings):
        if store.folder(version).exists():
            raise RegistryError(f"model version {version} already exists under {store.root}")
        folder = store.publish(version, fill, undo=undo)  # the whole version appears at once
    return ModelVersion(version, folder, metadata)


def release(settings: Settings, version: str) -> ModelVersion:
    """Make `version` current. Only a model that passed its gates and has its weights can be released."""
    model = get_version(settings, version)
    if not model.passed_gates:
        reasons = "; ".join(model.metadata.get("gates", {}).get("reasons", [])) or "no gate results"
        raise RegistryError(f"model version {version} did not pass its gates ({reasons}); not released")
    if not model.model_path.is_file():
        raise RegistryError(f"model version {version} has no {MODEL_FILE}")
    with _locked(settings):
        state = _read_state(settings)
        _write_state(settings, _Released(version, [v for v in state.history if v != version] + [version]))
    return model


def rollback(settings: Settings) -> str | None:
    """Return to the version released before the current one (None: back to the base model)."""
    with _locked(settings):
        state = _read_state(settings)
        if state.current is None:
            raise RegistryError("no released model to roll back from: the base model is already serving")
        history = [v for v in state.history if v != state.current]
        previous = next((v for v in reversed(history) if (llm_root(settings) / v / MODEL_FILE).is_file()), None)
        _write_state(settings, _Released(previous, history))
    return previous


def registered_identity(settings: Settings, path: Path) -> ModelIdentity | None:
    """The identity of a registered version's model file (None when `path` is not one): the version and the
    digest recorded at registration, or -- for a version registered before digests were recorded, or a file that
    no longer has the registered size -- the version and a cached digest of the file as it is."""
    root = llm_root(settings).resolve()
    file = path.resolve()
    if file.name != MODEL_FILE or file.parent.parent != root or not (file.parent / METADATA_FILE).is_file():
        return None
    version = file.parent.name
    metadata = get_version(settings, version).metadata
    recorded = metadata.get("model_sha256")
    if recorded and metadata.get("model_size") == file.stat().st_size:
        return ModelIdentity(version, str(recorded))
    return ModelIdentity(version, cached_sha256(file, root / DIGEST_CACHE))


def calibrated_temperature(settings: Settings, path: Path) -> float | None:
    """The temperature fitted for a registered version's model at its cycle (metadata ``calibration``), or None:
    not a registered model, or one filed before calibration was recorded."""
    identity = registered_identity(settings, path)
    if identity is None:
        return None
    calibration = get_version(settings, identity.name).metadata.get("calibration") or {}
    temperature = calibration.get("temperature")
    return float(temperature) if temperature else None


def get_version(settings: Settings, version: str) -> ModelVersion:
    _check_name(version)
    folder = _store(settings).folder(version)
    meta = folder / METADATA_FILE
    if not meta.is_file():
        raise RegistryError(f"model version {version!r} not found under {llm_root(settings)}")
    return ModelVersion(version, folder, orjson.loads(meta.read_bytes()))


def list_versions(settings: Settings) -> list[ModelVersion]:
    """Every filed version, oldest first (by the creation time in its metadata)."""
    found = [get_version(settings, version) for version in _store(settings).versions(METADATA_FILE)]
    return sorted(found, key=lambda m: (m.metadata.get("created_at", 0), m.version))


@contextmanager
def _locked(settings: Settings) -> Iterator[None]:
    """One registry writer at a time (an operator's release and a scheduled cycle's, say): read-modify-write of the
    release state must not lose an update."""
    root = llm_root(settings)
    root.mkdir(parents=True, exist_ok=True)
    with (root / LOCK).open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read_state(settings: Settings) -> _Released:
    root = llm_root(settings)
    state = root / STATE
    if state.is_file():
        data = orjson.loads(state.read_bytes())
        return _Released(data.get("current") or None, list(data.get("history", [])))
    pointer, history = root / CURRENT, root / HISTORY
    current = pointer.read_text(encoding="utf-8").strip() if pointer.is_file() else ""
    return _Released(current or None, list(orjson.loads(history.read_bytes())) if history.is_file() else [])


def _write_state(settings: Settings, state: _Released) -> None:
    root = llm_root(settings)
    write_atomic(root / STATE, orjson.dumps({"current": state.current, "history": state.history},
                                            option=orjson.OPT_INDENT_2))
    for legacy in (CURRENT, HISTORY):  # released.json wins from now on; the old files would only mislead
        (root / legacy).unlink(missing_ok=True)


def _check_name(version: str) -> None:
    if not VersionedStore.NAME.match(version) or version in _RESERVED:  # a leading dot: work in progress
        raise RegistryError(f"invalid model version name {version!r}")
