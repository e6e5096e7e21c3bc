"""Thread counts for a block of code: weightpack's C kernels and, optionally, BLAS.

A model alternates weightpack's products with BLAS calls (attention, dense layers). OpenBLAS's
workers keep spinning for a while after each call, so on a machine with few cores its threads and
weightpack's compete for the same CPUs; ``threads()`` sets both counts for a block and restores
them afterwards, so that a caller can pick the split that is fastest for the whole model
(``bench/bench_kernels.py --threads 1 2`` measures each format beside BLAS, in both orders).

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
