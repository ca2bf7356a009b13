"""Property tests for the dense-family ops: activations, losses, dense and mlp.

Hypothesis draws the cases (shapes, axes, dtypes, values with large magnitudes, label forms,
network widths and depths); every test holds value and VJP against the op's twin in
``purebp.reference`` with ``check_vjp``, and the value against the outside library that defines
the semantics (jax.nn, optax, or the matrix product in numpy float64). The number of examples
comes from the hypothesis profile in ``conftest.py`` ("ci", fixed cases, by default; "explore" and
"thorough" draw new ones, by hand:
``HYPOTHESIS_PROFILE=thorough python -m pytest tests/test_properties_*.py``).
"""
from functools import partial

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings, strategies as st

import purebp
from purebp import reference
from op_examples import check_first_order

pytestmark = pytest.mark.usefixtures("persistent_compilation_cache")

# Every distinct shape, axis and dtype compiles anew: about 30 programs (1-2 s of XLA on a CPU)
# for one check_vjp, which runs both functions with and without jit, against under 0.1 s for a
# case whose programs are compiled. So shapes come from a small pool shared by every test, which
# still has every rank from 0 to 3, a size-1 axis in the middle of three, and sizes 2, 3 and 5.
SHAPES = ((), (5,), (2, 5), (2, 1, 3))
DTYPES = st.sampled_from([np.float32, np.float64])
SEEDS = st.integers(0, 2**32 - 1)
SCALES = (1e-3, 1.0, 10.0, 1e2, 1e3, 1e4)
OFFSETS = (0.0, 0.0, 30.0, -1e3, 1e4)  # added to a whole array of logits: large values, small spread
ACTIVATIONS = ["sigmoid", "tanh", "relu", "identity"]
JAX_NN = {"sigmoid": jax.nn.sigmoid, "relu": jax.nn.relu, "tanh": jnp.tanh, "identity": lambda z: z,
          "softmax": jax.nn.softmax, "log_softmax": jax.nn.log_softmax}
# The outside libraries' functions, jitted (one program per case instead of one per primitive).
OUTSIDE = {name: jax.jit(fn) for name, fn in JAX_NN.items()} | {
    name: jax.jit(fn, static_argnums=1) for name, fn in JAX_NN.items() if "softmax" in name} | {
    name: jax.jit(getattr(optax, name)) for name in ("sigmoid_binary_cross_entropy", "squared_error", "l2_loss")} | {
    name: jax.jit(getattr(optax, name), static_argnames="axis") for name in (
        "softmax_cross_entropy", "softmax_cross_entropy_with_integer_labels")}


def shapes(min_dims=0):
    return st.sampled_from([shape for shape in SHAPES if len(shape) >= min_dims])


@st.composite
def reals(draw, shape, scales=SCALES):
    """float64 values of ``shape``: a unit draw times one scale, or a mixture of scales per element.

    The unit draw is either standard normal (from a drawn seed) or hypothesis' own floats in
    [-3, 3], which bring exact zeros, ties and repeated values (relu's kink, softmax's max).
    """
    if draw(st.booleans()):
        unit = np.random.default_rng(draw(SEEDS)).standard_normal(shape)
    else:
        unit = draw(hnp.arrays(np.float64, shape, elements=st.floats(-3, 3, allow_subnormal=False)))
    scale = draw(st.one_of(st.sampled_from(scales), hnp.arrays(np.float64, shape, elements=st.sampled_from(scales))))
    return unit * scale


@st.composite
def logit_arrays(draw, shape):
    """``reals`` plus a common offset: softmax is shift-invariant, and a large offset with a small
    spread is where a log-softmax written as ``z − logsumexp(z)`` loses its digits."""
    return draw(reals(shape)) + draw(st.sampled_from(OFFSETS))


