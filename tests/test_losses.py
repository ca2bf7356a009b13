"""Losses: fused VJPs against their reference twins and optax, extremes, residuals, bad input."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import purebp
from purebp import reference
from op_examples import check_first_order

SHAPES = [pytest.param((), id="scalar"), pytest.param((7,), id="1d"), pytest.param((4, 5), id="batched")]
ROW_SHAPES = [pytest.param((7,), -1, id="1d"), pytest.param((4, 5), -1, id="rows"),
              pytest.param((4, 5), 0, id="axis0"), pytest.param((2, 3, 4), 1, id="3d-axis1")]


def normal(rng, shape, dtype, scale=3.0):
    return jnp.asarray(scale * rng.standard_normal(shape), dtype)


def uniform(rng, shape, dtype, low=0.0, high=1.0):
    return jnp.asarray(rng.uniform(low, high, shape), dtype)


def label_distribution(rng, shape, axis, dtype):
    return jax.nn.softmax(normal(rng, shape, dtype), axis)


def integer_labels(rng, shape, axis):
    batch_shape = shape[:axis % len(shape)] + shape[axis % len(shape) + 1:]
    return jnp.asarray(rng.integers(0, shape[axis], batch_shape), jnp.int32)


# --- values and VJPs against the reference twins ----------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_binary_cross_entropy(shape, dtype, rng):
    p, labels = uniform(rng, shape, dtype, 0.05, 0.95), uniform(rng, shape, dtype)
    check_first_order(purebp.binary_cross_entropy, reference.binary_cross_entropy, p, labels)


@pytest.mark.parametrize("shape", SHAPES)
def test_sigmoid_binary_cross_entropy(shape, dtype, rng):
    logits, labels = normal(rng, shape, dtype), uniform(rng, shape, dtype)
    check_first_order(purebp.sigmoid_binary_cross_entropy, reference.sigmoid_binary_cross_entropy, logits, labels)
    np.testing.assert_allclose(purebp.sigmoid_binary_cross_entropy(logits, labels),
                               optax.sigmoid_binary_cross_entropy(logits, labels), rtol=1e-6)


@pytest.mark.parametrize("shape, axis", ROW_SHAPES)
def test_softmax_cross_entropy(shape, axis, dtype, rng):
    logits, labels = normal(rng, shape, dtype), label_distribution(rng, shape, axis, dtype)
    check_first_order(purebp.softmax_cross_entropy, reference.softmax_cross_entropy, logits, labels, axis)
    ours, theirs = (jax.jit(f, static_argnums=2) for f in (purebp.softmax_cross_entropy, optax.softmax_cross_entropy))
    np.testing.assert_allclose(ours(logits, labels, axis), theirs(logits, labels, axis), rtol=1e-6)


@pytest.mark.parametrize("shape, axis", ROW_SHAPES)
def test_softmax_cross_entropy_with_integer_labels(shape, axis, dtype, rng):
    logits, labels = normal(rng, shape, dtype), integer_labels(rng, shape, axis)
    op = purebp.softmax_cross_entropy_with_integer_labels
    check_first_order(op, reference.softmax_cross_entropy_with_integer_labels, logits, labels, axis)
    ours, theirs = (jax.jit(f, static_argnums=2) for f in (op, optax.softmax_cross_entropy_with_integer_labels))
    np.testing.assert_allclose(ours(logits, labels, axis), theirs(logits, labels, axis), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("with_targets", [True, False], ids=["targets", "no-targets"])
@pytest.mark.parametrize("name", ["squared_error", "l2_loss"])
@pytest.mark.parametrize("shape", SHAPES)
def test_squared_error_family(name, shape, with_targets, dtype, rng):
    args = (normal(rng, shape, dtype),) + ((normal(rng, shape, dtype),) if with_targets else ())
    check_first_order(getattr(purebp, name), getattr(reference, name), *args)
    np.testing.assert_allclose(getattr(purebp, name)(*args), getattr(optax, name)(*args), rtol=1e-6)


# --- the fused rules ------------------------------------------------------------------------


def test_sigmoid_binary_cross_entropy_rule_is_sigmoid_minus_label(rng):
    logits, labels = normal(rng, (50,), np.float32), uniform(rng, (50,), np.float32)
    grads = jax.grad(lambda z, y: purebp.sigmoid_binary_cross_entropy(z, y).sum(), argnums=(0, 1))(logits, labels)
    np.testing.assert_allclose(grads[0], jax.nn.sigmoid(logits) - labels, atol=2e-7)
    np.testing.assert_allclose(grads[1], -logits, rtol=1e-7)


def test_softmax_cross_entropy_rule_is_p_minus_label(rng):
    logits, labels = normal(rng, (6, 5), np.float32), label_distribution(rng, (6, 5), -1, np.float32)
    grad = jax.grad(lambda z: purebp.softmax_cross_entropy(z, labels).sum())(logits)
    np.testing.assert_allclose(grad, jax.nn.softmax(logits) - labels, atol=2e-7)


def test_unnormalised_labels_scale_p(rng):
    logits, labels = normal(rng, (4, 3), np.float32), uniform(rng, (4, 3), np.float32)
    grad = jax.grad(lambda z: purebp.softmax_cross_entropy(z, labels).sum())(logits)
    np.testing.assert_allclose(grad, jax.nn.softmax(logits) * labels.sum(-1, keepdims=True) - labels, atol=1e-6)


def test_integer_labels_rule_is_p_minus_one_hot(rng):
    logits, labels = normal(rng, (6, 5), np.float32), integer_labels(rng, (6, 5), -1)
    grad = jax.grad(lambda z: purebp.softmax_cross_entropy_with_integer_labels(z, labels).sum())(logits)
    np.testing.assert_allclose(grad, jax.nn.softmax(logits) - jax.nn.one_hot(labels, 5), atol=2e-7)


def test_negative_integer_labels_count_from_the_end(rng):
    logits = normal(rng, (4, 5), np.float32)
    negative, positive = jnp.array([-1, -5, 0, 2]), jnp.array([4, 0, 0, 2])
    for op in (purebp.softmax_cross_entropy_with_integer_labels, optax.softmax_cross_entropy_with_integer_labels):
        value, grad = jax.jit(jax.value_and_grad(lambda z: op(z, negative).sum()))(logits)
        np.testing.assert_allclose(value, purebp.softmax_cross_entropy_with_integer_labels(logits, positive).sum(),
                                   rtol=1e-6)
        np.testing.assert_allclose(grad, jax.nn.softmax(logits) - jax.nn.one_hot(positive, 5), atol=2e-7)


@pytest.mark.parametrize("implementation", [purebp, reference], ids=["purebp", "reference"])
def test_labels_out_of_range_give_nan_once_not_another_class(implementation, rng):
    """[-k, k) index classes, as optax; 5, -6 and -10 with k = 5 give NaN (they used to wrap twice to
    classes 4 and 0), in the loss and in that row's cotangent alone."""
    op = implementation.softmax_cross_entropy_with_integer_labels
    logits, labels = normal(rng, (5, 5), np.float32), jnp.array([5, -6, -10, 2, -1])
    value, grad = jax.jit(jax.value_and_grad(lambda z: op(z, labels).sum()))(logits)
    per_example = jax.jit(op)(logits, labels)
    assert np.isnan(per_example[:3]).all() and np.isnan(value)
    np.testing.assert_allclose(per_example[3:], optax.softmax_cross_entropy_with_integer_labels(
        logits[3:], labels[3:]), rtol=1e-6)
    assert np.isnan(grad[:3]).all() and np.isfinite(grad[3:]).all()


