"""Two threads for the array work around the network: numpy's loops, cc3d and the resampling's BLAS
products release the GIL, so pre- and post-processing split over the node's two cores.

:func:`split_rows` runs ``fn(lo, hi)`` over halves of a row range, one half on the calling thread
and one on a shared worker; :func:`per_item` runs ``fn(i)`` for each item on up to two threads.
Neither nests: inside their work (on either thread) both run serially, so the one worker never
waits on itself.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

__all__ = ["WORKERS", "split_rows", "per_item"]

WORKERS = min(2, os.cpu_count() or 1)

_POOL: list[ThreadPoolExecutor] = []
_LOCK = threading.Lock()
_HERE = threading.local()  # .inside: this thread runs work handed out by split_rows or per_item


def _inside() -> bool:
    return bool(getattr(_HERE, "inside", False))


def _marked(fn: Callable[..., None], *args: int) -> None:
    outer = _inside()
    _HERE.inside = True
    try:
        fn(*args)
    finally:
        _HERE.inside = outer


def _pool() -> ThreadPoolExecutor:
    with _LOCK:
        if not _POOL:
            _POOL.append(ThreadPoolExecutor(WORKERS - 1, thread_name_prefix="pacsnode-arrays"))
        return _POOL[0]


def split_rows(fn: Callable[[int, int], None], n: int, *, worth: bool = True) -> None:
    """``fn(0, h)`` here and ``fn(h, n)`` on the worker (h = n // 2), or ``fn(0, n)`` alone where
    one thread is all there is, ``n`` < 2 or the work is not ``worth`` a thread hand-over."""
    if WORKERS < 2 or n < 2 or not worth or _inside():
        fn(0, n)
        return
    half = n // 2
    later = _pool().submit(_marked, fn, half, n)
    try:
        _marked(fn, 0, half)
    finally:
        later.result()


def per_item(fn: Callable[[int], None], n: int) -> None:
    """``fn(i)`` for i in range(n), on up to two threads (the calling one and the worker), in no set order."""
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
