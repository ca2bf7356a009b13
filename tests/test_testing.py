"""purebp.testing: check_vjp passes correct rules and catches wrong ones, with a useful message."""
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import purebp
from purebp import reference
from purebp.testing import check_grads, check_vjp, residual_bytes


def scaled_vjp(scale, w_scale=1.0):
    """softplus(x·w) whose VJP is off by the relative factors `scale` − 1 (for x) and `w_scale` − 1."""

    @jax.custom_vjp
    def softplus(x, w):
        return jnp.logaddexp(x * w, 0)

    def fwd(x, w):
        return softplus(x, w), (x, w)

    def bwd(res, g):
        x, w = res
        s = jax.nn.sigmoid(x * w)
        return g * s * w * scale, g * s * x * w_scale

    softplus.defvjp(fwd, bwd)
    return softplus


def softplus_reference(x, w):
    return jnp.logaddexp(x * w, 0)


@pytest.fixture
def args(rng):
    return jnp.asarray(rng.standard_normal((3, 4)), jnp.float32), jnp.asarray(rng.standard_normal((3, 4)), jnp.float32)


def test_correct_rule_passes(args):
    check_vjp(scaled_vjp(1.0), softplus_reference, *args)


@pytest.mark.parametrize("dtype, error", [(np.float32, 5e-4), (np.float64, 1e-4)], ids=["f32-5e-4", "f64-1e-4"])
def test_small_relative_error_fails(dtype, error, rng):
    with jax.enable_x64(dtype == np.float64):
        x, w = (jnp.asarray(rng.standard_normal((3, 4)), dtype) for _ in range(2))
        with pytest.raises(AssertionError, match=r"the cotangent of argument `x` \(args\[0\]\) \(without jit\)"):
            check_vjp(scaled_vjp(1 + error), softplus_reference, x, w)


def test_failure_message_pinpoints_the_worst_element(args):
    x, w = args
    with pytest.raises(AssertionError) as failure:
        check_vjp(scaled_vjp(1.01), softplus_reference, x, w, seed=3)
    message = str(failure.value)
    rng = np.random.default_rng(3)
    g = rng.standard_normal(x.shape).astype(np.float32)
    expected = g * jax.nn.sigmoid(x * w) * w
    worst = np.unravel_index(np.argmax(np.abs(expected)), x.shape)  # a uniform 1% error is worst where |ct| is
    assert f"at index {tuple(map(int, worst))}" in message
    assert f"expected {np.float64(expected[worst])!r}" in message
    assert "got " in message and "|error|" in message and "elements fail" in message


def test_wrong_value_fails(args):
    with pytest.raises(AssertionError, match=r"the output \(without jit\) differs"):
        check_vjp(scaled_vjp(1.0), lambda x, w: softplus_reference(x, w) * 1.001, *args)


def test_wrong_second_argument_is_named(args):
    with pytest.raises(AssertionError, match=r"argument `w` \(args\[1\]\)"):
        check_vjp(scaled_vjp(1.0, w_scale=1.001), softplus_reference, *args)


def test_argnums_restricts_what_is_checked(args):
    check_vjp(scaled_vjp(1.01), softplus_reference, *args, argnums=1)  # only w's cotangent, which is right
    with pytest.raises(AssertionError):
        check_vjp(scaled_vjp(1.01), softplus_reference, *args, argnums=(0,))


def test_error_under_jit_only_is_caught(args):
    @jax.custom_vjp
    def softplus(x, w):
        return jnp.logaddexp(x * w, 0)

    def bwd(res, g):
        x, w = res
        s = jax.nn.sigmoid(x * w)
        # Wrong only when traced: a rule that branches on tracer-ness, as a buggy cache might.
        scale = 1.01 if isinstance(g, jax.core.Tracer) else 1.0
        return g * s * w * scale, g * s * x

    softplus.defvjp(lambda x, w: (softplus(x, w), (x, w)), bwd)
    with pytest.raises(AssertionError, match=r"\(with jit\)"):
        check_vjp(softplus, softplus_reference, *args)