def probabilities(shape):
    """Probabilities in [1e-6, 1 - 1e-6], many of them within a few decades of either end."""
    exponents = st.floats(-6, -0.5)
    return hnp.arrays(np.float64, shape, elements=st.one_of(
        st.floats(1e-6, 1 - 1e-6), exponents.map(lambda e: 10.0**e), exponents.map(lambda e: 1 - 10.0**e)))


def unit_interval(shape):
    """Targets in [0, 1], exact 0 and 1 included."""
    return hnp.arrays(np.float64, shape, elements=st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0, 1)))


@st.composite
def label_distributions(draw, shape, axis):
    """Labels along ``axis``: a distribution (one-hot, sparse or dense), or unnormalised weights."""
    kind = draw(st.sampled_from(["one-hot", "distribution", "softmax", "unnormalised"]))
    if kind == "one-hot":
        batch_shape = shape[:axis] + shape[axis + 1:]
        classes = draw(hnp.arrays(np.int64, batch_shape, elements=st.integers(0, shape[axis] - 1)))
        return np.moveaxis(np.eye(shape[axis])[classes], -1, axis)
    if kind == "softmax":
        unnormalized = np.exp(draw(reals(shape, scales=(1.0, 10.0))))  # |values| ≤ 30: no overflow
        return unnormalized / unnormalized.sum(axis, keepdims=True)
    weights = draw(hnp.arrays(np.float64, shape, elements=st.one_of(st.just(0.0), st.floats(0, 1))))
    if kind == "unnormalised":
        return 3 * weights  # documented: the rule is then p Σy − y
    weights = np.where(weights.sum(axis, keepdims=True) == 0, 1.0, weights)  # an all-zero row becomes uniform
    return weights / weights.sum(axis, keepdims=True)


def eps(dtype):
    return float(np.finfo(dtype).eps)


