"""streams/gc_freeze.py: garbage made before the freeze is still collected, survivors leave full collections."""

from __future__ import annotations

import gc
import weakref

from streams.gc_freeze import SurvivorFreezer, freeze_long_lived


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


def test_a_full_collection_freezes_its_survivors_and_a_thaw_frees_what_died_frozen() -> None:
    freezer = SurvivorFreezer()
    a, b = Node(), Node()
    a.other, b.other = b, a
    frozen_cycle = weakref.ref(a)
    garbage = Node()
    garbage.other = garbage  # dead before the collection: collected, not frozen
    dead_before = weakref.ref(garbage)
    del garbage
    freezer.install()
    try:
        gc.collect()
        assert freezer.freezes == 1 and dead_before() is None
        assert not any(obj is a for obj in gc.get_objects())  # a survivor: out of later walks
        young = Node()
        young.other = young
        assert any(obj is young for obj in gc.get_objects())  # made after the freeze: walked as before
        dead_young = weakref.ref(young)
        del young
        gc.collect(1)  # a young collection: no freeze
        assert dead_young() is None and freezer.freezes == 1

        del a, b  # a cycle that dies while frozen: no collection can see it ...
        gc.collect()
        assert frozen_cycle() is not None
        assert freezer.thaw() >= 2  # ... until a thaw
        assert frozen_cycle() is None and freezer.thawed_garbage >= 2 and gc.get_freeze_count() > 0
    finally:
        freezer.uninstall()
        gc.unfreeze()
    kept = Node()
    gc.collect()
    assert freezer.freezes == 3  # the two collections and the thaw's, none after uninstall
    assert any(obj is kept for obj in gc.get_objects())
