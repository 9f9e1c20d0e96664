"""llama.cpp's output in a process with other threads: through logging, never by redirecting file descriptors.

llama-cpp-python's `verbose=False` silences llama.cpp by pointing file descriptors 1 and 2 at /dev/null while a
model loads (`llama_cpp._utils.suppress_stdout_stderr`). That is process-wide: whatever any other thread writes
meanwhile is lost. In a worker the LLM loads on its own thread while ingestion already runs, so a FATAL line (a
failed delivery) or a crash report written during the load vanished: the failed-delivery fault test found a worker
that exited 1 with no word of why, one run in two.

`route_llama_output()` turns that redirection into a no-op and sends llama.cpp's own log to the `llama.cpp` logger
instead: errors as errors, everything else at DEBUG (what `verbose=False` hid before stays out of the way). Every
place that constructs a llama.cpp model calls it first; it is idempotent.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
from typing import Any

log = logging.getLogger("llama.cpp")

# ggml_log_level as the bundled llama.cpp numbers it: 0 none, 1 debug, 2 info, 3 warn, 4 error, 5 continuation of the
# previous message (the comment in llama-cpp-python's _logger.py has an older order; a broken file logs at 4)
_LEVELS = {4: logging.ERROR}
_CONTINUATION = 5
# llama-cpp-python's modules that bound the redirecting context manager by name at import
_REDIRECTING_MODULES = ("llama_cpp.llama", "llama_cpp._internals", "llama_cpp.llama_chat_format")

_callback: Any = None  # the ctypes callback must stay referenced as long as llama.cpp may call it
_last_level = logging.DEBUG


def _no_redirect(disable: bool = True) -> contextlib.AbstractContextManager[None]:
    return contextlib.nullcontext()


def _forward(level: int, text: bytes, user_data: Any) -> None:
    global _last_level
    python_level = _last_level if level == _CONTINUATION else _LEVELS.get(level, logging.DEBUG)
    _last_level = python_level
    message = text.decode("utf-8", errors="replace").rstrip()
    if message and log.isEnabledFor(python_level):
        log.log(python_level, "%s", message)


def route_llama_output() -> None:
    """Install the routing (once per process)."""
    global _callback
    if _callback is not None:
        return
    import importlib

    import llama_cpp

    for name in _REDIRECTING_MODULES:
        module = importlib.import_module(name)
        if not hasattr(module, "suppress_stdout_stderr"):
            raise RuntimeError(f"{name} no longer imports suppress_stdout_stderr: check models/llama_output.py "
                               "against this llama-cpp-python version")
        module.suppress_stdout_stderr = _no_redirect  # type: ignore[attr-defined]
    _callback = llama_cpp.llama_log_callback(_forward)
    llama_cpp.llama_log_set(_callback, ctypes.c_void_p(0))