@pytest.mark.parametrize("dtype, labels, classes", [
    pytest.param(np.int8, [-128, -100, 127, 0], 200, id="int8-200-classes"),
    pytest.param(np.uint8, [0, 255, 3, 200], 201, id="uint8"),
    pytest.param(np.uint32, [3, 2 ** 31 + 1, 4, 2 ** 32 - 1], 5, id="uint32-above-int32"),
    pytest.param(np.int16, [-5, 4, -6, 5], 5, id="int16"),
])
def test_labels_of_every_integer_dtype(dtype, labels, classes, rng):
    """Compared in their own dtype, so no bound overflows and no cast wraps a label into range."""
    logits, labels = normal(rng, (4, classes), np.float32), np.array(labels, dtype)
    as_int = labels.astype(np.int64)
    valid = (as_int >= -classes) & (as_int < classes)
    expected = np.where(valid, jax.jit(optax.softmax_cross_entropy_with_integer_labels)(
        logits, jnp.asarray(np.where(valid, as_int % classes, 0), jnp.int32)), np.nan)
    for implementation in (purebp, reference):
        np.testing.assert_allclose(jax.jit(implementation.softmax_cross_entropy_with_integer_labels)(logits, labels),
                                   expected, rtol=1e-6)


@pytest.mark.parametrize("dtype, error", [pytest.param(np.float16, 300.0, id="f16-300"),
                                          pytest.param(np.float32, 2e19, id="f32-2e19")])