def test_pytree_arguments_name_the_leaf(rng):
    params = [{"w": jnp.asarray(rng.standard_normal((3, 4)), jnp.float32),
               "b": jnp.asarray(rng.standard_normal(4), jnp.float32)}]
    x = jnp.asarray(rng.standard_normal((5, 3)), jnp.float32)
    check_vjp(purebp.mlp, reference.mlp, params, x)
    # Same value, but the bias's cotangent is scaled by 1.01.
    b_off = lambda b: 1.01 * b - jax.lax.stop_gradient(0.01 * b)
    wrong_bias = lambda p, x: reference.mlp([{"w": p[0]["w"], "b": b_off(p[0]["b"])}], x)
    with pytest.raises(AssertionError, match=r"argument `params` \(args\[0\]\)\[0\]\['b'\] \(without jit\)"):
        check_vjp(lambda params, x: purebp.mlp(params, x), wrong_bias, params, x)


def test_integer_and_static_arguments_are_not_differentiated(rng):
    logits = jnp.asarray(rng.standard_normal((4, 3)), jnp.float32)
    labels = jnp.asarray([0, 2, 1, 1])
    check_vjp(purebp.softmax_cross_entropy_with_integer_labels,
              reference.softmax_cross_entropy_with_integer_labels, logits, labels, -1)


def test_structure_mismatch_fails(args):
    with pytest.raises(AssertionError, match=r"the output's shapes are \(ShapeDtypeStruct"):
        check_vjp(lambda x, w: (x * w, x), lambda x, w: x * w, *args)


def test_no_floating_argument_is_an_error():
    with pytest.raises(ValueError, match="no floating-point argument"):
        check_vjp(lambda n: n * 2, lambda n: n * 2, jnp.arange(3))


def test_check_grads_catches_a_wrong_rule(x64, rng):
    x, w = (jnp.asarray(rng.standard_normal((3, 4))) for _ in range(2))
    check_grads(scaled_vjp(1.0), x, w, order=2)
    with pytest.raises(AssertionError):
        check_grads(scaled_vjp(1.001), x, w)


def test_check_grads_skips_integer_arguments(x64, rng):
    logits = jnp.asarray(rng.standard_normal((4, 3)))
    check_grads(purebp.softmax_cross_entropy_with_integer_labels, logits, jnp.asarray([0, 2, 1, 1]))


def test_residual_bytes_counts_the_saved_arrays():
    @jax.custom_vjp
    def square(x):
        return x * x

    square.defvjp(lambda x: (x * x, (x, 2 * x)), lambda res, g: (g * res[1],))
    assert residual_bytes(square, jnp.ones((10, 10), jnp.float32)) == 2 * 400
    assert residual_bytes(partial(jnp.multiply, 3.0), jnp.ones((10, 10), jnp.float32)) <= 400


# --- the parts beyond the first order: a planted bug of each class, and correct functions -----------
# Each planted bug is a real jax.custom_vjp whose first-order cotangent, on one set of arguments with
# every output's cotangent drawn together, is right: only the part named alongside it can see it.


def softplus_with_rule(bwd, fwd_residuals=lambda x: (x,)):
    """softplus(x) = log(1 + eˣ) with the backward rule ``bwd(residuals, g)``."""

    @jax.custom_vjp
    def softplus(x):
        return jnp.logaddexp(x, 0)

    softplus.defvjp(lambda x: (softplus(x), fwd_residuals(x)), bwd)
    return softplus


def softplus_twin(x):
    return jnp.logaddexp(x, 0)


@jax.custom_vjp
def sigmoid_with_a_wrong_rule(x):  # its value is right, its derivative 1.01 σ'
    return jax.nn.sigmoid(x)


sigmoid_with_a_wrong_rule.defvjp(lambda x: (jax.nn.sigmoid(x), x),
                                 lambda x, g: (1.01 * g * jax.nn.sigmoid(x) * jax.nn.sigmoid(-x),))


def cube_over_three():
    """x³/3 with the rule x̄ = ḡ · x³/x, guarded at 0 by a where: right, but its derivative at 0 is NaN."""

    @jax.custom_vjp
    def f(x):
        return x ** 3 / 3

    f.defvjp(lambda x: (f(x), x), lambda x, g: (g * jnp.where(x == 0, 0.0, x ** 3 / x),))
    return f


