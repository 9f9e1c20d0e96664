"""Finding and loading a newly released LLM for a hot swap, on a thread of its own.

A worker serves with two threads besides the event loop: the LLM thread (request-time misses, the pair refresher)
and the I/O thread (LanceDB reads, grounding with the sequence model). Loading a model takes seconds (SmolLM2:
reading ~100 MB, priming the system prompt) and checking the registry may hash an unregistered file once, so
neither may run on those threads: `ModelLoader` runs both on its own single thread, and the caller awaits the
returned futures (``asyncio.wrap_future``) while requests keep being served by the model in place.

What is released is decided by identity (models/identity.py), not by path: a rollback A -> B -> A, or a file
replaced in place at EXPLORER_MODEL_PATH, is a change exactly when the content is.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

from models.identity import ModelIdentity, identify

if TYPE_CHECKING:
    from streams.settings import Settings


class Identified(Protocol):
    identity: ModelIdentity


P = TypeVar("P", bound=Identified)


@dataclass(frozen=True)
class Release:
    path: str
    identity: ModelIdentity


class ModelLoader(Generic[P]):
    """Checks the registry for the released model and loads it, one job at a time, on the `llm-load` thread."""

    THREAD_NAME = "llm-load"

    def __init__(self, settings: Settings, load: Callable[[str], P]) -> None:
        self.settings = settings
        self._load = load
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self.THREAD_NAME)

    def released(self) -> Release:
        """The model serving should use now (the registry's current version, else the configured base)."""
        from models.finetune.registry import current_model_path

        path = current_model_path(self.settings)
        return Release(path, identify(self.settings, path))

    def newer_than(self, serving: ModelIdentity) -> Release | None:
        """The released model when it is not the one serving, else None."""
        release = self.released()
        return None if release.identity == serving else release

    def load(self, release: Release) -> P:
        model = self._load(release.path)
        if model.identity != release.identity:  # the file changed between the check and the load: try next round
            close = getattr(model, "close", None)
            if close is not None:
                close()
            raise RuntimeError(f"{release.path} changed while it was loaded ({release.identity.label} -> "
                               f"{model.identity.label}); the next check loads it again")
        return model

    def submit_check(self, serving: ModelIdentity) -> Future[Release | None]:
        return self._executor.submit(self.newer_than, serving)

    def submit_load(self, release: Release) -> Future[P]:
        return self._executor.submit(self.load, release)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