def test_l2_loss_is_finite_where_half_the_square_fits(dtype, error):
    """e² overflows, ½e² does not: the value and its gradient e are finite, in purebp and its twin."""
    p, t = jnp.asarray([error, -error], dtype), jnp.zeros(2, dtype)
    for implementation in (purebp, reference):
        grad = jax.grad(lambda p: implementation.l2_loss(p, t).sum())(p)
        np.testing.assert_allclose(np.asarray(implementation.l2_loss(p, t), np.float64), 0.5 * np.float64(error) ** 2,
                                   rtol=1e-3)
        np.testing.assert_allclose(np.asarray(grad, np.float64), [error, -error], rtol=1e-3)


def test_integer_labels_get_a_float0_cotangent(rng):
    logits, labels = normal(rng, (3, 4), np.float32), integer_labels(rng, (3, 4), -1)
    loss = lambda z, y: purebp.softmax_cross_entropy_with_integer_labels(z, y).sum()
    _, label_grad = jax.grad(loss, argnums=(0, 1), allow_int=True)(logits, labels)
    assert label_grad.dtype == jax.dtypes.float0 and label_grad.shape == labels.shape


def test_well_classified_loss_keeps_its_digits():
    # softplus(−20) ≈ 2.06e-9: the form softplus(z) − y·z would round it to 0 in float32.
    loss = purebp.sigmoid_binary_cross_entropy(jnp.float32(20.0), jnp.float32(1.0))
    np.testing.assert_allclose(loss, np.log1p(np.exp(-20.0)), rtol=1e-6)
    grad = jax.grad(purebp.sigmoid_binary_cross_entropy)(jnp.float32(20.0), jnp.float32(1.0))
    np.testing.assert_allclose(grad, -1 / (1 + np.exp(20.0)), rtol=1e-6)


# --- extremes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("z", [1e4, -1e4], ids=["+1e4", "-1e4"])
@pytest.mark.parametrize("y", [0.0, 0.3, 1.0])
def test_sigmoid_binary_cross_entropy_at_huge_logits(z, y):
    value, grads = jax.value_and_grad(purebp.sigmoid_binary_cross_entropy, argnums=(0, 1))(
        jnp.float32(z), jnp.float32(y))
    expected_value = (1 - y) * max(z, 0) + y * max(-z, 0)
    np.testing.assert_allclose(value, expected_value, rtol=1e-6)
    np.testing.assert_allclose(grads, ((1.0 if z > 0 else 0.0) - y, -z), rtol=1e-6)


@pytest.mark.parametrize("name", ["softmax_cross_entropy", "softmax_cross_entropy_with_integer_labels"])
def test_softmax_cross_entropy_at_huge_logits(name):
    logits = jnp.array([[1e4, -1e4, 0.0], [1e30, -1e30, 0.0]], jnp.float32)
    labels = jnp.array([1, 0]) if "integer" in name else jnp.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    value, grad = jax.value_and_grad(lambda z: getattr(purebp, name)(z, labels).sum())(logits)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad, [[1.0, -1.0, 0.0], [0.0, 0.0, 0.0]])


