"""dense and mlp: VJPs against the reference, mlp against the composition of ops, residuals, errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import purebp
from purebp import reference
from purebp.testing import residual_bytes
from op_examples import check_first_order

ACTIVATIONS = ["sigmoid", "tanh", "relu", "identity"]
BATCH_SHAPES = [pytest.param((), id="unbatched"), pytest.param((4,), id="batch"), pytest.param((2, 3), id="2-batch-dims")]


def normal(rng, shape, dtype, scale=1.0):
    return jnp.asarray(scale * rng.standard_normal(shape), dtype)


def make_params(rng, sizes, dtype):
    return [{"w": normal(rng, (m, n), dtype, 1 / np.sqrt(m)), "b": normal(rng, (n,), dtype, 0.1)}
            for m, n in zip(sizes[:-1], sizes[1:])]


def composed_mlp(params, x, activation, output_activation):
    """The same network from separate purebp ops: one custom_vjp per dense and per activation."""
    ops = {"sigmoid": purebp.sigmoid, "tanh": purebp.tanh, "relu": purebp.relu, "identity": lambda z: z}
    for l, layer in enumerate(params):
        x = purebp.dense(x, layer["w"], layer["b"])
        x = ops[output_activation if l == len(params) - 1 else activation](x)
    return x


@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("batch_shape", BATCH_SHAPES)
def test_dense_vjp_matches_reference(batch_shape, with_bias, dtype, rng):
    x, w = normal(rng, batch_shape + (5,), dtype), normal(rng, (5, 3), dtype)
    args = (x, w, normal(rng, (3,), dtype)) if with_bias else (x, w)
    check_first_order(purebp.dense, reference.dense, *args)
    np.testing.assert_allclose(purebp.dense(*args), x @ w + (args[2] if with_bias else 0), rtol=1e-6)


def test_dense_takes_weights_in_its_input_dtype_as_conv_does(rng):
    """No silent promotion: mixed precision casts the float32 weights itself, and their cotangents come
    back in float32 through the cast."""
    x, w, b = normal(rng, (4, 5), jnp.bfloat16), normal(rng, (5, 3), np.float32), normal(rng, (3,), np.float32)
    with pytest.raises(TypeError, match=r"`w` must have the dtype of `x` \(bfloat16\), got float32"):
        purebp.dense(x, w, b)
    with pytest.raises(TypeError, match=r"`b` must have the dtype of `x` \(bfloat16\), got float32"):
        purebp.dense(x, w.astype(jnp.bfloat16), b)
    y, vjp = jax.vjp(lambda x, w, b: purebp.dense(x, w.astype(x.dtype), b.astype(x.dtype)), x, w, b)
    assert y.dtype == jnp.bfloat16
    assert [ct.dtype for ct in vjp(jnp.ones_like(y))] == [jnp.bfloat16, np.float32, np.float32]


@pytest.mark.parametrize("output_activation", ["identity", "sigmoid"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("depth", [1, 3])  # no hidden layer, and hidden layers between hidden layers
def test_mlp_equals_composition_of_ops(depth, activation, output_activation, rng):
    sizes = [6, 8, 7, 5, 3][: depth + 1]
    params, x = make_params(rng, sizes, np.float32), normal(rng, (10, 6), np.float32)
    fused = lambda p, x: purebp.mlp(p, x, activation=activation, output_activation=output_activation)
    composed = lambda p, x: composed_mlp(p, x, activation, output_activation)
    check_first_order(fused, composed, params, x)


@pytest.mark.parametrize("batch_shape", BATCH_SHAPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_mlp_vjp_matches_reference(activation, batch_shape, dtype, rng):
    params, x = make_params(rng, [5, 7, 4], dtype), normal(rng, batch_shape + (5,), dtype)
    check_first_order(lambda p, x: purebp.mlp(p, x, activation=activation, output_activation="tanh"),
              lambda p, x: reference.mlp(p, x, activation=activation, output_activation="tanh"), params, x)


def test_mlp_keeps_one_activation_per_layer(rng):
    params, x = make_params(rng, [784, 128, 64, 10], np.float32), normal(rng, (32, 784), np.float32)
    weights = sum(layer["w"].nbytes for layer in params)  # biases are not needed: ∇b = Σ δ
    activations = 4 * 32 * (784 + 128 + 64)  # x, a¹, a²; an identity output keeps no a³
    assert residual_bytes(purebp.mlp, params, x) == weights + activations
    assert residual_bytes(purebp.mlp, params, x) <= residual_bytes(reference.mlp, params, x)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_mlp_residuals_no_larger_than_autodiff_or_composed_ops(activation, rng):
    params, x = make_params(rng, [3, 8, 8, 2], np.float32), normal(rng, (16, 3), np.float32)
    fused = residual_bytes(lambda p, x: purebp.mlp(p, x, activation=activation), params, x)
    assert fused <= residual_bytes(lambda p, x: reference.mlp(p, x, activation=activation), params, x)
    assert fused <= residual_bytes(lambda p, x: composed_mlp(p, x, activation, "identity"), params, x)


@pytest.mark.parametrize("x_shape, w_shape, b_shape, error, match", [
    pytest.param((4, 5), (5,), (3,), ValueError, r"`w` must be a matrix \[in, out\], got shape \(5,\)", id="w-rank"),
    pytest.param((4, 5), (6, 3), (3,), ValueError, r"`x` must have shape \[\.\.\., in\] with in = 6", id="in-mismatch"),
    pytest.param((), (6, 3), (3,), ValueError, r"got `x` of shape \(\)", id="scalar-x"),
    pytest.param((4, 5), (5, 3), (4,), ValueError, r"`b` must have shape \(3,\) \(out of `w`\), got \(4,\)", id="b-shape"),
])
def test_dense_bad_shapes(x_shape, w_shape, b_shape, error, match):
    with pytest.raises(error, match=match):
        purebp.dense(jnp.ones(x_shape), jnp.ones(w_shape), jnp.ones(b_shape))


def test_dense_integer_input():
    with pytest.raises(TypeError, match="`w` must have a floating-point dtype, got int32"):
        purebp.dense(jnp.ones((2, 3)), jnp.ones((3, 4), jnp.int32))


def test_mlp_bad_arguments(rng):
    params, x = make_params(rng, [4, 5, 3], np.float32), jnp.ones((2, 4))
    with pytest.raises(ValueError, match=r"`activation` must be one of \['identity', 'relu', 'sigmoid', 'tanh'\], "
                                         r"got 'softplus'"):
        purebp.mlp(params, x, activation="softplus")
    with pytest.raises(ValueError, match=r"`params\[1\]` must be a dict with keys 'w' and 'b'"):
        purebp.mlp([params[0], {"w": params[1]["w"]}], x)
    with pytest.raises(ValueError, match=r"`params\[1\]\['b'\]` must be an array of shape \(3,\), got None"):
        purebp.mlp([params[0], {"w": params[1]["w"], "b": None}], x)
    with pytest.raises(ValueError, match=r"`layer 0's output` must have shape \[\.\.\., in\] with in = 4 "
                                         r"\(`params\[1\]\['w'\]`'s first dim\)"):
        purebp.mlp([params[0], params[0]], x)
    with pytest.raises(ValueError, match="`params` must be a non-empty list"):
        purebp.mlp([], x)
