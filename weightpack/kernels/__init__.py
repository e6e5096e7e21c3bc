"""Backend registry: every kernel exists in a numpy reference and in compiled backends.

A backend is a module exposing the kernel functions it implements (see ``backend_numpy`` for the
full list and their contracts). Select one per call (``backend="c"``), process-wide with the
``WEIGHTPACK_BACKEND`` environment variable, or let weightpack pick (``None`` / ``"auto"``): the
fastest backend that implements the operation.

>>> from weightpack import kernels
>>> kernels.get("numpy").__name__
'weightpack.kernels.backend_numpy'
"""
from __future__ import annotations

import importlib
import os

from ..errors import BackendError, WeightpackError, describe

BACKENDS = ("numpy", "numba", "c")
_PREFERENCE = ("c", "numba", "numpy")  # fastest first, for "auto"
_MODULES = {"numpy": "backend_numpy", "numba": "backend_numba", "c": "backend_c"}
_loaded: dict = {}


def load(name: str):
    """Import and return the backend module ``name``; raise BackendError if it cannot load."""
    if name not in _MODULES:
        raise BackendError(f"backend={describe(name)} is unknown; allowed: {BACKENDS} or 'auto'")
    if name not in _loaded:
        try:
            _loaded[name] = importlib.import_module(f".{_MODULES[name]}", __name__)
        except ImportError as exc:
            raise BackendError(f"backend {name!r} failed to load: {exc}") from exc
    return _loaded[name]


def available() -> list[str]:
    """Names of the backends that load on this machine."""
    names = []
    for name in BACKENDS:
        try:
            load(name)
        except BackendError:
            continue
        names.append(name)
    return names


class _AutoBackend:
    """Resolves each kernel to the first backend in preference order that has it."""

    __name__ = "auto"

    def __getattr__(self, op):
        for name in _PREFERENCE:
            try:
                module = load(name)
            except BackendError:
                continue
            if hasattr(module, op):
                return getattr(module, op)
        raise AttributeError(f"no backend implements {op!r}")  # kernel() turns this into a BackendError


_AUTO = _AutoBackend()


def get(name=None):
    """The backend called ``name``; ``None`` means ``$WEIGHTPACK_BACKEND``, else ``"auto"``."""
    if name is None:
        name = os.environ.get("WEIGHTPACK_BACKEND") or "auto"
    if name == "auto":
        return _AUTO
    return load(name)


def kernel(name, op: str):
    """The function ``op`` of backend ``name``, or a BackendError saying the backend lacks it."""
    backend = get(name)
    try:
        return getattr(backend, op)
    except AttributeError:
        raise BackendError(f"backend {backend.__name__.rsplit('_', 1)[-1]!r} does not implement {op!r}") from None


def product(tensor, name=None, mode: str = "exact"):
    """run(x, y) computing ``y = x @ W.T`` with ``tensor`` as W (float32 C-contiguous x of shape
    (batch, in), y of shape (batch, out)), on backend ``name`` (as :func:`get`).

    Prepared once per tensor, backend and mode, and kept beside the tensor's derived data: the
    fixed cost of a call is then the call itself (a backend with ``prepare_matmul`` builds its
    arguments once; the others are looked up once).
    """
    if name is None:
        name = os.environ.get("WEIGHTPACK_BACKEND") or "auto"
    return tensor.derived(("product", name, mode), lambda: _prepare_product(tensor, name, mode))


def _prepare_product(tensor, name, mode: str):
    op = "matmul_" + tensor._kernel.removeprefix("decompress_")
    for candidate in (_PREFERENCE if name == "auto" else (name,)):
        module = load(candidate) if name != "auto" else _loadable(candidate)
        if module is None or not hasattr(module, op):
            continue
        prepare = getattr(module, "prepare_matmul", None)
        if prepare is not None:
            return prepare(tensor, mode)
        run = getattr(module, op)

        def checked(x, y):
            require_finite(x)
            run(tensor, x, y)

        return checked
    kernel(name, op)  # raises the BackendError naming what is missing
    raise AssertionError("unreachable")


def require_finite(x) -> None:
    """Refuse activations holding NaN or infinity (the C kernels check them themselves)."""
    import numpy as np

    if not np.isfinite(x).all():
        raise WeightpackError("x contains NaN or infinity")


def _loadable(name):
    try:
        return load(name)
    except BackendError:
        return None
