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


@pytest.fixture(params=kernels.BACKENDS)
def backend(request):
    """A backend name; loading it must succeed."""
    kernels.load(request.param)
    return request.param
