"""Verification of custom VJPs, for purebp's own ops and for yours.

``check_vjp`` holds a function against a reference twin in value and in ``jax.vjp`` cotangents,
with and without ``jax.jit``, in the second order, under ``jax.vmap``, argument by argument and
output by output, and in low precision against float32 (docs/verifying.md); ``check_grads`` checks
gradients against finite differences; ``residual_bytes`` measures what a backward pass keeps
alive. Beyond purebp, this module depends on JAX alone.

>>> import jax.numpy as jnp, purebp, purebp.reference
>>> check_vjp(purebp.softmax, purebp.reference.softmax, jnp.linspace(-2.0, 2.0, 6).reshape(2, 3))
"""
from __future__ import annotations

import contextlib
import dataclasses
import inspect
import math
import operator
from functools import partial
from typing import NamedTuple

import jax
import jax.test_util
import jax.numpy as jnp
import numpy as np

from purebp._static import LOW_PRECISION

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


def check_vjp(fn, reference, *args, argnums=None, rtol=None, atol=None, seed=0,
              order=2, vmap=True, each_alone=True, float32_reference=True):
    """Asserts that ``fn`` agrees with ``reference`` in value and in VJP, under the transformations
    a custom VJP must survive.

    Both are called on ``args``; their outputs must match, and for a random cotangent (normal,
    drawn from ``seed``, in the output's dtype) the cotangents ``jax.vjp`` gives for the arguments
    in ``argnums`` must match too, with and without ``jax.jit``. Under jit every array argument is
    traced, integer labels included; the others (Python scalars, strings, None) are closed over,
    so static arguments such as an axis may be passed positionally. Arguments may be pytrees.
    Beyond that first order, each part below is on by default and has its switch; all of ``fn``'s
    parts are one jitted program, and all of the reference's another:

    - ``order=2``: reverse over reverse. The gradient, with respect to the arguments *and* the
      cotangent, of a random projection of the cotangents ``jax.vjp`` gives: it differentiates the
      backward rule itself, as ``torch.autograd.gradgradcheck`` does.
    - ``vmap``: ``jax.vmap`` of the VJP over two random cotangents, as torch's ``check_batched_grad``,
      and of the whole VJP over a new leading axis of every array argument (labels too, so they are
      traced and batched): two examples, the arguments and the arguments with their floating leaves
      halved, each with its own cotangent.
    - ``each_alone``: the VJP with respect to each differentiated argument alone (the others
      constants), and of each output leaf alone (the others unused: the rule gets symbolic zeros).
    - ``float32_reference``: where a first-order result is bfloat16 or float16, it is compared
      element by element with the reference run on the arguments cast to float32, and may err from
      it by twice what the reference run in that dtype does, plus ``LOW_PRECISION_ULPS`` ulps. A rule
      that cancels in low precision (``1 − s`` from a rounded output) fails where a tolerance scaled
      to the leaf's largest element would hide it.

    Args:
      fn: the function under test, usually a ``jax.custom_vjp``.
      reference: its oracle, usually plain jnp differentiated by JAX.
      *args: the arguments for both.
      argnums: int or tuple of ints to differentiate; None means every argument whose leaves are
        all floating-point.
      rtol: relative tolerance; None picks one per dtype (see ``DEFAULT_RTOL``).
      atol: absolute tolerance; None means ``rtol`` times the leaf's largest expected magnitude.
      seed: seed of the random cotangents and projections.
      order: 1 for the first order alone, 2 (the default) to differentiate the VJP once more.
      vmap: False to skip the two vmap checks.
      each_alone: False to skip the argument-by-argument and output-by-output VJPs.
      float32_reference: False to compare low-precision results with the reference in their own
        dtype, at ``rtol`` (``DEFAULT_RTOL``'s 3e-2 for bfloat16) relative to each leaf's scale.

    Raises:
      AssertionError: naming the part, the output or argument (and pytree path), the worst index,
        both values and the error, and the switches that run that part alone.
    """
    argnums = _floating_argnums(args) if argnums is None else _as_tuple(argnums, len(args))
    if not argnums:
        raise ValueError("`argnums` is empty: `args` has no floating-point argument to differentiate.")
    if order not in (1, 2):
        raise ValueError(f"`order` must be 1 or 2, got {order!r}.")
    parts = _Parts(order, bool(vmap), bool(each_alone), bool(float32_reference))
    names = _argument_names(fn, len(args))
    out_shapes = _output_shapes(reference, args, argnums)
    actual_shapes = _output_shapes(fn, args, argnums)
    if actual_shapes != out_shapes:
        raise AssertionError(f"check_vjp: the output's shapes are {actual_shapes}, the reference's {out_shapes}.")
    draws = _draws(out_shapes, tuple(args[i] for i in argnums), seed)
    traced = _array_argnums(args)
    inputs = (tuple(args[i] for i in traced), draws)

    def run(f, f_name, inputs):
        try:
            return jax.jit(_results(f, args, argnums, traced, names, parts))(*inputs)
        except _PartError as error:
            raise AssertionError(f"check_vjp ({error.part}): `{f_name}` raised {error.__cause__!r}. "
                                 f"{parts.alone(error.part)}".rstrip()) from error.__cause__

    expected = run(reference, "reference", inputs)
    # The float32 truth of low-precision results: the reference again, on every input cast up.
    low = parts.float32_reference and any(
        jnp.dtype(leaf.dtype) in LOW_PRECISION for leaf in jax.tree_util.tree_leaves(expected))
    expected32 = run(reference, "reference", _to_float32(inputs)) if low else {}
    eager = _first_order(names, argnums, *_value_and_cotangents(fn, args, argnums, draws.cotangent))
    checks = [("without jit", "first order", eager)]
    actual = run(fn, "fn", inputs)
    checks += [("with jit" if part == "first order" else part, part, actual[part]) for part in PARTS if part in expected]
    for mode, part, got in checks:
        hint = "" if part == "first order" else f" {parts.alone(part)}"
        truths = [r.value for r in expected32[part]] if low else [None] * len(got)
        for result, want, truth in zip(got, expected[part], truths):
            _assert_trees_close(result.value, want.value, truth, want.what, mode, rtol, atol, hint,
                                leaf_scaled=part == "second order")


