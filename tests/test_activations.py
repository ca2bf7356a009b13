"""Activations: VJPs against their reference twins and jax.nn, residuals, extremes, bad input."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import purebp
from purebp import reference
from purebp.testing import residual_bytes
from op_examples import check_first_order

ELEMENTWISE = ["sigmoid", "relu", "tanh"]
ROWWISE = ["softmax", "log_softmax"]
JAX_NN = {"sigmoid": jax.nn.sigmoid, "relu": jax.nn.relu, "tanh": jnp.tanh,
          "softmax": jax.nn.softmax, "log_softmax": jax.nn.log_softmax}
SHAPES = [pytest.param((), id="scalar"), pytest.param((7,), id="1d"), pytest.param((4, 5), id="batched"),
          pytest.param((2, 3, 4), id="3d")]
AXES = [pytest.param((7,), -1, id="1d"), pytest.param((4, 5), -1, id="rows"), pytest.param((4, 5), 0, id="axis0"),
        pytest.param((2, 3, 4), 1, id="3d-axis1")]


def normal(rng, shape, dtype, scale=3.0):
    return jnp.asarray(scale * rng.standard_normal(shape), dtype)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", ELEMENTWISE)
def test_elementwise_vjp_matches_reference(name, shape, dtype, rng):
    z = normal(rng, shape, dtype)
    check_first_order(getattr(purebp, name), getattr(reference, name), z)
    np.testing.assert_allclose(getattr(purebp, name)(z), JAX_NN[name](z), rtol=1e-6)


@pytest.mark.parametrize("shape, axis", AXES)
@pytest.mark.parametrize("name", ROWWISE)
def test_rowwise_vjp_matches_reference(name, shape, axis, dtype, rng):
    z = normal(rng, shape, dtype)
    check_first_order(getattr(purebp, name), getattr(reference, name), z, axis)
    np.testing.assert_allclose(getattr(purebp, name)(z, axis), JAX_NN[name](z, axis), rtol=1e-6, atol=1e-7)


def test_sigmoid_keeps_exactly_its_output(rng):
    z = normal(rng, (8, 16), np.float32)
    assert residual_bytes(purebp.sigmoid, z) == z.size * 4


def test_relu_keeps_a_boolean_mask(rng):
    z = normal(rng, (8, 16), np.float32)
    assert residual_bytes(purebp.relu, z) == z.size  # one byte an element


def test_relu_derivative_at_zero_is_zero():
    grads = jax.grad(lambda z: jnp.sum(purebp.relu(z)))(jnp.array([-1.0, 0.0, 1.0]))
    np.testing.assert_array_equal(grads, [0.0, 0.0, 1.0])


@pytest.mark.parametrize("z", [1e4, -1e4, 88.0, -104.0], ids=["+1e4", "-1e4", "+88", "-104"])
def test_saturated_sigmoid_and_tanh_are_finite(z):
    for op in (purebp.sigmoid, purebp.tanh):
        value, grad = jax.value_and_grad(op)(jnp.float32(z))
        assert np.isfinite(value) and np.isfinite(grad) and grad >= 0
    assert purebp.sigmoid(jnp.float32(z)) == (1.0 if z > 0 else 0.0)


@pytest.mark.parametrize("name", ROWWISE)
def test_huge_spread_is_finite(name):
    z = jnp.array([[1e30, -1e30, 0.0], [1e4, 1e4, -1e4]], jnp.float32)
    value, vjp = jax.vjp(getattr(purebp, name), z)
    grad = vjp(jnp.ones_like(value))[0]
    assert np.all(np.isfinite(grad))
    if name == "softmax":
        np.testing.assert_allclose(value, [[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]])
    else:
        np.testing.assert_allclose(value[1], [-np.log(2), -np.log(2), -2e4 - np.log(2)], rtol=1e-6)


def test_reference_sigmoid_keeps_its_digits_for_very_negative_z():
    # Found by tests/test_properties_dense.py: the twin was 0.5 (tanh(z/2) + 1), which cancels to 0
    # below z ≈ -17 in float32, so check_vjp failed the correct op (got 1.43e-12, expected 0.0).
    z = jnp.float32(-27.271763)
    check_first_order(purebp.sigmoid, reference.sigmoid, z)
    exact = 1 / (1 + np.exp(-np.float64(z)))
    value, grad = jax.value_and_grad(reference.sigmoid)(z)
    np.testing.assert_allclose(value, exact, rtol=1e-6)
    np.testing.assert_allclose(grad, exact * (1 - exact), rtol=1e-6)


def test_reference_log_softmax_keeps_its_digits_for_a_large_offset():
    # Found by tests/test_properties_dense.py: the twin was z − logsumexp(z), which rounds 1e4 + ln 2
    # at float32's ulp of 1e4, so check_vjp failed the correct op (got -0.6931472, expected -0.6933594).
    z = jnp.array([1e4, 1e4], jnp.float32)
    check_first_order(purebp.log_softmax, reference.log_softmax, z)
    np.testing.assert_allclose(reference.log_softmax(z), [-np.log(2)] * 2, rtol=1e-7)


def test_softmax_rule_is_p_times_g_minus_mean():
    z, g = jnp.array([0.5, -1.0, 2.0]), jnp.array([1.0, 0.0, -2.0])
    p = jax.nn.softmax(z)
    _, vjp = jax.vjp(purebp.softmax, z)
    np.testing.assert_allclose(vjp(g)[0], p * (g - jnp.sum(g * p)), rtol=1e-6)


@pytest.mark.parametrize("name", ELEMENTWISE + ROWWISE)
def test_integer_input_is_a_type_error(name):
    with pytest.raises(TypeError, match="`z` must have a floating-point dtype, got int32"):
        getattr(purebp, name)(jnp.arange(3))


@pytest.mark.parametrize("name", ROWWISE)
def test_bad_axis(name):
    with pytest.raises(ValueError, match=r"`axis` must be in \[-2, 2\) for an input of 2 dims, got 2"):
        getattr(purebp, name)(jnp.ones((2, 3)), axis=2)
    with pytest.raises(ValueError, match="needs an input with at least one dim, got a scalar"):
        getattr(purebp, name)(jnp.float32(1.0))
    with pytest.raises(TypeError, match="`axis` must be an int, got 0.5"):
        getattr(purebp, name)(jnp.ones((2, 3)), axis=0.5)
