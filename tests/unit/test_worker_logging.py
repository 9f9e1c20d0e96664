"""streams/cli/worker.py: the worker's root logger stays at the level asked for (Faust's spinner set it to DEBUG)."""

from __future__ import annotations

import logging

import faust
import pytest

from streams.cli.worker import faust_worker


@pytest.fixture
def root_logger():
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield root
    root.setLevel(level)
    root.handlers[:] = handlers


def test_debug_records_are_not_built_at_the_workers_level(root_logger) -> None:
    app = faust.App("test-worker-logging", broker="kafka://127.0.0.1:1")
    fetcher = logging.getLogger("aiokafka.consumer.fetcher")

    faust.Worker(app, loglevel="warning")._setup_logging()  # Faust's own: its spinner wants every record
    assert root_logger.level == logging.DEBUG and fetcher.isEnabledFor(logging.DEBUG)

    faust_worker(app, "warning")._setup_logging()
    assert root_logger.level == logging.WARNING and not fetcher.isEnabledFor(logging.DEBUG)
    assert fetcher.isEnabledFor(logging.WARNING)