def host_rule_that_flattens_a_batch():
    """softplus whose rule runs on the host (pure_callback, batched by expanding dims) and mistakes a
    batch for one example: it takes the mean of the batch's sigmoid."""

    def host(x, g):
        s = 1 / (1 + np.exp(-x))
        return (g * (s.mean(0, keepdims=True) if s.ndim > 2 else s)).astype(x.dtype)

    return softplus_with_rule(lambda res, g: (jax.pure_callback(
        host, jax.ShapeDtypeStruct(res[0].shape, res[0].dtype), res[0], g, vmap_method="expand_dims"),))


def softplus_that_caches_per_shape():
    """softplus whose rule keeps σ(x) of the first x of each shape it meets, as a stale cache would."""
    cache = {}

    def bwd(res, g):
        (x,) = res
        if x.shape not in cache and not isinstance(x, jax.core.Tracer):
            cache[x.shape] = np.asarray(jax.nn.sigmoid(x))
        return (g * (cache[x.shape] if x.shape in cache else jax.nn.sigmoid(x)),)

    return softplus_with_rule(bwd)


def pair_with_symbolic_zeros():
    """(sin x, cos x) whose rule takes a symbolic zero cotangent for one."""

    @jax.custom_vjp
    def f(x):
        return jnp.sin(x), jnp.cos(x)

    def bwd(x, g):
        g_sin, g_cos = (jnp.ones_like(x) if isinstance(c, jax.custom_derivatives.SymbolicZero) else c for c in g)
        return (g_sin * jnp.cos(x) - g_cos * jnp.sin(x),)

    f.defvjp(lambda x: (f(x.value), x.value), bwd, symbolic_zeros=True)
    return f


def product_whose_fwd_looks_at_perturbed():
    """x · w whose fwd saves the wrong residual when w is not differentiated."""

    @jax.custom_vjp
    def f(x, w):
        return x * w

    def fwd(x, w):
        return f(x.value, w.value), (x.value, w.value if w.perturbed else 1.01 * w.value)

    f.defvjp(fwd, lambda res, g: (g * res[1], g * res[0]), symbolic_zeros=True)
    return f


def softplus_that_cancels(x):
    """softplus whose rule is 1 − σ(−x): in bfloat16 σ(−x) rounds to 1 for x ≲ −6, and x̄ to 0."""
    return softplus_with_rule(lambda res, g: (g * (1 - jax.nn.sigmoid(-res[0])),))(x)


def labels_from_the_host():
    """Cross entropy at integer labels read with numpy, which only concrete labels allow."""

    def f(z, labels):
        return -jax.nn.log_softmax(z)[np.arange(len(labels)), np.asarray(labels)]

    return f


X = np.linspace(-3.0, 3.0, 12, dtype=np.float32).reshape(3, 4)  # includes no 0
X_WITH_ZERO = np.float32([-2.0, -0.5, 0.0, 1.0, 2.5])
X_LOW = np.float32([-12.0, -9.0, -7.0, -1.0, 0.0, 2.0])
LOGITS, LABELS = np.float32([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]), np.int32([2, 0])
PLANTED = {
    # second order
    "stop-gradient-on-a-residual-factor": (softplus_with_rule(lambda res, g: (g * jax.lax.stop_gradient(jax.nn.sigmoid(res[0])),)),
                                           softplus_twin, (X,), "second order"),
    "residual-saved-through-stop-gradient": (softplus_with_rule(lambda res, g: (g * jax.nn.sigmoid(res[0]),),
                                                                lambda x: (jax.lax.stop_gradient(x),)),
                                             softplus_twin, (X,), "second order"),
    "inner-op-with-a-wrong-vjp": (softplus_with_rule(lambda res, g: (g * sigmoid_with_a_wrong_rule(res[0]),)),
                                  softplus_twin, (X,), "second order"),
    "where-with-a-nan-second-derivative": (cube_over_three(), lambda x: x ** 3 / 3, (X_WITH_ZERO,), "second order"),
    # batching
    "host-rule-wrong-when-batched": (host_rule_that_flattens_a_batch(), softplus_twin, (X,), "vmap over"),
    "stale-cache-per-shape": (softplus_that_caches_per_shape(), softplus_twin, (X,), "second order|vmap over arguments"),
    # symbolic zeros, one argument at a time, traced labels
    "symbolic-zero-taken-as-ones": (pair_with_symbolic_zeros(), lambda x: (jnp.sin(x), jnp.cos(x)), (X,),
                                    "each output alone"),
    "fwd-that-reads-perturbed": (product_whose_fwd_looks_at_perturbed(), lambda x, w: x * w, (X, X[::-1]),
                                 "each argument alone"),
    "labels-read-on-the-host": (labels_from_the_host(), lambda z, y: -jax.nn.log_softmax(z)[jnp.arange(2), y],
                                (LOGITS, LABELS), "with jit|raised"),
    # low precision
    "cancels-in-bfloat16": (softplus_that_cancels, softplus_twin, (X_LOW.astype(jnp.bfloat16),), "without jit"),
}


