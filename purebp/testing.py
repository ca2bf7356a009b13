"""Verification of custom VJPs, for purebp's own ops and for yours.

``check_vjp`` holds a function against a reference twin in value and in ``jax.vjp`` cotangents,
with and without ``jax.jit``; ``check_grads`` checks gradients against finite differences;
``residual_bytes`` measures what a backward pass keeps alive. This module depends on JAX alone.

>>> import jax.numpy as jnp, purebp, purebp.reference
>>> check_vjp(purebp.softmax, purebp.reference.softmax, jnp.linspace(-2.0, 2.0, 6).reshape(2, 3))
"""
from __future__ import annotations

import math

import inspect
import operator

import jax
import jax.test_util
import jax.numpy as jnp
import numpy as np

# Default rtol per dtype. Elements compare as |actual − expected| ≤ atol + rtol·|expected|, with atol
# defaulting to rtol · max|expected| of the leaf: errors count relative to the leaf's scale, so
# cancellation near zero does not fail a correct rule, while a relative error of 2·rtol anywhere
# on the leaf's largest elements does. float64 catches 1e-4 relative errors with a 500x margin,
# float32 catches 5e-4 (a few hundred float32 ulps of headroom for reordered sums).
DEFAULT_RTOL = {
    jnp.dtype(jnp.float64): 1e-7,
    jnp.dtype(jnp.float32): 1e-4,
    jnp.dtype(jnp.float16): 4e-3,
    jnp.dtype(jnp.bfloat16): 3e-2,
}


def check_vjp(fn, reference, *args, argnums=None, rtol=None, atol=None, seed=0):
    """Asserts that ``fn`` agrees with ``reference`` in value and in VJP, with and without ``jax.jit``.

    Both are called on ``args``; their outputs must match, and for a random cotangent (normal,
    drawn from ``seed``, in the output's dtype) the cotangents ``jax.vjp`` gives for the arguments
    in ``argnums`` must match too. ``fn`` runs eagerly and under jit; the reference, the oracle,
    runs once, under jit. Arguments may be pytrees (a list of params, say). Under jit the
    differentiated arguments are traced; the others are closed over, so static arguments such as
    an axis may be passed positionally.

    Args:
      fn: the function under test, usually a ``jax.custom_vjp``.
      reference: its oracle, usually plain jnp differentiated by JAX.
      *args: the arguments for both.
      argnums: int or tuple of ints to differentiate; None means every argument whose leaves are
        all floating-point.
      rtol: relative tolerance; None picks one per dtype (see ``DEFAULT_RTOL``).
      atol: absolute tolerance; None means ``rtol`` times the leaf's largest expected magnitude.
      seed: seed of the random cotangents.

    Raises:
      AssertionError: naming the output or argument (and pytree path), the worst index, both
        values and the error.
    """
    argnums = _floating_argnums(args) if argnums is None else _as_tuple(argnums, len(args))
    if not argnums:
        raise ValueError("`argnums` is empty: `args` has no floating-point argument to differentiate.")
    names = _argument_names(fn, len(args))
    out_shapes = _output_shapes(reference, args, argnums)
    actual_shapes = _output_shapes(fn, args, argnums)
    if actual_shapes != out_shapes:
        raise AssertionError(f"check_vjp: the output's shapes are {actual_shapes}, the reference's {out_shapes}.")
    rng = np.random.default_rng(seed)
    cotangent = jax.tree_util.tree_map(
        lambda s: jnp.asarray(rng.standard_normal(s.shape), s.dtype), out_shapes)
    # The oracle runs once, under jit: its eager values differ from its jitted ones by rounding
    # alone, and running it op by op cost more than the rest of a check together.
    expected = _value_and_cotangents(reference, args, argnums, cotangent, use_jit=True)
    for use_jit in (False, True):
        mode = "with jit" if use_jit else "without jit"
        actual = _value_and_cotangents(fn, args, argnums, cotangent, use_jit)
        _assert_trees_close(actual[0], expected[0], "the output", mode, rtol, atol)
        for i, got, want in zip(argnums, actual[1], expected[1]):
            _assert_trees_close(got, want, f"the cotangent of argument {names[i]}", mode, rtol, atol)


def check_grads(fn, *args, order=1, atol=None, rtol=None, eps=None):
    """Checks reverse-mode derivatives of ``fn`` up to ``order`` against finite differences.

    A thin layer over ``jax.test_util.check_grads`` in reverse mode (forward mode cannot go
    through a ``jax.custom_vjp``), differentiating only the floating-point arguments. Use float64
    (``jax.config.update("jax_enable_x64", True)``): finite differences in float32 are noisy.
    """
    argnums = _floating_argnums(args)

    def of_floats(*floats):
        return fn(*_substitute(args, argnums, floats))

    jax.test_util.check_grads(of_floats, tuple(args[i] for i in argnums), order, modes=("rev",),
                              atol=atol, rtol=rtol, eps=eps)


