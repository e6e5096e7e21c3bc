"""The thread count of weightpack's C kernels for one program: the count that runs the *whole*
program fastest, measured at load.

A kernel timed alone favours every core it can get, but in a program the products alternate
with numpy and BLAS calls, whose worker threads keep spinning on the cores after each call: the
second thread of a weightpack product may then wait for a core instead of helping (issue 11). So
the choice is made on the program itself: at load, ``predict`` runs on inputs of zeros (the
declared shapes; the smallest a flexible input allows; a stateful program on a state of its
own) at 1 thread and at every CPU, alternating, and the count with the lowest median latency
wins. ``Program.predict`` then sets that count for
its call and restores the process's count afterwards (so a :func:`weightpack.threads` block
around ``predict`` does not change it: ``Program.load(..., threads=n)`` does). BLAS keeps its own
threads (reported, not changed).
"""
from __future__ import annotations

import os
import statistics
import time

import numpy as np

from ...errors import WeightpackError
from .graph import dtype_of

ROUNDS = 5


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def c_kernels():
    """weightpack's C backend module, or None when the extension is not built."""
    try:
        from ...kernels import backend_c
    except (ImportError, WeightpackError):
        return None
    return backend_c


def blas_threads():
    """The threads numpy's BLAS uses (through threadpoolctl, when installed), or None."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    counts = [info.get("num_threads") for info in threadpool_info() if info.get("user_api") == "blas"]
    return counts[0] if counts else None


def probe_inputs(program) -> dict:
    """Zeros for every input: its declared shape, unknown dimensions at the smallest size allowed."""
    feeds = {}
    for var in program.graph.inputs:
        flexible = program.graph.input_shapes.get(var.name)
        if flexible is not None and flexible[0] == "enumerated":
            shape = tuple(flexible[1][0])
        elif flexible is not None:
            shape = tuple(max(1, lo) for lo, _ in flexible[1])
        else:
            shape = tuple(1 if d is None else d for d in (var.type.shape or ()))
        feeds[var.name] = np.zeros(shape, dtype_of(var.type.dtype))
    return feeds


def choose(program, candidates) -> tuple[int, dict]:
    """(fastest count, {count: median seconds per call}) of ``program.predict`` on zeros, the
    counts alternating call by call so that both see the same machine."""
    kernels = c_kernels()
    feeds = probe_inputs(program)
    state = {"state": program.make_state()} if program.graph.states else {}  # a stateful program's own, thrown away
    before = kernels.lib.wp_threads()
    times = {n: [] for n in candidates}
    try:
        for round_ in range(ROUNDS + 1):
            for n in candidates:
                program._threads = n
                t0 = time.perf_counter()
                program.predict(feeds, **state)
                if round_:  # the first round warms up
                    times[n].append(time.perf_counter() - t0)
    finally:
        kernels.lib.wp_set_threads(before)
    seconds = {n: statistics.median(t) for n, t in times.items()}
    return min(seconds, key=seconds.get), seconds