# A bfloat16 or float16 result may err from the float32 truth by twice the reference's own error in
# that dtype, plus this many of the dtype's ulps at the element (a relative 25% in bfloat16, 3% in
# float16): a correct rule that sums in another order errs by a few ulps where a sum cancels
# (softmax's, 4 bfloat16 ulps where its twin errs by 1); one that cancels outright errs by 100%,
# 128 bfloat16 ulps and more.
LOW_PRECISION_ULPS = 32
PARTS = ("first order", "second order", "vmap over cotangents", "vmap over arguments", "each argument alone",
         "each output alone")


@partial(jax.tree_util.register_dataclass, data_fields=["value"], meta_fields=["what"])
@dataclasses.dataclass
class _Result:
    """One compared result of a part: ``value`` (a pytree), and ``what`` it is, static under jit."""
    what: str
    value: object


class _Parts(NamedTuple):
    order: int
    vmap: bool
    each_alone: bool
    float32_reference: bool

    def alone(self, part):
        """The switches that run ``part`` (with the first order, always on) and nothing else."""
        if part.startswith("first order"):
            return ""
        only = {"order": 2 if part == "second order" else 1, "vmap": part.startswith("vmap"),
                "each_alone": part.startswith("each"), "float32_reference": self.float32_reference}
        return "This part alone: check_vjp(..., " + ", ".join(f"{k}={v}" for k, v in only.items()) + ")."


class _PartError(Exception):
    def __init__(self, part):
        super().__init__(part)
        self.part = part


class _Draws(NamedTuple):
    cotangent: object  # of the output's structure
    cotangents: object  # the same with a leading axis of 2, for the vmap checks
    projection: object  # of the differentiated arguments' structure, for the second order


def _draws(out_shapes, diff_args, seed):
    """The random cotangents and projection, all normal; the first cotangent is drawn first, so it
    is ``default_rng(seed).standard_normal(shape)`` for a single output."""
    rng = np.random.default_rng(seed)
    normal = lambda shape, dtype: np.asarray(rng.standard_normal(shape)).astype(dtype)  # on the host: no compile
    cotangent = jax.tree_util.tree_map(lambda s: normal(s.shape, s.dtype), out_shapes)
    cotangents = jax.tree_util.tree_map(lambda s: normal((2, *s.shape), s.dtype), out_shapes)
    projection = jax.tree_util.tree_map(lambda a: normal(jnp.shape(a), jnp.result_type(a)), diff_args)
    return _Draws(cotangent, cotangents, projection)


