"""Running nogil kernels on a few threads, deterministically.

The encoders split their work into a fixed list of tasks (groups of channels, or chunks of
elements whose count depends only on the input size) and run the tasks on a thread pool. The
kernels release the GIL, so threads run them in parallel. Partial results are combined in task
order, so the result never depends on how many threads ran: the same input gives the same bytes.

``WEIGHTPACK_THREADS`` sets the number of threads (default: the CPUs this process may use).
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

CHUNK = 1 << 20  # elements per chunk of an elementwise pass
HIST_CHUNK = 1 << 22  # elements per chunk of a pass that fills a private histogram (fewer to merge)
MAX_CHUNKS = 64


def thread_count() -> int:
    """Threads the encoders use: ``$WEIGHTPACK_THREADS`` or the CPUs available to this process."""
    env = os.environ.get("WEIGHTPACK_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


_pool = {"pid": None, "size": 0, "executor": None}
_worker = threading.local()


def _executor(size: int) -> ThreadPoolExecutor:
    """The process's pool of ``size`` threads (made again after a fork or a size change)."""
    if _pool["pid"] != os.getpid() or _pool["size"] != size:
        _pool.update(pid=os.getpid(), size=size, executor=ThreadPoolExecutor(size, "weightpack", _mark_worker))
    return _pool["executor"]


def _mark_worker():
    _worker.inside = True


def run(fn, tasks) -> list:
    """``[fn(t) for t in tasks]``, on up to :func:`thread_count` threads; results in task order.

    Called from one of the pool's own threads it runs serially (no pool waits on itself)."""
    tasks = list(tasks)
    size = thread_count()
    if size <= 1 or len(tasks) <= 1 or getattr(_worker, "inside", False):
        return [fn(t) for t in tasks]
    return list(_executor(size).map(fn, tasks))


def chunks(n: int, align: int = 8, size: int = CHUNK) -> list[tuple[int, int]]:
    """Split ``range(n)`` into contiguous (start, stop) pieces of about ``size`` (at most
    ``MAX_CHUNKS``); boundaries are multiples of ``align``. The split depends only on ``n`` and
    ``size``, never on the thread count.

    >>> chunks(10, align=4)
    [(0, 10)]
    >>> len(chunks(5 * CHUNK)), chunks(5 * CHUNK)[1]
    (5, (1048576, 2097152))
    """
    count = max(1, min(MAX_CHUNKS, n // size))
    step = -(-n // count)
    step = -(-step // align) * align
    return [(lo, min(lo + step, n)) for lo in range(0, n, step)] or [(0, 0)]


def spans(count: int, parts: int = 64) -> list[tuple[int, int]]:
    """Split ``range(count)`` (e.g. groups) into at most ``parts`` contiguous, balanced spans; the
    split depends only on ``count`` (work carried from group to group stays the same).

    >>> spans(10, 3)
    [(0, 3), (3, 6), (6, 10)]
    """
    parts = max(1, min(count, parts))
    bounds = [count * i // parts for i in range(parts + 1)]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