def residual_bytes(fn, *args) -> int:
    """Bytes the backward pass of ``fn`` keeps alive between forward and backward.

    The sum of the sizes of the distinct array leaves of the function ``jax.vjp`` returns, taken
    with respect to the floating-point arguments (others are closed over). Traced, never run
    (``jax.eval_shape``): it costs no compilation, and no memory, however large the arguments.
    """
    argnums = _floating_argnums(args)

    def residuals(*floats):
        _, vjp_fn = jax.vjp(lambda *floats: fn(*_substitute(args, argnums, floats)), *floats)
        return list({id(leaf): leaf for leaf in jax.tree_util.tree_leaves(vjp_fn) if hasattr(leaf, "dtype")}.values())

    leaves = jax.eval_shape(residuals, *(args[i] for i in argnums))
    return sum(math.prod(leaf.shape) * jnp.dtype(leaf.dtype).itemsize for leaf in leaves)


def _output_shapes(f, args, argnums):
    return jax.eval_shape(lambda *d: f(*_substitute(args, argnums, d)), *(args[i] for i in argnums))


def _value_and_cotangents(f, args, argnums, cotangent, use_jit):
    def value_and_vjp(diff_args, cotangent):
        out, vjp_fn = jax.vjp(lambda *d: f(*_substitute(args, argnums, d)), *diff_args)
        return out, vjp_fn(cotangent)

    if use_jit:
        value_and_vjp = jax.jit(value_and_vjp)
    return value_and_vjp(tuple(args[i] for i in argnums), cotangent)


def _substitute(args, argnums, values):
    args = list(args)
    for i, value in zip(argnums, values):
        args[i] = value
    return tuple(args)


def _floating_argnums(args):
    def is_floating(arg):
        leaves = jax.tree_util.tree_leaves(arg)
        return bool(leaves) and all(
            not isinstance(leaf, (bool, str)) and jnp.issubdtype(jnp.result_type(leaf), jnp.floating)
            for leaf in leaves)

    return tuple(i for i, arg in enumerate(args) if is_floating(arg))


def _as_tuple(argnums, num_args):
    argnums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    for i in argnums:
        if not -num_args <= operator.index(i) < num_args:
            raise ValueError(f"`argnums` must index the {num_args} arguments, got {argnums}.")
    return tuple(i % num_args for i in argnums)


def _argument_names(fn, num_args):
    """`name` (args[i]) for each positional argument, from fn's signature where it has one."""
    try:
        params = [p.name for p in inspect.signature(fn).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    return [f"`{params[i]}` (args[{i}])" if i < len(params) else f"args[{i}]" for i in range(num_args)]


def _assert_trees_close(actual, expected, what, mode, rtol, atol):
    actual_leaves, actual_tree = jax.tree_util.tree_flatten_with_path(actual)
    expected_leaves, expected_tree = jax.tree_util.tree_flatten_with_path(expected)
    if actual_tree != expected_tree:
        raise AssertionError(
            f"check_vjp: {what} ({mode}) has structure {actual_tree}, the reference's is {expected_tree}.")
    for (path, got), (_, want) in zip(actual_leaves, expected_leaves):
        _assert_close(got, want, f"{what}{jax.tree_util.keystr(path)} ({mode})", rtol, atol)


def _assert_close(actual, expected, what, rtol, atol):
    actual, expected = np.asarray(actual), np.asarray(expected)
    if actual.shape != expected.shape or actual.dtype != expected.dtype:
        raise AssertionError(
            f"check_vjp: {what} has shape {actual.shape} and dtype {actual.dtype}; the reference's has "
            f"shape {expected.shape} and dtype {expected.dtype}.")
    if actual.dtype == jax.dtypes.float0:
        return
    rtol = DEFAULT_RTOL.get(jnp.dtype(actual.dtype), 1e-7) if rtol is None else rtol
    got, want = actual.astype(np.float64), expected.astype(np.float64)
    finite = np.isfinite(want)
    scale = np.max(np.abs(want[finite]), initial=0.0)
    atol = rtol * scale + np.finfo(np.float64).tiny if atol is None else atol
    with np.errstate(invalid="ignore"):  # inf − inf: equal infinities are given error 0 just below
        error = np.where(got == want, 0.0, np.abs(got - want))
    both_nan = np.isnan(got) & np.isnan(want)
    excess = np.where(both_nan, -np.inf, np.nan_to_num(error - (atol + rtol * np.abs(want)), nan=np.inf))
    if excess.size and np.max(excess) > 0:
        index = np.unravel_index(np.argmax(excess), excess.shape)
        failing = int(np.sum(excess > 0))
        raise AssertionError(
            f"check_vjp: {what} differs from the reference at index {tuple(map(int, index))}: got "
            f"{got[index]!r}, expected {want[index]!r}, |error| {error[index]:.3g} > tolerance "
            f"{atol + rtol * abs(want[index]):.3g} (rtol {rtol:g}, atol {atol:.3g}); "
            f"{failing} of {excess.size} elements fail.")
