"""The NaN probe: extreme inputs give finite values and gradients equal to the mathematical limit
where one exists; undefined cases behave as documented; NaN reaches only the outputs it touches."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import purebp
from purebp import reference

INF = np.inf
LN2 = float(np.log(2))


def value_and_vjp(op, *args):
    """The op's value and the cotangent of its first argument for an all-ones output cotangent."""
    y, vjp = jax.vjp(lambda first: op(first, *args[1:]), args[0])
    return y, vjp(jnp.ones_like(y))[0]


# (op, args, expected value, expected cotangent of the first argument for ȳ = 1)
LIMITS = [
    pytest.param(purebp.sigmoid, (jnp.array([INF, -INF, 1e4, -1e4]),), [1, 0, 1, 0], [0, 0, 0, 0], id="sigmoid-inf"),
    pytest.param(purebp.tanh, (jnp.array([INF, -INF, 1e4]),), [1, -1, 1], [0, 0, 0], id="tanh-inf"),
    pytest.param(purebp.relu, (jnp.array([INF, -INF]),), [INF, 0], [1, 0], id="relu-inf"),
    pytest.param(purebp.softmax, (jnp.array([[INF, 1.0, INF], [1e30, -1e30, 0.0]]),),
                 [[0.5, 0, 0.5], [1, 0, 0]], [[0, 0, 0], [0, 0, 0]], id="softmax-inf-and-1e30"),
    pytest.param(purebp.log_softmax, (jnp.array([[INF, 1.0, INF]]),), [[-LN2, -INF, -LN2]], [[-0.5, 1, -0.5]],
                 id="log_softmax-inf"),
    pytest.param(purebp.sigmoid_binary_cross_entropy, (jnp.array([INF, -INF, INF, -INF]), jnp.array([1.0, 0, 0, 1])),
                 [0, 0, INF, INF], [0, 0, 1, -1], id="sigmoid_bce-inf"),
    pytest.param(purebp.sigmoid_binary_cross_entropy, (jnp.array([1e4, -1e4]), jnp.array([0.25, 0.25])),
                 [7500, 2500], [0.75, -0.25], id="sigmoid_bce-1e4"),
    pytest.param(purebp.binary_cross_entropy, (jnp.array([0.0, 1.0, 0.0, 1.0]), jnp.array([0.0, 1, 1, 0])),
                 [0, 0, INF, INF], [1, -1, -INF, INF], id="bce-exact-0-and-1"),
    pytest.param(purebp.softmax_cross_entropy, (jnp.array([[INF, 0.0, -INF]]), jnp.array([[1.0, 0, 0]])),
                 [0], [[0, 0, 0]], id="softmax_ce-inf"),
    pytest.param(purebp.softmax_cross_entropy, (jnp.array([[1e4, -1e4, 0.0]]), jnp.array([[0.0, 1, 0]])),
                 [2e4], [[1, -1, 0]], id="softmax_ce-1e4"),
    pytest.param(purebp.softmax_cross_entropy_with_integer_labels, (jnp.array([[INF, 0.0, INF]]), jnp.array([0])),
                 [LN2], [[-0.5, 0, 0.5]], id="integer_ce-inf"),
    pytest.param(purebp.softmax_cross_entropy_with_integer_labels, (jnp.array([[-1e4, 1e4]]), jnp.array([0])),
                 [2e4], [[-1, 1]], id="integer_ce-1e4"),
    pytest.param(lambda x: purebp.max_pool(x, 2), (jnp.zeros((1, 2, 2, 1)),), [[[[0]]]], [[[[1], [0]], [[0], [0]]]],
                 id="max_pool-all-equal"),
    pytest.param(lambda x: purebp.max_pool(x, 2, padding=((2, 0), (0, 0))), (jnp.ones((1, 2, 2, 1)),),
                 [[[[-INF]], [[1]]]], [[[[1], [0]], [[0], [0]]]], id="max_pool-window-of-padding"),
    pytest.param(lambda x: purebp.mlp([{"w": jnp.full((2, 2), 1e4), "b": jnp.zeros(2)},
                                       {"w": jnp.ones((2, 1)), "b": jnp.zeros(1)}], x), (jnp.array([[1.0, -3.0]]),),
                 [[0]], [[0, 0]], id="mlp-saturated-sigmoid"),
]


@pytest.mark.parametrize("op, args, value, grad", LIMITS)
def test_limits(op, args, value, grad):
    y, ct = value_and_vjp(op, *args)
    np.testing.assert_allclose(y, value, rtol=1e-6)
    np.testing.assert_allclose(ct, grad, rtol=1e-6, atol=1e-30)


def test_softmax_of_a_row_of_minus_inf_is_nan_and_contained():
    """No limit exists (every probability is 0/0): NaN, as jax.nn.softmax, and only in that row."""
    z = jnp.array([[-INF, -INF], [0.0, 1.0]])
    for op in (purebp.softmax, purebp.log_softmax):
        y, ct = value_and_vjp(op, z)
        assert np.all(np.isnan(y[0])) and np.all(np.isfinite(y[1])) and np.all(np.isfinite(ct[1]))