def _results(f, args, argnums, traced, names, parts):
    """The function of the traced arguments and the draws whose value is every part's results for
    ``f``: ``{part: [_Result, ...]}``, each result naming the output or the argument it is."""
    out_leaves = len(jax.tree_util.tree_leaves(_output_shapes(f, args, argnums)))
    named = partial(_named_cotangents, names)

    def results(traced_values, draws):
        full = _substitute(args, traced, traced_values)
        results = {}
        with _part("first order, with jit"):
            out, vjp_fn = _vjp(f, full, argnums)
            cotangents = vjp_fn(draws.cotangent)
        if parts.order == 2:
            # The first order again, under jax.vjp: the cotangent of its cotangents is the second order.
            with _part("second order"):
                _, pullback = jax.vjp(lambda d, c: _value_and_cotangents(f, _substitute(full, argnums, d), argnums, c),
                                      tuple(full[i] for i in argnums), draws.cotangent)
                d_args, d_cotangent = pullback((jax.tree_util.tree_map(jnp.zeros_like, out), draws.projection))
                results["second order"] = [*named(argnums, d_args, " of the projected VJP"),
                                           _Result("the cotangent of the cotangent", d_cotangent)]
        results["first order"] = _first_order(names, argnums, out, cotangents)
        if parts.vmap:
            with _part("vmap over cotangents"):
                results["vmap over cotangents"] = named(argnums, jax.vmap(vjp_fn)(draws.cotangents))
            with _part("vmap over arguments"):
                batched = jax.tree_util.tree_map(lambda a: jnp.stack([a, _halved(a)]), traced_values)
                per_example = jax.vmap(lambda t, c: _value_and_cotangents(f, _substitute(args, traced, t), argnums, c))
                results["vmap over arguments"] = _first_order(names, argnums, *per_example(batched, draws.cotangents))
        if parts.each_alone and len(argnums) > 1:
            with _part("each argument alone"):
                results["each argument alone"] = [
                    result for i in argnums
                    for result in named((i,), _vjp(f, full, (i,))[1](draws.cotangent), " alone")]
        if parts.each_alone and out_leaves > 1:
            with _part("each output alone"):
                cotangent_leaves = jax.tree_util.tree_leaves(draws.cotangent)
                results["each output alone"] = [
                    result for leaf in range(out_leaves)
                    for result in named(argnums, _vjp(f, full, argnums, leaf)[1](cotangent_leaves[leaf]),
                                        f" from output leaf {leaf} alone")]
        return results

    return results


def _vjp(f, args, argnums, output=None):
    """``jax.vjp`` of ``f`` in ``args[i]`` for i in ``argnums`` (the others constants); of the output
    leaf ``output`` alone where given (the others unused)."""
    def of_diff(*diff):
        out = f(*_substitute(args, argnums, diff))
        return out if output is None else jax.tree_util.tree_leaves(out)[output]
    return jax.vjp(of_diff, *(args[i] for i in argnums))


def _value_and_cotangents(f, args, argnums, cotangent):
    """``f``'s output and the cotangents of ``args[i]``, i in ``argnums``, for ``cotangent``."""
    out, vjp_fn = _vjp(f, args, argnums)
    return out, vjp_fn(cotangent)


def _named_cotangents(names, argnums, cotangents, suffix=""):
    return [_Result(f"the cotangent of argument {names[i]}{suffix}", c) for i, c in zip(argnums, cotangents)]


def _first_order(names, argnums, out, cotangents):
    """The output and each argument's cotangent, as the parts compare them."""
    return [_Result("the output", out), *_named_cotangents(names, argnums, cotangents)]


@contextlib.contextmanager
def _part(part):
    """Re-raises what tracing ``part`` raises as a ``_PartError`` naming it."""
    try:
        yield
    except _PartError:
        raise
    except Exception as error:
        raise _PartError(part) from error


def _array_argnums(args):
    """Positions of the arguments whose leaves are all arrays: traced under jit, batched under vmap."""
    return tuple(i for i, arg in enumerate(args) if jax.tree_util.tree_leaves(arg) and all(
        isinstance(leaf, (jax.Array, np.ndarray)) for leaf in jax.tree_util.tree_leaves(arg)))


def _halved(a):
    """The second example of the vmap over arguments: floating leaves halved, which is exact in every
    dtype (ties stay ties), so that a rule which reuses what it computed for other values fails."""
    return a / 2 if jnp.issubdtype(a.dtype, jnp.floating) else a


def _to_float32(tree):
    """``tree`` with its bfloat16 and float16 leaves cast to float32."""
    return jax.tree_util.tree_map(
        lambda a: a.astype(jnp.float32) if jnp.dtype(a.dtype) in LOW_PRECISION else a, tree)


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


