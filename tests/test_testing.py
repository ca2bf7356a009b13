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