@pytest.mark.parametrize("name", ["softmax_cross_entropy", "softmax_cross_entropy_with_integer_labels"])
def test_reference_cross_entropy_keeps_its_digits_for_a_large_offset(name):
    # Found by tests/test_properties_dense.py: the twins computed log p as z − logsumexp(z) (or the
    # loss as logsumexp(z) − z_y), which rounds 1e4 + ln 2 at float32's ulp of 1e4: expected 0.6933594
    # where the op (correctly) gives ln 2 = 0.6931472, and check_vjp failed the op.
    logits = jnp.array([1e4, 1e4], jnp.float32)
    labels = jnp.array(0) if "integer" in name else jnp.array([1.0, 0.0])
    check_first_order(getattr(purebp, name), getattr(reference, name), logits, labels)
    np.testing.assert_allclose(getattr(reference, name)(logits, labels), np.log(2), rtol=1e-7)


@pytest.mark.parametrize("p", [1e-7, 1 - 1e-7], ids=["1e-7", "1-1e-7"])
@pytest.mark.parametrize("y", [0.0, 0.5, 1.0])
def test_binary_cross_entropy_near_the_edges(p, y, x64):
    value, grads = jax.value_and_grad(purebp.binary_cross_entropy, argnums=(0, 1))(jnp.float64(p), jnp.float64(y))
    np.testing.assert_allclose(value, -(y * np.log(p) + (1 - y) * np.log1p(-p)), rtol=1e-12)
    np.testing.assert_allclose(grads, ((p - y) / (p * (1 - p)), np.log1p(-p) - np.log(p)), rtol=1e-9)


@pytest.mark.parametrize("p, y, expected_grad", [(0.0, 0.0, 1.0), (1.0, 1.0, -1.0)], ids=["p=y=0", "p=y=1"])
def test_binary_cross_entropy_exact_edges_are_finite(p, y, expected_grad):
    value, grad = jax.value_and_grad(purebp.binary_cross_entropy)(jnp.float32(p), jnp.float32(y))
    assert value == 0.0 and grad == expected_grad  # 0 · ln 0 = 0, and its derivative's limit


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["binary_cross_entropy", "sigmoid_binary_cross_entropy", "softmax_cross_entropy",
                                  "squared_error", "l2_loss"])
def test_mismatched_shapes_are_value_errors(name):
    first = {"binary_cross_entropy": "p", "squared_error": "predictions", "l2_loss": "predictions"}.get(name, "logits")
    second = "targets" if first == "predictions" else "labels"
    with pytest.raises(ValueError, match=rf"`{second}` must have the shape of `{first}` \(4, 3\), got \(4,\)"):
        getattr(purebp, name)(jnp.ones((4, 3)), jnp.ones(4))


@pytest.mark.parametrize("name", ["binary_cross_entropy", "sigmoid_binary_cross_entropy", "softmax_cross_entropy",
                                  "softmax_cross_entropy_with_integer_labels", "squared_error", "l2_loss"])
def test_integer_inputs_are_type_errors(name):
    with pytest.raises(TypeError, match="must have a floating-point dtype, got int32"):
        getattr(purebp, name)(jnp.ones((4, 3), jnp.int32), jnp.ones((4, 3), jnp.int32))


def test_integer_labels_are_checked():
    op = purebp.softmax_cross_entropy_with_integer_labels
    with pytest.raises(TypeError, match="`labels` must have an integer dtype, got float32"):
        op(jnp.ones((4, 3)), jnp.ones(4))
    with pytest.raises(ValueError, match=r"`labels` must have the shape of `logits` \(4, 3\) without axis 1, "
                                         r"\(4,\), got \(3,\)"):
        op(jnp.ones((4, 3)), jnp.ones(3, jnp.int32))


@pytest.mark.parametrize("label", [0.0, 1.0], ids=["y=0", "y=1"])
def test_mixed_second_derivative_at_a_hard_label(label):
    """∂²J/∂p∂y = −1/(1 − p) − 1/p for BCE and ∂²J/∂z∂y = −1 for the fused loss, at y of exactly 0 or 1
    too (found by check_vjp's second order: the 0·∞ guard once cut the weight's derivative there)."""
    p, z, y = jnp.float32(0.25), jnp.float32(0.5), jnp.float32(label)
    bce = jax.grad(jax.grad(purebp.binary_cross_entropy, 0), 1)(p, y)
    sbce = jax.grad(jax.grad(purebp.sigmoid_binary_cross_entropy, 0), 1)(z, y)
    np.testing.assert_allclose([bce, sbce], [-1 / 0.75 - 1 / 0.25, -1.0], rtol=1e-6)
