"""Thread counts for a block of code: weightpack's C kernels and, optionally, BLAS.

A model alternates weightpack's products with BLAS calls (attention, dense layers). OpenBLAS's
workers keep spinning for a while after each call, so on a machine with few cores its threads and
weightpack's compete for the same CPUs; ``threads()`` sets both counts for a block and restores
them afterwards, so that a caller can pick the split that is fastest for the whole model
(``bench/bench_kernels.py --threads 1 2`` measures each format beside BLAS, in both orders).
``blas_sleep_when_idle()`` instead makes OpenBLAS's idle workers sleep right after each call, so
both libraries keep every core.

>>> import weightpack as wp
>>> from weightpack.kernels import backend_c
>>> before = backend_c.threads()
>>> with wp.threads(1):
...     backend_c.threads()
1
>>> backend_c.threads() == before
True
"""
from __future__ import annotations

import ctypes
import os
from contextlib import contextmanager

from .errors import WeightpackError, describe


@contextmanager
def threads(count: int | None = None, *, blas: int | None = None):
    """Inside the block, weightpack's C kernels run on ``count`` threads (None: unchanged) and, when
    ``blas`` is given, BLAS libraries (OpenBLAS, MKL, BLIS) on ``blas`` threads through
    threadpoolctl (``pip install threadpoolctl``). Both are restored on exit, also on error."""
    from .kernels import backend_c

    if blas is not None and (isinstance(blas, bool) or not isinstance(blas, int) or blas < 1):
        raise WeightpackError(f"blas={describe(blas)} must be a positive integer or None")
    limiter = _blas_limiter(blas) if blas is not None else None
    before = backend_c.threads()
    try:
        if count is not None:
            backend_c.set_threads(count)
        if limiter is not None:
            limiter.__enter__()
        yield
    finally:
        backend_c.set_threads(before)
        if limiter is not None:
            limiter.__exit__(None, None, None)


def _blas_limiter(count: int):
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        raise WeightpackError("threads(blas=...) needs threadpoolctl: pip install threadpoolctl") from None
    return threadpool_limits(limits=count, user_api="blas")


def blas_sleep_when_idle(log2_cycles: int = 4) -> list[str]:
    """Make OpenBLAS's idle worker threads sleep ``2**log2_cycles`` cycles after their last job
    (4 to 30) instead of the ~2**28 cycles (~0.1 s) they busy-wait by default; returns the paths of
    the OpenBLAS libraries changed (an empty list: no pthreads OpenBLAS is loaded; needs
    threadpoolctl).

    The busy-waiting worker holds a core for ~0.1 s after every BLAS call, so on a machine with
    few cores weightpack's second thread finds it taken: beside numpy's 2-thread GEMV a 4096 x
    4096 4-bit LUT product then runs at its 1-thread speed (bench/NOTES.md, "Threads beside
    BLAS"). This has the effect of ``OPENBLAS_THREAD_TIMEOUT`` set before Python starts, on a
    library already loaded: the value is re-read (``openblas_read_env``) and the workers are
    stopped (``blas_thread_shutdown_``, as OpenBLAS's fork handler does); the next BLAS call
    starts them again. Call it when no other thread is inside a BLAS call (at start-up).

    >>> import weightpack as wp
    >>> changed = wp.blas_sleep_when_idle()   # e.g. ['.../numpy.libs/libscipy_openblas64_-....so']
    """
    if isinstance(log2_cycles, bool) or not isinstance(log2_cycles, int) or not 4 <= log2_cycles <= 30:
        raise WeightpackError(f"log2_cycles={describe(log2_cycles)} must be an integer in [4, 30]")
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        raise WeightpackError("blas_sleep_when_idle() needs threadpoolctl: pip install threadpoolctl") from None
    changed = []
    for info in threadpool_info():
        if info.get("internal_api") != "openblas" or info.get("threading_layer") != "pthreads":
            continue  # OpenMP builds sleep by OMP_WAIT_POLICY; other BLAS libraries have no such spin
        lib = ctypes.CDLL(info["filepath"])
        if not all(hasattr(lib, name) for name in ("openblas_read_env", "openblas_thread_timeout", "blas_thread_shutdown_")):
            continue
        before = os.environ.get("OPENBLAS_THREAD_TIMEOUT")
        os.environ["OPENBLAS_THREAD_TIMEOUT"] = str(log2_cycles)
        try:
            lib.openblas_read_env()
        finally:
            if before is None:
                del os.environ["OPENBLAS_THREAD_TIMEOUT"]
            else:
                os.environ["OPENBLAS_THREAD_TIMEOUT"] = before
        if lib.openblas_thread_timeout() == log2_cycles:
            lib.blas_thread_shutdown_()
            changed.append(info["filepath"])
    return changed
