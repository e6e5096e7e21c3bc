"""Compressing many tensors at once, on any ``concurrent.futures.Executor``.

A :class:`CompressionConfig` says what to do to one tensor: up to three steps applied in the order
prune -> palettize -> quantize (so prune + palettize gives sparse palettized nonzeros, palettize +
quantize an int8 LUT), each the keyword arguments of that encoder. :func:`compress_all` runs one
config for every tensor, or one per name, as one task per tensor on an executor: a process pool by
default, or whatever the caller passes (a thread pool; Dask's or Ray's executors for models larger
than one machine). Results travel back as plain arrays, so any executor that pickles works. At most
two tasks per worker are in flight, so a model is never copied into the task queue all at once;
each encoder keeps its extra memory under about three times the tensor's size.
"""
from __future__ import annotations

import dataclasses
import multiprocessing
import os
import sys
import time
from collections.abc import Mapping
from concurrent.futures import FIRST_COMPLETED, Executor, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

import numpy as np

from ..errors import WeightpackError, describe
from . import _threads

STEPS = ("prune", "palettize", "quantize")


@dataclasses.dataclass(frozen=True)
class CompressionConfig:
    """Steps for one tensor, each a dict of keyword arguments for that encoder (None: skip the step).

    ``min_size``: tensors with at most this many elements are left as they are (coremltools'
    ``weight_threshold``, default 0: compress everything).

    >>> c = CompressionConfig(prune={"sparsity": 0.5}, palettize={"nbits": 4})
    >>> c == CompressionConfig.from_dict({"prune": {"sparsity": 0.5}, "palettize": {"nbits": 4}})
    True
    """

    prune: Mapping | None = None
    palettize: Mapping | None = None
    quantize: Mapping | None = None
    min_size: int = 0

    def __post_init__(self):
        steps = [getattr(self, s) for s in STEPS]
        if all(s is None for s in steps):
            raise WeightpackError("a CompressionConfig needs at least one of prune, palettize, quantize")
        for name, step in zip(STEPS, steps):
            if step is not None and not (isinstance(step, Mapping) and all(isinstance(k, str) for k in step)):
                raise WeightpackError(f"{name}={describe(step)} must be a dict of keyword arguments (or None)")
        if isinstance(self.min_size, (bool, np.bool_)) or not isinstance(self.min_size, (int, np.integer)) or self.min_size < 0:
            raise WeightpackError(f"min_size={describe(self.min_size)} must be a non-negative integer")

    @classmethod
    def from_dict(cls, config: Mapping) -> "CompressionConfig":
        """From ``{"prune": {...}, "palettize": {...}, "quantize": {...}, "min_size": n}`` (any subset)."""
        unknown = set(config) - set(STEPS) - {"min_size"}
        if unknown:
            raise WeightpackError(f"unknown config keys {sorted(unknown)}; allowed: {', '.join(STEPS)}, min_size")
        return cls(**config)

    def apply(self, w):
        """Compress one array with these steps (or return it unchanged if it is too small)."""
        from . import palettize, prune, quantize

        if np.size(w) <= self.min_size:
            return w
        out = w
        if self.prune is not None:
            out = prune(out, **self.prune)
        if self.palettize is not None:
            out = palettize(out, **self.palettize)
        if self.quantize is not None:
            out = quantize(out, **self.quantize)
        return out


def compress_all(weights: Mapping, config, *, executor=None, progress=None) -> dict:
    """Compress every array of ``weights`` (name -> array); returns name -> compressed tensor (or the
    array itself where a config's ``min_size`` skips it, or its per-name config is None).

    ``config``: a :class:`CompressionConfig` (or its dict form) for every tensor, or a mapping from
    name to config (names it lacks are left as they are). ``executor``: a
    ``concurrent.futures.Executor`` or a ``dask.distributed.Client``; None runs a process pool on
    this machine's CPUs (its workers start fresh, never forked: :data:`START_METHOD`).
    ``progress``: a bar on stderr; None shows it when stderr is a terminal.

    >>> import numpy as np
    >>> from concurrent.futures import ThreadPoolExecutor
    >>> ws = {"a": np.ones((8, 8), np.float32), "b": np.arange(64, dtype=np.float32).reshape(8, 8)}
    >>> with ThreadPoolExecutor(2) as pool:
    ...     out = compress_all(ws, {"quantize": {"dtype": "int8"}}, executor=pool, progress=False)
    >>> sorted(out), type(out["b"]).__name__
    (['a', 'b'], 'QuantizedTensor')
    """
    if not isinstance(weights, Mapping):
        raise WeightpackError(f"weights must be a mapping of name -> array, got {type(weights).__name__}")
    configs = _configs(weights, config)
    show = sys.stderr.isatty() if progress is None else bool(progress)
    own = executor is None
    if own:
        executor = default_pool(len(weights))
    executor, workers = _as_executor(executor)
    limit = 2 * max(1, workers or _threads.thread_count())
    bar = _Progress(len(weights), show)
    results = {}
    try:
        pending = {}
        todo = iter(weights.items())
        while True:
            while len(pending) < limit:
                item = next(todo, None)
                if item is None:
                    break
                name, w = item
                if configs.get(name) is None:
                    results[name] = w
                    bar.step(np.asarray(w).nbytes if isinstance(w, np.ndarray) else 0, 0)
                    continue
                pending[executor.submit(_compress_one, name, w, configs[name])] = (name, w)
            if not pending:
                break
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                name, w = pending.pop(future)
                try:
                    out = future.result()
                except BrokenProcessPool as exc:
                    if not own:
                        raise  # the caller's executor: the caller's to diagnose
                    raise _broken_pool(exc) from exc
                results[name] = out
                bar.step(getattr(w, "nbytes", 0), out.nbytes)
    except BaseException:
        for future in list(pending):
            future.cancel()
        raise
    finally:
        bar.close()
        if own:
            executor.shutdown()
    return {name: results[name] for name in weights}


