"""heap.settle(): start-up objects frozen out of the collector's walks, cycles made later still
collected, pauses measured, and release() undoing the freeze."""

from __future__ import annotations

import gc
import weakref

import pytest
from dropslot_kit import heap


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def _cycle() -> weakref.ref[_Node]:
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    return weakref.ref(a)


@pytest.fixture
def restore_gc():
    threshold = gc.get_threshold()
    yield
    heap.release()
    gc.set_threshold(*threshold)


def _pauses(generation: str) -> float:
    value = heap.GC_PAUSE.labels(generation)._sum.get()  # noqa: SLF001
    return float(value)


def test_settle_freezes_what_exists_and_still_collects_new_cycles(restore_gc):
    before_start = _cycle()  # garbage already: the collection before the freeze frees it
    frozen = heap.settle()
    assert before_start() is None
    assert frozen > 1000 and gc.get_freeze_count() == frozen  # the interpreter's own objects at least
    assert gc.get_threshold()[0] >= heap.YOUNG_THRESHOLD

    later = _cycle()
    assert later() is not None
    gc.collect()
    assert later() is None  # the collector still finds cycles made after the freeze


def test_a_full_collection_after_settle_walks_only_new_objects(restore_gc):
    heap.settle()
    keep = [_Node() for _ in range(1000)]
    tracked = len(gc.get_objects())  # frozen objects are not listed
    assert tracked < gc.get_freeze_count()
    assert len(keep) == 1000


def test_pauses_are_measured_per_generation(restore_gc):
    heap.settle()
    before = _pauses("2")
    gc.collect()
    assert _pauses("2") > before


def test_release_makes_frozen_objects_collectable_again(restore_gc):
    heap.settle()
    assert gc.get_freeze_count() > 0
    heap.release()
    assert gc.get_freeze_count() == 0
