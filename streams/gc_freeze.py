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
