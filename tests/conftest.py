"""Shared fixtures: every test that takes ``backend`` runs once per backend.

Backends are required, not optional: a backend that fails to load makes its tests fail (CI must
never pass on a broken build by skipping).
"""
import os

import pytest
from hypothesis import settings

from weightpack import kernels

settings.register_profile("ci", max_examples=60, deadline=None, derandomize=True)
settings.register_profile("dev", max_examples=30, deadline=None)
settings.register_profile("thorough", max_examples=1000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


def pytest_addoption(parser):
    parser.addoption("--expect-threading", choices=("pool", "openmp"), help="fail unless the C kernels use this threading")
    parser.addoption("--expect-compiler", choices=("gcc", "clang"), help="fail unless this compiler built the C kernels")


def pytest_configure(config):
    """CI builds the kernels several ways; make sure each stage tests the build it asked for."""
    from weightpack.kernels import backend_c

    threading, compiler = config.getoption("--expect-threading"), config.getoption("--expect-compiler")
    if threading and backend_c.THREADING != threading:
        raise pytest.UsageError(f"expected a {threading} build of the C kernels, got {backend_c.THREADING}")
    if compiler and not backend_c.COMPILER.startswith(compiler):
        raise pytest.UsageError(f"expected C kernels built by {compiler}, got {backend_c.COMPILER}")


@pytest.fixture(params=kernels.BACKENDS)
def backend(request):
    """A backend name; loading it must succeed."""
    kernels.load(request.param)
    return request.param
