"""streams/gc_freeze.py: garbage made before the freeze is still collected, survivors leave full collections."""

from __future__ import annotations

import gc
import weakref

from streams.gc_freeze import freeze_long_lived


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def test_freezing_collects_garbage_first_and_freezes_the_survivors() -> None:
    a, b = Node(), Node()
    a.other, b.other = b, a  # a cycle: only the collector can free it
    dead = weakref.ref(a)
    del a, b
    kept = Node()
    try:
        frozen = freeze_long_lived("test")
        assert dead() is None  # collected, not frozen forever
        assert frozen == gc.get_freeze_count() > 0
        assert any(obj is kept for obj in gc.get_objects()) is False  # frozen objects are out of the collector's sight
    finally:
        gc.unfreeze()
    assert any(obj is kept for obj in gc.get_objects())
