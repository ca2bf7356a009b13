"""Activations: VJPs against their reference twins and jax.nn, residuals, extremes, bad input."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import purebp
from purebp import reference
from purebp.testing import residual_bytes
from op_examples import check_first_order

ELEMENTWISE = ["sigmoid", "relu", "tanh", "gelu", "silu", "softplus", "log_sigmoid", "leaky_relu"]
ROWWISE = ["softmax", "log_softmax"]
JAX_NN = {"sigmoid": jax.nn.sigmoid, "relu": jax.nn.relu, "tanh": jnp.tanh, "gelu": jax.nn.gelu,
          "silu": jax.nn.silu, "softplus": jax.nn.softplus, "log_sigmoid": jax.nn.log_sigmoid,
          "leaky_relu": jax.nn.leaky_relu, "softmax": jax.nn.softmax, "log_softmax": jax.nn.log_softmax}
# The second family's static options, each against jax.nn's with the same: (name, options, id).
OPTIONS = [pytest.param("gelu", {"approximate": False}, id="gelu-erf"),
           pytest.param("leaky_relu", {"negative_slope": 0.2}, id="leaky_relu-0.2"),
           pytest.param("leaky_relu", {"negative_slope": -1.5}, id="leaky_relu--1.5")]
SHAPES = [pytest.param((), id="scalar"), pytest.param((7,), id="1d"), pytest.param((4, 5), id="batched"),
          pytest.param((2, 3, 4), id="3d")]
AXES = [pytest.param((7,), -1, id="1d"), pytest.param((4, 5), -1, id="rows"), pytest.param((4, 5), 0, id="axis0"),
        pytest.param((2, 3, 4), 1, id="3d-axis1")]


def normal(rng, shape, dtype, scale=3.0):
    return jnp.asarray(scale * rng.standard_normal(shape), dtype)


# Elementwise ops do not see the shape: the scalar and one batch of rows are the cases that differ.
@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[2]])
@pytest.mark.parametrize("name", ELEMENTWISE)
def test_elementwise_vjp_matches_reference(name, shape, dtype, rng):
    z = normal(rng, shape, dtype)
    check_first_order(getattr(purebp, name), getattr(reference, name), z)
    # gelu: jax.nn's ½(1 + tanh u) cancels for z < −3, where purebp keeps its digits
    np.testing.assert_allclose(getattr(purebp, name)(z), JAX_NN[name](z), rtol=1e-6, atol=1e-6 if name == "gelu" else 0)


@pytest.mark.parametrize("shape, axis", AXES)
@pytest.mark.parametrize("name", ROWWISE)
def test_rowwise_vjp_matches_reference(name, shape, axis, dtype, rng):
    z = normal(rng, shape, dtype)
    check_first_order(getattr(purebp, name), getattr(reference, name), z, axis)
    np.testing.assert_allclose(getattr(purebp, name)(z, axis), JAX_NN[name](z, axis), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name, options", OPTIONS)
def test_options_match_jax_nn(name, options, dtype, rng):
    z = normal(rng, (4, 5), dtype)
    op, twin = (functools.partial(getattr(module, name), **options) for module in (purebp, reference))
    check_first_order(op, twin, z)
    expected = functools.partial(JAX_NN[name], **options)
    np.testing.assert_allclose(op(z), expected(z), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(jax.grad(lambda z: op(z).sum())(z), jax.grad(lambda z: expected(z).sum())(z),
                               rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["silu", "softplus", "log_sigmoid", "leaky_relu"])
def test_second_family_equals_jax_nn_in_value_and_gradient(name, rng):
    """Bit for bit in value in float32 (the same arithmetic), to float32's rounding in gradient."""
    z = normal(rng, (64,), np.float32)
    np.testing.assert_array_equal(getattr(purebp, name)(z), JAX_NN[name](z))
    grad = lambda f: jax.grad(lambda z: f(z).sum())(z)
    np.testing.assert_allclose(grad(getattr(purebp, name)), grad(JAX_NN[name]), rtol=2e-6, atol=1e-7)


def test_gelu_keeps_its_digits_where_jax_nn_cancels():
    """½(1 + tanh u) loses every digit below z ≈ −5 in float32 (jax.nn.gelu's value and its
    autodiff: up to 100% off); purebp's σ(2u) stays within a few ulps of float64's, everywhere."""
    z = np.linspace(-9.0, 4.0, 1301, dtype=np.float32)
    value, slope = FLOAT64["gelu"](z.astype(np.float64))
    ours = jax.vmap(jax.value_and_grad(purebp.gelu))(jnp.asarray(z))
    # rtol: at z = −9, e^(2u) turns u's rounding (an ulp of 33) into 8e-6 relative. atol: the slope
    # crosses 0 near z = −0.75, a difference of terms of order 1, each rounded to float32
    np.testing.assert_allclose(ours[0], value, rtol=1.5e-5, atol=1e-37)
    np.testing.assert_allclose(ours[1], slope, rtol=1.5e-5, atol=1e-7)
    theirs = jax.vmap(jax.value_and_grad(jax.nn.gelu))(jnp.asarray(z))
    np.testing.assert_allclose(theirs[0], ours[0], atol=1e-6)  # the values: equal at float32's scale of 1
    # jax.nn's derivative: 9.3e-6 off at z = −7.3 (where it is −4.3e-16), over a thousand times its value
    np.testing.assert_allclose(theirs[1], ours[1], atol=1e-5)
    assert np.max(np.abs(theirs[1] - slope) / np.abs(slope)) > 1e3


