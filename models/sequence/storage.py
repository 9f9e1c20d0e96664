"""Where trained sequence models live: `<data_dir>/models/sequence/<version>/` in the versioned store
(models/storage.py), with a `current` pointer."""

from __future__ import annotations

from pathlib import Path

from models.storage import VersionedStore
from streams.settings import Settings


CURRENT = "current"
MODEL_FILE = "model.pt"
FORMAT = 1


class SequenceModelNotTrained(RuntimeError):
    """No trained sequence model is available; the message says how to make one."""


def sequence_root(settings: Settings) -> Path:
    return settings.resolved_data_dir() / "models" / "sequence"


def sequence_store(settings: Settings) -> VersionedStore:
    return VersionedStore(sequence_root(settings), reserved=frozenset({CURRENT}))