def _as_executor(executor):
    """(a ``concurrent.futures.Executor``, its worker count or 0 if unknown) for what the caller
    passed: an Executor, or a ``dask.distributed.Client`` (its executor; one worker per thread)."""
    if not isinstance(executor, Executor) and callable(getattr(executor, "get_executor", None)):
        threads = getattr(executor, "nthreads", None)
        workers = sum(threads().values()) if callable(threads) else 0
        return executor.get_executor(), workers
    if not isinstance(executor, Executor):
        raise WeightpackError(
            f"executor={describe(executor)} must be a concurrent.futures.Executor or a dask.distributed Client"
        )
    return executor, getattr(executor, "_max_workers", 0)


def _configs(weights: Mapping, config) -> dict:
    if isinstance(config, CompressionConfig):
        return {name: config for name in weights}
    if isinstance(config, Mapping) and config and set(config) <= set(STEPS) | {"min_size"}:
        one = CompressionConfig.from_dict(config)
        return {name: one for name in weights}
    if not isinstance(config, Mapping):
        raise WeightpackError(
            f"config={describe(config)} must be a CompressionConfig, its dict form, or a mapping name -> config"
        )
    out = {}
    for name, c in config.items():
        if name not in weights:
            raise WeightpackError(f"config names {name!r}, which is not among the weights")
        if c is None or isinstance(c, CompressionConfig):
            out[name] = c
        elif isinstance(c, Mapping):
            out[name] = CompressionConfig.from_dict(c)
        else:
            raise WeightpackError(f"config[{name!r}]={describe(c)} must be a CompressionConfig, a dict or None")
    return out


START_METHOD = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
"""How the default pool starts its workers: from a fresh interpreter, never by forking this process
(a fork copies the state of threads that do not exist in the child: an OpenMP runtime that ran a
parallel kernel here would hang the first parallel kernel in a forked worker)."""


def default_pool(tasks: int) -> ProcessPoolExecutor:
    """The pool :func:`compress_all` uses when given no executor: one worker per CPU (at most one per
    task), each running its kernels on its share of the CPUs, started with :data:`START_METHOD`."""
    workers = max(1, min(_threads.thread_count(), tasks))
    inner = max(1, _threads.thread_count() // workers)
    context = multiprocessing.get_context(START_METHOD)
    return ProcessPoolExecutor(workers, mp_context=context, initializer=_set_threads, initargs=(inner,))


def _broken_pool(exc: BaseException) -> WeightpackError:
    return WeightpackError(
        f"a worker of compress_all's process pool died ({exc}). Workers start a fresh Python ({START_METHOD!r}) "
        "that imports your main script again: put the calling code under `if __name__ == \"__main__\":`, "
        "or pass executor= (e.g. a ThreadPoolExecutor)"
    )


def _set_threads(count: int) -> None:
    os.environ["WEIGHTPACK_THREADS"] = str(count)


def _compress_one(name: str, w, config: CompressionConfig):
    try:
        return config.apply(w)
    except WeightpackError as exc:
        raise WeightpackError(f"{name}: {exc}") from None


class _Progress:
    """A one-line bar on stderr: tensors done, bytes in and out, elapsed time."""

    def __init__(self, total: int, show: bool):
        self.total, self.show = total, show
        self.done = 0
        self.before = self.after = 0
        self.start = time.perf_counter()

    def step(self, before: int, after: int) -> None:
        self.done += 1
        self.before += before
        self.after += after
        if self.show:
            width = 30
            fill = width * self.done // max(self.total, 1)
            sys.stderr.write(
                f"\rcompressing [{'#' * fill}{'.' * (width - fill)}] {self.done}/{self.total} tensors, "
                f"{self.before / 1e6:.1f} MB -> {self.after / 1e6:.1f} MB, {time.perf_counter() - self.start:.1f} s"
            )
            sys.stderr.flush()

    def close(self) -> None:
        if self.show and self.done:
            sys.stderr.write("\n")
            sys.stderr.flush()