@pytest.mark.parametrize("name, kept", [
    pytest.param("gelu", "z", id="gelu"), pytest.param("silu", "z", id="silu"),
    pytest.param("softplus", "output", id="softplus"), pytest.param("log_sigmoid", "output", id="log_sigmoid"),
    pytest.param("leaky_relu", "bits", id="leaky_relu")])
def test_second_family_keeps_one_array_and_less_than_autodiff(name, kept, rng):
    z = normal(rng, (8, 16), np.float32)
    assert residual_bytes(getattr(purebp, name), z) == z.size * (1 / 8 if kept == "bits" else 4)
    assert residual_bytes(getattr(purebp, name), z) < residual_bytes(JAX_NN[name], z)


def _sigma(z):
    return 1 / (1 + np.exp(-z))


def _gelu_tanh(z):  # (value, derivative) in float64, as z σ(2u), its tails' digits kept
    u = np.sqrt(2 / np.pi) * (z + 0.044715 * z ** 3)
    return z * _sigma(2 * u), _sigma(2 * u) * (1 + 2 * z * _sigma(-2 * u) * np.sqrt(2 / np.pi) * (1 + 3 * 0.044715 * z * z))


FLOAT64 = {  # (value, derivative) of z in float64, to hold float32's far out against
    "softplus": lambda z: (np.logaddexp(z, 0), _sigma(z)),
    "log_sigmoid": lambda z: (-np.logaddexp(-z, 0), _sigma(-z)),
    "silu": lambda z: (z * _sigma(z), _sigma(z) * (1 + z * _sigma(-z))),
    "gelu": _gelu_tanh,
}


@pytest.mark.parametrize("name", list(FLOAT64))
@pytest.mark.parametrize("z", [1e4, -1e4, 88.0, -104.0, 30.0, -30.0], ids=["+1e4", "-1e4", "+88", "-104", "+30", "-30"])
def test_second_family_is_right_far_out(name, z):
    """Finite and right in float32 where the exponentials overflow or underflow."""
    with np.errstate(over="ignore"):
        expected = FLOAT64[name](np.float64(z))
    value, grad = jax.value_and_grad(getattr(purebp, name))(jnp.float32(z))
    np.testing.assert_allclose([value, grad], expected, rtol=2e-6, atol=1e-37)


def test_softplus_and_log_sigmoid_keep_their_digits_in_the_tails():
    """Their rules read σ from the output with expm1: σ(−30) = 9.4e-14 from softplus(−30) = 9.4e-14,
    where 1 − e^(−y) would round to 0; log σ(30) = −9.4e-14 likewise."""
    tail = np.float64(-30.0)
    sigma = 1 / (1 + np.exp(-tail))
    np.testing.assert_allclose(jax.grad(purebp.softplus)(jnp.float32(tail)), sigma, rtol=1e-6)
    np.testing.assert_allclose(jax.grad(purebp.log_sigmoid)(jnp.float32(-tail)), sigma, rtol=1e-6)


def test_sigmoid_keeps_exactly_its_output(rng):
    z = normal(rng, (8, 16), np.float32)
    assert residual_bytes(purebp.sigmoid, z) == z.size * 4


def test_relu_keeps_a_boolean_mask(rng):
    z = normal(rng, (8, 16), np.float32)
    assert residual_bytes(purebp.relu, z) == z.size  # one byte an element


@pytest.mark.parametrize("shape", [(), (3,), (2, 9), (2, 3, 16)], ids=["scalar", "3", "2x9", "2x3x16"])
def test_leaky_relu_reads_its_signs_back_from_bits(shape, rng):
    z = normal(rng, shape, np.float32).at[(0,) * len(shape)].set(0.0)  # the kink: derivative 1, as jax.nn
    g = normal(rng, shape, np.float32)
    _, vjp = jax.vjp(purebp.leaky_relu, z)
    np.testing.assert_array_equal(vjp(g)[0], jnp.where(z >= 0, g, 0.01 * g))


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


@pytest.mark.parametrize("call, error, message", [
    pytest.param(lambda: purebp.gelu(jnp.ones(2), approximate="tanh"), TypeError,
                 "`approximate` must be a bool, got 'tanh'", id="gelu-approximate-string"),
    pytest.param(lambda: purebp.leaky_relu(jnp.ones(2), negative_slope=jnp.float32(0.1)), TypeError,
                 "`negative_slope` must be a real number, got Array", id="leaky-slope-array"),
    pytest.param(lambda: purebp.leaky_relu(jnp.ones(2), negative_slope=True), TypeError,
                 "`negative_slope` must be a real number, got True", id="leaky-slope-bool"),
    pytest.param(lambda: purebp.leaky_relu(jnp.ones(2), negative_slope=float("nan")), ValueError,
                 "`negative_slope` must be finite, got nan", id="leaky-slope-nan"),
])
def test_bad_static_options(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize("name", ROWWISE)
def test_bad_axis(name):
    with pytest.raises(ValueError, match=r"`axis` must be in \[-2, 2\) for an input of 2 dims, got 2"):
        getattr(purebp, name)(jnp.ones((2, 3)), axis=2)
    with pytest.raises(ValueError, match="needs an input with at least one dim, got a scalar"):
        getattr(purebp, name)(jnp.float32(1.0))
    with pytest.raises(TypeError, match="`axis` must be an int, got 0.5"):
        getattr(purebp, name)(jnp.ones((2, 3)), axis=0.5)
