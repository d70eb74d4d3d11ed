"""steady_heap: the objects that exist when a run starts are out of the collector's sight
during the run and handed back after it; nested runs share the outermost pause."""

import gc
import weakref

from rossflow.gc_pause import steady_heap


def test_freezes_for_the_run_and_restores_after():
    before = gc.get_threshold()
    assert gc.get_freeze_count() == 0
    with steady_heap(young_threshold=12_345):
        frozen = gc.get_freeze_count()
        assert frozen > 0
        assert gc.get_threshold()[0] == max(before[0], 12_345)
        with steady_heap(young_threshold=99_999):  # nested: the outer pause stays as it is
            assert gc.get_threshold()[0] == max(before[0], 12_345)
        # still frozen after the inner block (the count drops only as frozen objects die)
        assert 0 < gc.get_freeze_count() <= frozen
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == before


def test_garbage_made_of_frozen_objects_is_collected_after_the_run():
    class Node:
        pass

    a, b = Node(), Node()
    a.other, b.other = b, a  # a cycle: only the collector frees it
    alive = weakref.ref(a)
    with steady_heap():
        del a, b
        gc.collect()
        assert alive() is not None  # frozen during the run
    gc.collect()
    assert alive() is None
