"""Channels on two threads: numpy's loops and the resampling's BLAS products release the GIL, so the
preprocessing of a multi-channel study splits over the node's two cores.

:func:`per_item` runs ``fn(i)`` for each item on the calling thread and one shared worker. It does
not nest: inside its work (on either thread) it runs serially, so the worker never waits on itself.
Only whole channels are handed over: the mask pass and the way back's slabs, split over two threads,
were slower on this 2-CPU machine (memory-bound numpy, GIL-held gathers), at load and at their best.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

__all__ = ["WORKERS", "per_item"]

WORKERS = min(2, os.cpu_count() or 1)

_POOL: list[ThreadPoolExecutor] = []
_LOCK = threading.Lock()
_HERE = threading.local()  # .inside: this thread runs work handed out by per_item


def _inside() -> bool:
    return bool(getattr(_HERE, "inside", False))


def _marked(fn: Callable[[], None]) -> None:
    outer = _inside()
    _HERE.inside = True
    try:
        fn()
    finally:
        _HERE.inside = outer


def _pool() -> ThreadPoolExecutor:
    with _LOCK:
        if not _POOL:
            _POOL.append(ThreadPoolExecutor(WORKERS - 1, thread_name_prefix="pacsnode-arrays"))
        return _POOL[0]


def per_item(fn: Callable[[int], None], n: int) -> None:
    """``fn(i)`` for i in range(n), on up to two threads (the calling one and the worker), in no set order;
    an exception in either is raised here once both are done."""
    if WORKERS < 2 or n < 2 or _inside():
        for i in range(n):
            fn(i)
        return
    items = iter(range(n))
    lock = threading.Lock()

    def drain() -> None:
        while True:
            with lock:
                i = next(items, None)
            if i is None:
                return
            fn(i)

    later = _pool().submit(_marked, drain)
    try:
        _marked(drain)
    finally:
        later.result()
