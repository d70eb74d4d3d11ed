"""Garbage collection sized for a batch run in a process that has imported Prefect.

By the time a flow runs, its process holds a few hundred thousand long-lived objects (Prefect,
pydantic models, SQLAlchemy, Jinja2). Every full collection walks all of them, and a run that
parses pages of 100 annotations allocates fast enough to trigger one every second or so: in the
export benchmark the collector took ~0.25 of the flow's CPU (docs/benchmarks-export.md).

:func:`steady_heap` moves what exists when the run starts out of the collector's sight
(:func:`gc.freeze`) and collects the young generation less often; when the run ends, the
objects are handed back and the thresholds restored, so garbage made by them is still
collected later. Nested uses share the outermost one.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_depth = 0
_saved: tuple[int, int, int] | None = None

# Allocations between young-generation collections (Python's default: 700).
YOUNG_THRESHOLD = 20_000


@contextmanager
def steady_heap(young_threshold: int = YOUNG_THRESHOLD) -> Iterator[None]:
    """Freeze the objects that exist now and collect less often, until the block ends."""
    global _depth, _saved
    with _lock:
        _depth += 1
        if _depth == 1:
            _saved = gc.get_threshold()
            gc.freeze()
            gc.set_threshold(max(_saved[0], young_threshold), _saved[1], _saved[2])
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _saved is not None:
                gc.set_threshold(*_saved)
                gc.unfreeze()
                _saved = None


__all__ = ["YOUNG_THRESHOLD", "steady_heap"]
