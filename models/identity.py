"""A model's identity: the name every pair row, answer and metric made by a model carries.

`ModelIdentity` is a name plus the sha256 of the WHOLE file. The name is the registry version for a registered
model (models/finetune/registry.py records the digest once, at registration) and the file name otherwise. A prefix
of the file is not enough: a GGUF starts with its metadata (SmolLM2's tokenizer alone fills the first 1.70 MiB), a
fine-tune's export copies that metadata from its base, every release is `<version>/model.gguf`, and two Q8_0
quantizations of one architecture have the same size -- so two fine-tunes differ only further in.

A full digest of a ~100 MB file costs ~0.1-0.3 s, so it is computed once: at registration, or, for an unregistered
file (EXPLORER_MODEL_PATH, the packaged base), once per (path, size, mtime) and cached in a small JSON file under
the data dir. Nothing hashes a model per request.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from models.digests import DIGEST_CACHE, LABEL_DIGEST_CHARS, ModelIdentity, cached_sha256, file_sha256
from models.finetune import registry

if TYPE_CHECKING:
    from streams.settings import Settings

__all__ = ["DIGEST_CACHE", "LABEL_DIGEST_CHARS", "ModelIdentity", "cached_sha256", "file_sha256", "identify"]


def identify(settings: Settings, path: str | os.PathLike[str]) -> ModelIdentity:
    """The identity of the model file at `path`: its registry version and recorded digest when it is a registered
    version's model (and still the size registered), else its file name and a cached full digest."""
    registered = registry.registered_identity(settings, Path(path))
    if registered is not None:
        return registered
    return ModelIdentity(Path(path).name, cached_sha256(path, registry.llm_root(settings) / DIGEST_CACHE))
