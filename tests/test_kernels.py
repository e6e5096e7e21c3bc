"""The backend registry: every backend loads, selection works, and gaps are clear errors."""
import numpy as np
import pytest

import weightpack as wp
from weightpack import kernels
from weightpack.errors import BackendError


def test_every_backend_loads():
    assert kernels.available() == list(kernels.BACKENDS)


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(BackendError, match="'cuda' is unknown"):
        kernels.get("cuda")
    with pytest.raises(BackendError, match="unknown"):
        wp.pack_bits(np.array([1], np.uint8), 1, backend="cuda")


def test_environment_variable_selects_the_backend(monkeypatch):
    monkeypatch.setenv("WEIGHTPACK_BACKEND", "numpy")
    assert kernels.get() is kernels.load("numpy")
    monkeypatch.setenv("WEIGHTPACK_BACKEND", "nonsense")
    with pytest.raises(BackendError, match="nonsense"):
        kernels.get()


def test_auto_prefers_the_compiled_backend(monkeypatch):
    monkeypatch.delenv("WEIGHTPACK_BACKEND", raising=False)
    assert kernels.get().pack_bits is kernels.load("c").pack_bits


def test_missing_kernel_is_a_backend_error():
    with pytest.raises(BackendError, match="does not implement 'no_such_kernel'"):
        kernels.kernel("numpy", "no_such_kernel")
