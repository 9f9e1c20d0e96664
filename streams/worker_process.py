"""Running `explorer worker` as a child process: used by `explorer demo`, the benchmarks and the tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from streams.settings import Settings

T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout_s: float, what: str, poll_s: float = 0.2) -> T:
    """Poll `condition` until it returns something truthy; raise TimeoutError naming `what` on timeout."""
    deadline = time.monotonic() + timeout_s
    last: T = condition()
    while not last:
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s}s waiting for {what} (last: {last!r})")
        time.sleep(poll_s)
        last = condition()
    return last


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now (for a worker's web endpoint)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def settings_env(settings: Settings) -> dict[str, str]:
    """The EXPLORER_* environment that reproduces `settings` in a subprocess (secrets included, in the clear:
    the child needs them; an environment is readable only by its user)."""
    env = {}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif isinstance(value, (tuple, list)):
            value = json.dumps(list(value))
        env[f"EXPLORER_{name.upper()}"] = str(value)
    return env


@dataclass
class WorkerProcess:
    process: subprocess.Popen
    settings: Settings
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://{self.settings.web_host}:{self.settings.web_port}"

    def alive(self) -> bool:
        return self.process.poll() is None

    def get(self, path: str) -> bytes | None:
        try:
            with urllib.request.urlopen(self.base_url + path, timeout=2) as response:
                return response.read()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None

    def metrics(self) -> dict[str, float]:
        """Prometheus samples by name{labels} (labels sorted), e.g. 'explorer_events_rejected_total{reason=x}'."""
        body = self.get("/metrics")
        samples: dict[str, float] = {}
        if body is None:
            return samples
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return samples

    def metric(self, name: str) -> float:
        return self.metrics().get(name, 0.0)

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@contextmanager
def run_worker(settings: Settings, log_dir: Path, ready_timeout_s: float = 90.0) -> Iterator[WorkerProcess]:
    """Start `explorer worker` as a real subprocess and wait until its partitions are assigned."""
    env = {**os.environ, **settings_env(settings), "PYTHONUNBUFFERED": "1"}
    log_path = _new_log_path(log_dir, f"worker-{settings.web_port}")
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "worker", "--loglevel", "warning"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    worker = WorkerProcess(process, settings, log_path)
    try:
        def assigned() -> bool:
            if not worker.alive():
                raise RuntimeError(f"worker exited early:\n{worker.log_tail()}")
            body = worker.get("/health")
            return bool(body) and b'"assigned_partitions":[]' not in body

        wait_until(assigned, ready_timeout_s, "the worker to get its partitions")
        yield worker
    finally:
        stop_process(process)


def _new_log_path(log_dir: Path, stem: str) -> Path:
    """A log file no earlier worker wrote: a restarted worker on the same port keeps its predecessor's log."""
    path, n = log_dir / f"{stem}.log", 1
    while path.exists():
        n += 1
        path = log_dir / f"{stem}-{n}.log"
    return path


def stop_process(process: subprocess.Popen, timeout_s: float = 20.0) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout_s)
