"""llama.cpp's output goes through logging and a model load never silences the rest of the process
(models/llama_output.py): llama-cpp-python's `verbose=False` points file descriptors 1 and 2 at /dev/null while a
model loads, and a worker's FATAL line written by another thread meanwhile was lost."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

import pytest

from models.llama_output import route_llama_output
from streams.settings import Settings

# A child process (file descriptors are process-wide): a thread writes numbered lines to fd 2 while the main thread
# loads the packaged model with verbose=False; it prints how many it wrote, and how many of them during the load.
CHILD = textwrap.dedent("""
    import os, sys, threading, time
    route = sys.argv[1] == "route"
    if route:
        from models.llama_output import route_llama_output
        route_llama_output()
    from llama_cpp import Llama
    stop, written = threading.Event(), [0]
    def tick():
        while not stop.is_set():
            os.write(2, b"tick %d\\n" % written[0])
            written[0] += 1
            time.sleep(0.0005)
    thread = threading.Thread(target=tick)
    thread.start()
    while written[0] < 5:
        time.sleep(0.001)
    before = written[0]
    Llama(model_path=sys.argv[2], n_ctx=256, verbose=False)
    during = written[0] - before
    stop.set()
    thread.join()
    print(written[0], during)
""")


def _load_while_writing(route: bool) -> tuple[int, int, set[int]]:
    model = Settings().resolved_model_path()
    done = subprocess.run([sys.executable, "-c", CHILD, "route" if route else "plain", model],
                          capture_output=True, text=True, timeout=120, check=True)
    written, during = map(int, done.stdout.split())
    seen = {int(line.split()[1]) for line in done.stderr.splitlines() if line.startswith("tick ")}
    return written, during, seen


def test_a_model_load_loses_nothing_another_thread_writes_to_stderr():
    written, during, seen = _load_while_writing(route=True)
    assert during > 0, "no line was written during the load: the test proves nothing"
    assert seen == set(range(written)), f"{written - len(seen)} of {written} lines lost"


def test_without_the_routing_llama_cpp_python_loses_them():
    # why models/llama_output.py exists; when this fails, llama-cpp-python stopped redirecting and it can go
    written, during, seen = _load_while_writing(route=False)
    assert during > 0
    assert len(seen) < written


def test_llama_cpp_errors_reach_the_llama_cpp_logger(tmp_path, caplog):
    from llama_cpp import Llama

    route_llama_output()
    route_llama_output()  # idempotent
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not a gguf file" * 64)
    with caplog.at_level(logging.ERROR, logger="llama.cpp"), pytest.raises(ValueError):
        Llama(model_path=str(broken), verbose=False)
    errors = [r for r in caplog.records if r.name == "llama.cpp" and r.levelno == logging.ERROR]
    assert errors, "llama.cpp's error about the broken file was not logged"
