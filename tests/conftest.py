"""Shared fixtures: float64 on demand, and a seeded source of test arrays."""
import jax
import numpy as np
import pytest


@pytest.fixture
def x64():
    """Enables float64 for one test and restores the previous setting after it."""
    with jax.enable_x64(True):
        yield


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(params=[np.float32, np.float64], ids=["f32", "f64"])
def dtype(request):
    """float32 and float64 (with x64 on for the test's duration)."""
    with jax.enable_x64(request.param == np.float64):
        yield request.param