# A host callback has no derivative of its own: that function can only be checked at order=1.
OPTIONS = {"host-rule-wrong-when-batched": {"order": 1}}


@pytest.mark.parametrize("name", PLANTED)
def test_planted_bug_is_caught_by_the_default_check(name):
    fn, twin, args, part = PLANTED[name]
    with pytest.raises(AssertionError, match=part):
        check_vjp(fn, twin, *(jnp.asarray(a) for a in args), **OPTIONS.get(name, {}))


CORRECT = {
    "softplus": (softplus_with_rule(lambda res, g: (g * jax.nn.sigmoid(res[0]),)), softplus_twin, (X,)),
    "sigmoid-bfloat16-extremes": (purebp.sigmoid, reference.sigmoid, (X_LOW.astype(jnp.bfloat16) * 3,)),
    "softplus-bfloat16": (softplus_with_rule(lambda res, g: (g * jax.nn.sigmoid(res[0]),)), softplus_twin,
                          (X_LOW.astype(jnp.bfloat16),)),
    "max-pool-ties": (partial(purebp.max_pool, window=2), partial(reference.max_pool, window=2),
                      (np.float32([[[[1.0], [1.0]], [[0.5], [1.0]]]]),)),
    "pair-with-symbolic-zeros": (jax.jit(lambda x: (jnp.sin(x), jnp.cos(x))), lambda x: (jnp.sin(x), jnp.cos(x)), (X,)),
    "integer-labels-float16": (purebp.softmax_cross_entropy_with_integer_labels,
                               reference.softmax_cross_entropy_with_integer_labels,
                               (LOGITS.astype(np.float16), LABELS)),
}


@pytest.mark.parametrize("name", CORRECT)
def test_correct_function_passes_the_default_check(name):
    fn, twin, args = CORRECT[name]
    check_vjp(fn, twin, *(jnp.asarray(a) for a in args))


@pytest.mark.parametrize("option, part", [({"order": 1}, "second order"), ({"vmap": False}, "vmap over"),
                                          ({"each_alone": False}, "each argument alone")],
                         ids=["order=1", "vmap=False", "each_alone=False"])
def test_each_part_has_its_switch(option, part):
    planted = {"second order": "stop-gradient-on-a-residual-factor", "vmap over": "stale-cache-per-shape",
               "each argument alone": "fwd-that-reads-perturbed"}[part]
    fn, twin, args, _ = PLANTED[planted]
    check_vjp(fn, twin, *(jnp.asarray(a) for a in args), **{"order": 1, **option})  # the stale cache is second-order wrong too


def test_a_failing_part_says_how_to_run_it_alone():
    fn, twin, args, _ = PLANTED["stop-gradient-on-a-residual-factor"]
    with pytest.raises(AssertionError, match=r"\(second order\) differs .* This part alone: check_vjp\(\.\.\., "
                                             r"order=2, vmap=False, each_alone=False"):
        check_vjp(fn, twin, jnp.asarray(args[0]))