def assert_close(got, want, dtype, ulps=8, scale=None):
    """|got − want| ≤ ulps·eps·(|want| + scale), scale defaulting to max|want| (check_vjp's convention)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    scale = np.max(np.abs(want), initial=0.0) if scale is None else scale
    np.testing.assert_allclose(got, want, rtol=ulps * eps(dtype), atol=ulps * eps(dtype) * scale)


def vanishing_atol(dtype):
    """An absolute floor for check_vjp where the exact value or cotangent can vanish in a whole leaf.

    A rule written from the rounded output (σ' = σ(1 − σ), tanh' = 1 − tanh², as jax.nn's own rules)
    sees y to within eps/2, so its cotangent g·f'(y) is right to about eps·|g| in absolute terms but
    not in relative ones once f' is tiny (σ at z ≳ 9 in float32); softmax's p ⊙ (g − Σ g p) cancels
    g_i − g_i p_i when p_i → 1 (z = [30, 0] in float64); softmax cross entropy's p Σy − y cancels
    to 0 for a perfect prediction (uniform labels on equal logits), and its integer-label form's
    p_y − 1 to the sum of the other p_j, which p_y ≈ 1 knows only to eps/2 (z = [0, 28, 0] in float64); and an oracle may cancel two
    terms of order 1 to an exact 0 (the reference's ∂J/∂y = softplus(−z) − softplus(z) at z = 0, or
    ln(1 − p) − ln p at p = 1/2, come out as 2.3e-10 under jit in float32).
    check_vjp's default atol is rtol times the leaf's largest expected value, which vanishes when
    every element of the leaf is saturated or 0, so these tests pass 16·eps instead (the standard
    normal cotangents check_vjp draws, a few dozen here, stay below 5 in magnitude). That is
    tighter than the default for every leaf whose largest value exceeds 16·eps/rtol (0.02 in
    float32, 4e-8 in float64), and the per-element rtol still applies: this is a floor for
    degenerate leaves, not a looser test.
    """
    return 16 * eps(dtype)


def costly(share):
    """The profile's settings with ``share`` of its examples, for a test whose cases cost several times
    the others': one whose every case tends to be a new program to compile (an axis, or a whole
    network's shapes, on top of the shape and dtype). Under "ci" the file must stay within 90 s."""
    return settings(max_examples=max(1, round(settings().max_examples * share)))


def as_dtype(dtype, *arrays):
    return tuple(None if a is None else jnp.asarray(a, dtype) for a in arrays)


# --- activations ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sigmoid", "relu", "tanh"])
@given(dtype=DTYPES, seed=SEEDS, data=st.data())
def test_elementwise_activation(name, dtype, seed, data):
    values = data.draw(shapes().flatmap(reals), label="z")
    with jax.enable_x64(dtype == np.float64):
        (z,) = as_dtype(dtype, values)
        atol = None if name == "relu" else vanishing_atol(dtype)
        check_first_order(getattr(purebp, name), getattr(reference, name), z, atol=atol, seed=seed)
        assert_close(getattr(purebp, name)(z), OUTSIDE[name](z), dtype)


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
@costly(0.6)
@given(dtype=DTYPES, seed=SEEDS, data=st.data())
def test_rowwise_activation(name, dtype, seed, data):
    shape = data.draw(shapes(min_dims=1), label="shape")
    axis = data.draw(st.integers(-len(shape), len(shape) - 1), label="axis")
    values = data.draw(logit_arrays(shape), label="z")
    with jax.enable_x64(dtype == np.float64):
        (z,) = as_dtype(dtype, values)
        check_first_order(getattr(purebp, name), getattr(reference, name), z, axis, atol=vanishing_atol(dtype), seed=seed)
        assert_close(getattr(purebp, name)(z, axis), OUTSIDE[name](z, axis), dtype)


# --- losses -----------------------------------------------------------------------------------


@given(dtype=DTYPES, seed=SEEDS, data=st.data())
def test_binary_cross_entropy(dtype, seed, data):
    shape = data.draw(shapes(), label="shape")
    p_values, label_values = data.draw(probabilities(shape), label="p"), data.draw(unit_interval(shape), label="labels")
    with jax.enable_x64(dtype == np.float64):
        p, labels = as_dtype(dtype, p_values, label_values)
        check_first_order(purebp.binary_cross_entropy, reference.binary_cross_entropy, p, labels, atol=vanishing_atol(dtype),
                  seed=seed)
        # optax has no loss on probabilities: the formula itself, in float64 on the same rounded inputs.
        p64, y64 = np.asarray(p, np.float64), np.asarray(labels, np.float64)
        assert_close(purebp.binary_cross_entropy(p, labels), -(y64 * np.log(p64) + (1 - y64) * np.log1p(-p64)), dtype)


@given(dtype=DTYPES, seed=SEEDS, data=st.data())
def test_sigmoid_binary_cross_entropy(dtype, seed, data):
    shape = data.draw(shapes(), label="shape")
    logit_values = data.draw(logit_arrays(shape), label="logits")
    label_values = data.draw(unit_interval(shape), label="labels")
    with jax.enable_x64(dtype == np.float64):
        logits, labels = as_dtype(dtype, logit_values, label_values)
        check_first_order(purebp.sigmoid_binary_cross_entropy, reference.sigmoid_binary_cross_entropy, logits, labels,
                  atol=vanishing_atol(dtype), seed=seed)
        assert_close(purebp.sigmoid_binary_cross_entropy(logits, labels),
                     OUTSIDE["sigmoid_binary_cross_entropy"](logits, labels), dtype)


@costly(0.6)
@given(dtype=DTYPES, seed=SEEDS, data=st.data())
def test_softmax_cross_entropy(dtype, seed, data):
    shape = data.draw(shapes(min_dims=1), label="shape")
    axis = data.draw(st.integers(-len(shape), len(shape) - 1), label="axis")
    logit_values = data.draw(logit_arrays(shape), label="logits")
    label_values = data.draw(label_distributions(shape, axis % len(shape)), label="labels")
    with jax.enable_x64(dtype == np.float64):
        logits, labels = as_dtype(dtype, logit_values, label_values)
        check_first_order(purebp.softmax_cross_entropy, reference.softmax_cross_entropy, logits, labels, axis,
                  atol=vanishing_atol(dtype), seed=seed)
        assert_close(purebp.softmax_cross_entropy(logits, labels, axis),
                     OUTSIDE["softmax_cross_entropy"](logits, labels, axis=axis), dtype)


@costly(0.6)
@given(dtype=DTYPES, seed=SEEDS, data=st.data())
def test_softmax_cross_entropy_with_integer_labels(dtype, seed, data):
    shape = data.draw(shapes(min_dims=1), label="shape")
    axis = data.draw(st.integers(-len(shape), len(shape) - 1), label="axis")
    num_classes, batch_shape = shape[axis], shape[:axis % len(shape)] + shape[axis % len(shape) + 1:]
    logit_values = data.draw(logit_arrays(shape), label="logits")
    label_values = data.draw(hnp.arrays(np.int32, batch_shape, elements=st.integers(-num_classes, num_classes - 1)),
                             label="labels (negative ones count from the end)")
    op = purebp.softmax_cross_entropy_with_integer_labels
    with jax.enable_x64(dtype == np.float64):
        (logits,), labels = as_dtype(dtype, logit_values), jnp.asarray(label_values)
        check_first_order(op, reference.softmax_cross_entropy_with_integer_labels, logits, labels, axis,
                  atol=vanishing_atol(dtype), seed=seed)
        # optax computes logsumexp(z) − z_y, which rounds at the ulp of max|z| when the loss is small.
        outside = OUTSIDE["softmax_cross_entropy_with_integer_labels"](logits, labels, axis=axis)
        assert_close(op(logits, labels, axis), outside, dtype, scale=np.max(np.abs(logit_values)))


@pytest.mark.parametrize("name", ["squared_error", "l2_loss"])
@given(dtype=DTYPES, seed=SEEDS, with_targets=st.booleans(), data=st.data())
def test_squared_error_family(name, dtype, seed, with_targets, data):
    shape = data.draw(shapes(), label="shape")
    labels = ("predictions", "targets")[:1 + with_targets]
    values = [data.draw(reals(shape), label=label) for label in labels]
    with jax.enable_x64(dtype == np.float64):
        args = as_dtype(dtype, *values)
        check_first_order(getattr(purebp, name), getattr(reference, name), *args, seed=seed)
        assert_close(getattr(purebp, name)(*args), OUTSIDE[name](*args), dtype)


# --- dense and mlp ----------------------------------------------------------------------------


# Batch shapes: none, an empty batch, one and two batch dims; layer widths from a few sizes.
BATCH_SHAPES = ((), (0,), (3,), (2, 1))
WIDTHS = (1, 2, 5)


def batch_shapes():
    return st.sampled_from(BATCH_SHAPES)


@given(dtype=DTYPES, seed=SEEDS, with_bias=st.booleans(), data=st.data())
def test_dense(dtype, seed, with_bias, data):
    batch_shape = data.draw(batch_shapes(), label="batch shape")
    fan_in, fan_out = data.draw(st.sampled_from(WIDTHS), label="in"), data.draw(st.sampled_from(WIDTHS), label="out")
    values = [data.draw(reals(batch_shape + (fan_in,)), label="x"), data.draw(reals((fan_in, fan_out)), label="w")]
    if with_bias:
        values.append(data.draw(reals((fan_out,)), label="b"))
    with jax.enable_x64(dtype == np.float64):
        args = as_dtype(dtype, *values)
        check_first_order(purebp.dense, reference.dense, *args, seed=seed)
        # Against x @ w + b in float64 on the same rounded inputs, with the classical bound of a sum
        # of `in` products, |error| ≤ (in + 1)·eps·(|x| @ |w| + |b|) elementwise, plus underflow:
        # XLA on CPU flushes subnormal inputs and results to 0 (x = 1.4e-45 reads as 0 in float32),
        # each flush costing at most the smallest normal number, `tiny`, times the other factor.
        x, w = np.asarray(args[0], np.float64), np.asarray(args[1], np.float64)
        b = np.asarray(args[2], np.float64) if with_bias else np.zeros(fan_out)
        error = np.abs(np.asarray(purebp.dense(*args), np.float64) - (x @ w + b))
        tiny = float(np.finfo(dtype).tiny)
        underflow = tiny * (np.abs(x).sum(-1, keepdims=True) + np.abs(w).sum(0) + 2 * fan_in + 3)
        bound = (fan_in + 1) * eps(dtype) * (np.abs(x) @ np.abs(w) + np.abs(b)) + underflow
        assert np.all(error <= bound), f"dense differs from x @ w + b by {error.max()}, bound {bound.max()}"


@st.composite
def networks(draw):
    """(sizes, params as float64 numpy, x): depth 1-4, widths from WIDTHS, 0-2 batch dims."""
    depth = draw(st.integers(1, 4))
    sizes = draw(st.lists(st.sampled_from(WIDTHS), min_size=depth + 1, max_size=depth + 1))
    weight_scale = draw(st.sampled_from([0.1, 1.0, 3.0]))
    params = [{"w": draw(reals((m, n), scales=(1.0,))) * weight_scale / np.sqrt(m),
               "b": draw(reals((n,), scales=(0.1, 1.0)))} for m, n in zip(sizes[:-1], sizes[1:])]
    x = draw(reals(draw(batch_shapes()) + (sizes[0],), scales=(1e-3, 1.0, 10.0)))
    return sizes, params, x


NUMPY_ACTIVATIONS = {"sigmoid": lambda z: 0.5 * (np.tanh(z / 2) + 1), "tanh": np.tanh,
                     "relu": lambda z: np.maximum(z, 0), "identity": lambda z: z}


def largest_layer_input(params, x, activation):
    """max(1, |x|, |a¹|, …, |aᴸ⁻¹|): what multiplies an error in δˡ into the cotangent of Wˡ."""
    a, largest = np.asarray(x, np.float64), 1.0
    for layer in params[:-1]:
        largest = max(largest, np.max(np.abs(a), initial=0.0))
        a = NUMPY_ACTIVATIONS[activation](a @ layer["w"] + layer["b"])
    return max(largest, np.max(np.abs(a), initial=0.0))


@partial(jax.jit, static_argnames=("activation", "output_activation"))
def mlp_with_jax_nn(params, x, activation, output_activation):
    for l, layer in enumerate(params):
        x = JAX_NN[output_activation if l == len(params) - 1 else activation](x @ layer["w"] + layer["b"])
    return x


@costly(0.4)
@given(network=networks(), activation=st.sampled_from(ACTIVATIONS), output_activation=st.sampled_from(ACTIVATIONS),
       dtype=DTYPES, seed=SEEDS)
def test_mlp(network, activation, output_activation, dtype, seed):
    sizes, param_values, x_values = network
    options = dict(activation=activation, output_activation=output_activation)
    with jax.enable_x64(dtype == np.float64):
        params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), param_values)
        (x,) = as_dtype(dtype, x_values)
        # mlp writes σ' from the saved activations, as purebp.sigmoid does: a saturated unit's δ is
        # right to eps·|g| (vanishing_atol), and that error reaches ∂Wˡ multiplied by aˡ⁻¹.
        atol = vanishing_atol(dtype) * largest_layer_input(param_values, x_values, activation)
        check_first_order(lambda p, x: purebp.mlp(p, x, **options), lambda p, x: reference.mlp(p, x, **options),
                  params, x, atol=atol, seed=seed)
        assert_close(purebp.mlp(params, x, **options), mlp_with_jax_nn(params, x, **options), dtype)
