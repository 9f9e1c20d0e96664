"""Versioned LLMs under `$EXPLORER_DATA_DIR/models/llm/<version>/` (model.gguf + metadata.json) with a `current`
pointer the serving side reads.

* `current_model_path(settings)` is THE function serving code calls for the GGUF to load: the released current
  version, else `settings.resolved_model_path()` (EXPLORER_MODEL_PATH or the packaged SmolLM2).
* `register` files a candidate (released or not: a model that failed its gates keeps its metadata, with the
  reasons, and loses its weights); `release` points `current` at a version that passed; `rollback` goes back to the
  previously released version (or to the base when there is none). The pointer and every metadata file are
  written atomically (write beside, fsync, rename), so a reader sees the old version or the new one, never half.
* `history.json` lists released versions in release order, which is what rollback walks back.

Cheap to import (no torch): the serving side imports it on every model load.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from models.storage import write_atomic
from streams.settings import Settings

CURRENT = "current"
HISTORY = "history.json"
MODEL_FILE = "model.gguf"
METADATA_FILE = "metadata.json"
_VERSION_RE = re.compile(r"^[A-Za-z0-9._-]+$")


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


def llm_root(settings: Settings) -> Path:
    return settings.resolved_data_dir() / "models" / "llm"


def current_version(settings: Settings) -> str | None:
    pointer = llm_root(settings) / CURRENT
    if not pointer.is_file():
        return None
    version = pointer.read_text(encoding="utf-8").strip()
    return version or None


def current_model_path(settings: Settings) -> str:
    """The GGUF the server should load: the released current fine-tuned model, else the configured base."""
    version = current_version(settings)
    if version is not None:
        path = llm_root(settings) / version / MODEL_FILE
        if path.is_file():
            return str(path)
    return settings.resolved_model_path()


def register(settings: Settings, version: str, model_file: Path | None, metadata: dict[str, Any]) -> ModelVersion:
    """File a candidate: its GGUF moved into `<version>/model.gguf` (none for a rejected model) and its metadata."""
    _check_name(version)
    folder = llm_root(settings) / version
    if folder.exists():
        raise RegistryError(f"model version {version} already exists under {llm_root(settings)}")
    folder.mkdir(parents=True)
    if model_file is not None:
        shutil.move(str(model_file), folder / MODEL_FILE)
    write_atomic(folder / METADATA_FILE, orjson.dumps(metadata, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
    return ModelVersion(version, folder, metadata)


def release(settings: Settings, version: str) -> ModelVersion:
    """Make `version` current. Only a model that passed its gates and has its weights can be released."""
    model = get_version(settings, version)
    if not model.passed_gates:
        reasons = "; ".join(model.metadata.get("gates", {}).get("reasons", [])) or "no gate results"
        raise RegistryError(f"model version {version} did not pass its gates ({reasons}); not released")
    if not model.model_path.is_file():
        raise RegistryError(f"model version {version} has no {MODEL_FILE}")
    history = [v for v in _history(settings) if v != version] + [version]
    write_atomic(llm_root(settings) / HISTORY, orjson.dumps(history))
    write_atomic(llm_root(settings) / CURRENT, version.encode() + b"\n")
    return model


def rollback(settings: Settings) -> str | None:
    """Return to the version released before the current one (None: back to the base model)."""
    current = current_version(settings)
    if current is None:
        raise RegistryError("no released model to roll back from: the base model is already serving")
    history = [v for v in _history(settings) if v != current]
    previous = next((v for v in reversed(history) if (llm_root(settings) / v / MODEL_FILE).is_file()), None)
    write_atomic(llm_root(settings) / HISTORY, orjson.dumps(history))
    if previous is None:
        (llm_root(settings) / CURRENT).unlink(missing_ok=True)
    else:
        write_atomic(llm_root(settings) / CURRENT, previous.encode() + b"\n")
    return previous


def get_version(settings: Settings, version: str) -> ModelVersion:
    _check_name(version)
    folder = llm_root(settings) / version
    meta = folder / METADATA_FILE
    if not meta.is_file():
        raise RegistryError(f"model version {version!r} not found under {llm_root(settings)}")
    return ModelVersion(version, folder, orjson.loads(meta.read_bytes()))


def list_versions(settings: Settings) -> list[ModelVersion]:
    """Every filed version, oldest first (by the creation time in its metadata)."""
    root = llm_root(settings)
    if not root.is_dir():
        return []
    found = [get_version(settings, p.name) for p in root.iterdir() if (p / METADATA_FILE).is_file()]
    return sorted(found, key=lambda m: (m.metadata.get("created_at", 0), m.version))


def _history(settings: Settings) -> list[str]:
    path = llm_root(settings) / HISTORY
    return list(orjson.loads(path.read_bytes())) if path.is_file() else []


def _check_name(version: str) -> None:
    if not _VERSION_RE.match(version) or version in (CURRENT, HISTORY):
        raise RegistryError(f"invalid model version name {version!r}")


