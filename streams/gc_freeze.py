"""Keep full garbage collections short: what lives for the whole process leaves the collector's sight.

CPython runs a full (generation 2) collection whenever a quarter more objects have survived into the oldest
generation, and each one walks every tracked object: in a worker that is mostly what start-up made and never frees
(modules, classes and functions of Faust, torch, transformers, LanceDB, llama-cpp; the loaded models' Python side;
the app). Measured as 355-523 ms pauses of the whole event loop during a replay, 2-3 per 25 s. `gc.freeze()` once
start-up is over moves those objects to a permanent generation that collections skip; objects made afterwards (the
growing state, in-flight batches) are collected as before.

The price: a frozen object that later becomes part of an unreachable reference cycle is never freed. Freezing once,
after start-up, bounds that to what start-up made; objects freed by reference counting are freed as usual.
"""

from __future__ import annotations

import gc
import logging
import time

log = logging.getLogger(__name__)


def freeze_long_lived(what: str) -> int:
    """Collect what is garbage now, then freeze every surviving object; returns how many are frozen in all."""
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info("gc: %s; %d objects frozen out of full collections (%.0f ms)", what, frozen,
             (time.perf_counter() - started) * 1000)
    return frozen


class SurvivorFreezer:
    """Freeze what survives each full collection, so that the next one walks only what was made since.

    A worker's state grows (users, counts), and CPython starts a full collection each time the objects that reached
    the oldest generation grow by a quarter; each walks all of them -- 36-52 ms pauses of the whole worker, 5-8 a
    minute, behind a full-speed replay (bench.recommend_latency). At the end of a full collection the younger
    generations are empty and everything left is reachable: freezing at that moment (the collector's own "stop"
    callback) moves exactly those survivors out of later walks. The trigger is unchanged (CPython still compares the
    new survivors with the size the last full collection saw), so collections come as often as before, each shorter.

    The price is the one `gc.freeze()` documents: a frozen object that later becomes part of an unreachable reference
    cycle is not freed (the state's values are freed by reference counting as usual). `thaw()` -- every
    `EXPLORER_GC_THAW_EVERY_S` in a worker -- unfreezes everything and collects once, returning what it freed (the
    measure of that leak), then freezes the survivors again.
    """

    def __init__(self) -> None:
        self.freezes = 0
        self.thawed_garbage = 0  # objects the thaws freed: what freezing had kept alive
        self._installed = False

    def install(self) -> None:
        if not self._installed:
            gc.callbacks.append(self._on_gc)
            self._installed = True

    def uninstall(self) -> None:
        if self._installed:
            gc.callbacks.remove(self._on_gc)
            self._installed = False

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        # Runs with the GIL held, after the collection ended: the generations are consistent lists, and freezing
        # only splices them onto the permanent one.
        if phase == "stop" and info["generation"] == 2:
            gc.freeze()
            self.freezes += 1

    def thaw(self) -> int:
        """Unfreeze everything, collect once (a full walk: one long pause), freeze the survivors again; returns the
        objects freed."""
        started = time.perf_counter()
        gc.unfreeze()
        freed = gc.collect()  # its own "stop" callback freezes the survivors again
        if not self._installed:
            gc.freeze()
        self.thawed_garbage += freed
        log.info("gc: thawed and collected everything: %d objects freed, %d frozen again (%.0f ms)", freed,
                 gc.get_freeze_count(), (time.perf_counter() - started) * 1000)
        return freed
