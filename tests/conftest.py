"""Shared fixtures: float64 on demand, and a seeded source of test arrays."""
import os

import jax
import numpy as np
import pytest
from hypothesis import settings
from jax.experimental.compilation_cache import compilation_cache

# Hypothesis profiles for the property tests (tests/test_properties_*.py), chosen by the
# HYPOTHESIS_PROFILE environment variable:
#   "ci" (the default): three examples per test, so the default run stays under its time budget, and
#     derandomized: the examples are a function of the test alone, so a verdict changes only when
#     the code does, and CI never fails on a case that no change of ours brought in.
#   "explore": 25 examples drawn afresh on every run, to search for new counterexamples while
#     developing; a failure prints the `@reproduce_failure(...)` blob that replays it.
#   "thorough": "explore" with 500 examples per test, to run by hand before a release or after
#     touching a backward rule:
#       HYPOTHESIS_PROFILE=thorough python -m pytest tests/test_properties_*.py
# Every distinct shape compiles anew under jit, so no deadline: a first call's compile time is
# not a slow test. A test that is much costlier per example may scale max_examples down from
# `settings().max_examples` instead of hard-coding a count.
settings.register_profile("ci", max_examples=3, deadline=None, print_blob=True, derandomize=True)
settings.register_profile("explore", settings.get_profile("ci"), max_examples=25, derandomize=False)
settings.register_profile("thorough", settings.get_profile("explore"), max_examples=500)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_configure(config):
    """The default run (``-m 'not slow'``) compiles for speed of compiling, not of running.

    It compiles thousands of small programs, each run once or twice, so XLA's CPU compile time is
    most of its time: LLVM's optimisations off (tests/test_layers.py: 46 s → 22 s) and XLA's older
    loop emitters in place of its MLIR fusion emitters (a tiny program: 88 → 41 ms to compile; the
    whole run: 5 min 29 s → 4 min 12 s on 2 cores). Both change the last bits of some results (no FMA
    contraction), which every tolerance here absorbs; but the docs' printed figures are what a user
    sees, so a run that includes the slow tests (where the docs are) keeps XLA's own settings. A flag
    set in XLA_FLAGS wins. This runs before JAX starts its backend.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if config.getoption("markexpr") == "not slow":
        for flag, value in (("--xla_backend_optimization_level", "0"), ("--xla_cpu_use_fusion_emitters", "false")):
            if flag not in flags:
                flags = f"{flags} {flag}={value}".strip()
        os.environ["XLA_FLAGS"] = flags


@pytest.fixture
def x64():
    """Enables float64 for one test and restores the previous setting after it."""
    with jax.enable_x64(True):
        yield


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(params=[np.float64], ids=["f64"])
def dtype(request):
    """float64, with x64 on for the test's duration: the modules' tests vary shapes and options at
    float64's tight tolerance, where a 1e-4 relative error fails. Every dtype (float32, bfloat16,
    float16, float64) is test_dtypes' property, over the op table, once."""
    with jax.enable_x64(True):
        yield request.param


@pytest.fixture(scope="module")
def persistent_compilation_cache(tmp_path_factory):
    """A JAX compilation cache on disk for one test module, for the property tests.

    ``check_vjp`` jit-compiles a fresh closure on every call, so every drawn case recompiles
    programs that an earlier case with the same shapes already compiled (a few hundred ms each
    on CPU). With a persistent cache those recompiles become cache reads. The cache lives in a
    temporary directory and is switched off again after the module: opt in with
    ``pytestmark = pytest.mark.usefixtures("persistent_compilation_cache")``.
    """
    options = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
               "jax_persistent_cache_min_entry_size_bytes")
    previous = {option: getattr(jax.config, option) for option in options}
    compilation_cache.reset_cache()
    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jax-compilation-cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)  # cache every program, however small
    yield
    for option, value in previous.items():
        jax.config.update(option, value)
    compilation_cache.reset_cache()