def _assert_trees_close(actual, expected, expected32, what, mode, rtol, atol, hint="", leaf_scaled=False):
    actual_leaves, actual_tree = jax.tree_util.tree_flatten_with_path(actual)
    expected_leaves, expected_tree = jax.tree_util.tree_flatten_with_path(expected)
    if actual_tree != expected_tree:
        raise AssertionError(
            f"check_vjp: {what} ({mode}) has structure {actual_tree}, the reference's is {expected_tree}.{hint}")
    truths = [None] * len(expected_leaves) if expected32 is None else jax.tree_util.tree_leaves(expected32)
    for (path, got), (_, want), truth in zip(actual_leaves, expected_leaves, truths):
        _assert_close(got, want, truth, f"{what}{jax.tree_util.keystr(path)} ({mode})", rtol, atol, hint, leaf_scaled)


def _assert_close(actual, expected, truth, what, rtol, atol, hint="", leaf_scaled=False):
    """``actual`` against ``expected`` at rtol/atol; or, where ``truth`` (the reference in float32) is
    given and ``actual`` is bfloat16 or float16, against ``truth``, erring by at most twice what
    ``expected`` (the reference in that dtype) does plus ``LOW_PRECISION_ULPS`` of that dtype's ulps.

    ``leaf_scaled`` (the second order, which sums more terms and cancels at the scale of the leaf,
    not of one element): against ``truth`` at rtol/atol scaled to the leaf, or twice what the
    reference in that dtype errs, whichever is wider, so that a twin that errs in bfloat16 cannot
    fail a rule that does not."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    if actual.shape != expected.shape or actual.dtype != expected.dtype:
        raise AssertionError(
            f"check_vjp: {what} has shape {actual.shape} and dtype {actual.dtype}; the reference's has "
            f"shape {expected.shape} and dtype {expected.dtype}.{hint}")
    if actual.dtype == jax.dtypes.float0:
        return
    got, want = actual.astype(np.float64), expected.astype(np.float64)
    low = truth is not None and jnp.dtype(actual.dtype) in LOW_PRECISION
    if low:
        truth = np.asarray(truth, np.float64)
        with np.errstate(invalid="ignore"):  # inf − inf
            reference_error = 2 * np.nan_to_num(np.where(want == truth, 0.0, np.abs(want - truth)), nan=np.inf)
    if low and not leaf_scaled:
        tolerance = reference_error + LOW_PRECISION_ULPS * _ulp(truth, actual.dtype)
        against, rule = truth, (f"2·|the reference in {actual.dtype} − the reference in float32| + {LOW_PRECISION_ULPS} ulps "
                                f"(the reference in {actual.dtype} gives")
        detail = lambda index: f"{rule} {want[index]!r})"
    else:
        against = truth if low else want
        rtol = DEFAULT_RTOL.get(jnp.dtype(actual.dtype), 1e-7) if rtol is None else rtol
        finite = np.isfinite(against)
        scale = np.max(np.abs(against[finite]), initial=0.0)
        atol = rtol * scale + np.finfo(np.float64).tiny if atol is None else atol
        tolerance = atol + rtol * np.abs(against)
        detail = lambda index: f"rtol {rtol:g}, atol {atol:.3g}"
        if low:  # the second order: or twice the reference's own error in that dtype, where wider
            tolerance = np.maximum(tolerance, reference_error)
            detail = lambda index: (f"rtol {rtol:g}, atol {atol:.3g} about the reference in float32, or twice the "
                                    f"reference in {actual.dtype}'s error, {want[index]!r}")
    with np.errstate(invalid="ignore"):  # inf − inf: equal infinities are given error 0 just below
        error = np.where(got == against, 0.0, np.abs(got - against))
    both_nan = np.isnan(got) & np.isnan(against)
    excess = np.where(both_nan, -np.inf, np.nan_to_num(error - tolerance, nan=np.inf))
    if excess.size and np.max(excess) > 0:
        index = np.unravel_index(np.argmax(excess), excess.shape)
        failing = int(np.sum(excess > 0))
        raise AssertionError(
            f"check_vjp: {what} differs from the reference at index {tuple(map(int, index))}: got "
            f"{got[index]!r}, expected {against[index]!r}, |error| {error[index]:.3g} > tolerance "
            f"{tolerance[index]:.3g} ({detail(index)}); {failing} of {excess.size} elements fail.{hint}")


def _ulp(x, dtype):
    """The spacing of ``dtype``'s values at ``|x|`` (its smallest subnormal below its smallest normal)."""
    info = jnp.finfo(dtype)
    tiny, eps = float(info.tiny), float(info.eps)
    magnitude = np.nan_to_num(np.abs(x), nan=tiny, posinf=tiny)
    return eps * np.exp2(np.floor(np.log2(np.maximum(magnitude, tiny))))