# NaN propagation: one NaN in the first argument reaches exactly the outputs that depend on it, and
# no gradient is NaN where that input could not have touched it.
RNG = np.random.default_rng(0)
X = jnp.asarray(RNG.standard_normal((3, 4)), jnp.float32)
IMAGE = jnp.asarray(RNG.standard_normal((2, 5, 5, 2)), jnp.float32)
KERNEL = jnp.asarray(RNG.standard_normal((3, 3, 2, 3)), jnp.float32)
PROBS = jnp.asarray(RNG.uniform(0.1, 0.9, (3, 4)), jnp.float32)
LABELS = jax.nn.softmax(jnp.asarray(RNG.standard_normal((3, 4)), jnp.float32))
MLP = [{"w": jnp.asarray(RNG.standard_normal((4, 5)), jnp.float32), "b": jnp.zeros(5)},
       {"w": jnp.asarray(RNG.standard_normal((5, 2)), jnp.float32), "b": jnp.zeros(2)}]
ROWS = lambda nan: jnp.broadcast_to(nan.any(-1, keepdims=True), nan.shape)  # noqa: E731

# name: (op of the first argument, that argument, which outputs a NaN input touches)
NAN_CASES = {
    "sigmoid": (purebp.sigmoid, X, lambda nan: nan),
    "relu": (purebp.relu, X, lambda nan: nan),
    "tanh": (purebp.tanh, X, lambda nan: nan),
    "softmax": (purebp.softmax, X, ROWS),
    "log_softmax": (purebp.log_softmax, X, ROWS),
    "binary_cross_entropy": (lambda p: purebp.binary_cross_entropy(p, LABELS), PROBS, lambda nan: nan),
    "sigmoid_binary_cross_entropy": (lambda z: purebp.sigmoid_binary_cross_entropy(z, LABELS), X, lambda nan: nan),
    "softmax_cross_entropy": (lambda z: purebp.softmax_cross_entropy(z, LABELS), X, lambda nan: nan.any(-1)),
    "softmax_cross_entropy_with_integer_labels": (
        lambda z: purebp.softmax_cross_entropy_with_integer_labels(z, jnp.array([0, 1, 3])), X,
        lambda nan: nan.any(-1)),
    "squared_error": (lambda p: purebp.squared_error(p, LABELS), X, lambda nan: nan),
    "l2_loss": (lambda p: purebp.l2_loss(p, LABELS), X, lambda nan: nan),
    "dense": (lambda x: purebp.dense(x, MLP[0]["w"], MLP[0]["b"]), X, lambda nan: ROWS(nan)[:, :1].repeat(5, 1)),
    "mlp": (lambda x: purebp.mlp(MLP, x), X, lambda nan: ROWS(nan)[:, :2]),
    "conv": (lambda x: purebp.conv(x, KERNEL, padding="SAME"), IMAGE,
             lambda nan: reference.conv(nan.astype(jnp.float32), jnp.ones_like(KERNEL), padding="SAME") > 0),
    "conv_transpose": (lambda x: purebp.conv_transpose(x, KERNEL, stride=2), IMAGE,
                       lambda nan: reference.conv_transpose(nan.astype(jnp.float32), jnp.ones_like(KERNEL),
                                                            stride=2) > 0),
    "zero_pad": (lambda x: purebp.zero_pad(x, 1), IMAGE, lambda nan: reference.zero_pad(nan, 1)),
    "max_pool": (lambda x: purebp.max_pool(x, 3, stride=2, padding="SAME"), IMAGE,
                 lambda nan: reference.max_pool(nan.astype(jnp.float32), 3, stride=2, padding="SAME") > 0),
    "avg_pool": (lambda x: purebp.avg_pool(x, 3, stride=2, padding="SAME"), IMAGE,
                 lambda nan: reference.avg_pool(nan.astype(jnp.float32), 3, stride=2, padding="SAME") > 0),
}


@pytest.mark.parametrize("name", NAN_CASES)
def test_nan_reaches_only_what_it_touches(name):
    op, x, touched_by = NAN_CASES[name]
    nan = np.zeros(x.shape, bool)
    nan[(1,) * x.ndim] = True  # one NaN, away from every edge
    y, vjp = jax.vjp(op, jnp.where(nan, jnp.nan, x))
    touched = np.asarray(touched_by(jnp.asarray(nan)))
    np.testing.assert_array_equal(np.isnan(y), touched)
    # The cotangent of an input is NaN only if that input shares an output with the NaN.
    ct = np.isnan(vjp(jnp.ones_like(y))[0])
    weights = np.random.default_rng(1).uniform(1, 2, touched.shape)  # generic: no Jacobian row sums cancel it
    shares_an_output = np.asarray(jax.vjp(op, x)[1](jnp.asarray(touched * weights, y.dtype))[0] != 0) | nan
    assert not np.any(ct & ~shares_an_output), f"NaN cotangents at {np.argwhere(ct & ~shares_an_output)[:5]}"
