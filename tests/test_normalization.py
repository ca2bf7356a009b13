"""layer_norm, rms_norm and batch_norm: VJPs against their twins and flax.linen, residuals, extremes, bad input."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import purebp
from purebp import reference
from purebp.testing import residual_bytes
from op_examples import check_first_order

# (x's shape, axis): the normalised axes, last, several, leading
AXES = [pytest.param((4, 6), -1, id="rows"), pytest.param((2, 3, 4, 5), (1, 2), id="two-axes"),
        pytest.param((5, 3), 0, id="axis0"), pytest.param((7,), -1, id="one-row")]
PARAMS = [pytest.param(True, True, id="scale-bias"), pytest.param(False, False, id="bare")]


def data(rng, shape, dtype, offset=1.0):
    return jnp.asarray(3 * rng.standard_normal(shape) + offset, dtype)


def rows(shape, axis):
    return tuple(shape[a] for a in (axis if isinstance(axis, tuple) else (axis,)))


def norm_args(rng, shape, axis, dtype, use_scale, use_bias):
    x = data(rng, shape, dtype)
    scale = jnp.asarray(rng.standard_normal(rows(shape, axis)), dtype) if use_scale else None
    bias = jnp.asarray(rng.standard_normal(rows(shape, axis)), dtype) if use_bias else None
    return x, scale, bias


@pytest.mark.parametrize("use_scale, use_bias", PARAMS)
@pytest.mark.parametrize("shape, axis", AXES)
def test_layer_norm_vjp_matches_reference(shape, axis, use_scale, use_bias, dtype, rng):
    x, scale, bias = norm_args(rng, shape, axis, dtype, use_scale, use_bias)
    args = [a for a in (x, scale, bias) if a is not None]
    pack = lambda f: lambda x, *p: f(x, *(p if use_scale else (None, *p)), axis=axis)
    check_first_order(pack(purebp.layer_norm), pack(reference.layer_norm), *args)


@pytest.mark.parametrize("use_scale", [True, False], ids=["scale", "bare"])
@pytest.mark.parametrize("shape, axis", AXES)
def test_rms_norm_vjp_matches_reference(shape, axis, use_scale, dtype, rng):
    x, scale, _ = norm_args(rng, shape, axis, dtype, use_scale, False)
    args = (x, scale) if use_scale else (x,)
    check_first_order(lambda *a: purebp.rms_norm(*a, axis=axis), lambda *a: reference.rms_norm(*a, axis=axis), *args)


@pytest.mark.parametrize("shape, axis", AXES[:3])
@pytest.mark.parametrize("name", ["layer_norm", "rms_norm"])
def test_equals_flax_in_value_and_gradient(name, shape, axis, rng):
    x, scale, bias = norm_args(rng, shape, axis, np.float32, True, name == "layer_norm")
    params = {"scale": scale} if bias is None else {"scale": scale, "bias": bias}
    module = (nn.LayerNorm if name == "layer_norm" else nn.RMSNorm)(epsilon=1e-6, reduction_axes=axis,
                                                                     feature_axes=axis)
    flax_fn = lambda x, params: module.apply({"params": params}, x)
    ours = lambda x, params: getattr(purebp, name)(x, *(params[k] for k in ("scale", "bias") if k in params), axis=axis)
    np.testing.assert_allclose(ours(x, params), flax_fn(x, params), rtol=2e-6, atol=2e-6)
    loss = lambda f: jax.grad(lambda x, p: jnp.sum(jnp.sin(f(x, p))), (0, 1))(x, params)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
                           loss(ours), loss(flax_fn))


def test_residuals_are_x_its_row_statistics_and_the_scale_to_the_byte(rng):
    x = jnp.zeros((64, 32), jnp.float32)
    scale, bias = jnp.ones(32), jnp.zeros(32)
    assert residual_bytes(purebp.layer_norm, x, scale, bias) == x.nbytes + 2 * 64 * 4 + scale.nbytes  # x, μ, 1/σ, γ
    assert residual_bytes(purebp.rms_norm, x, scale) == x.nbytes + 64 * 4 + scale.nbytes  # x, 1/σ, γ
    flax_ln = lambda x, s, b: nn.LayerNorm().apply({"params": {"scale": s, "bias": b}}, x)
    assert residual_bytes(flax_ln, x, scale, bias) >= 3 * x.nbytes  # autodiff: three arrays of x's size
    xb = x.astype(jnp.bfloat16)  # bfloat16 x, float32 statistics
    assert residual_bytes(purebp.layer_norm, xb, scale.astype(jnp.bfloat16), bias.astype(jnp.bfloat16)) == (
        xb.nbytes + 2 * 64 * 4 + 32 * 2)


def test_a_zero_scale_passes_no_cotangent_to_x_but_learns(rng):
    x = data(rng, (4, 6), np.float32)
    g = jnp.asarray(rng.standard_normal((4, 6)), jnp.float32)
    _, vjp = jax.vjp(purebp.layer_norm, x, jnp.zeros(6), jnp.zeros(6))
    dx, dscale, dbias = vjp(g)
    np.testing.assert_array_equal(dx, 0)
    x_hat = (x - x.mean(-1, keepdims=True)) / jnp.sqrt(x.var(-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(dscale, (g * x_hat).sum(0), rtol=1e-5)
    np.testing.assert_allclose(dbias, g.sum(0), rtol=1e-6)


def test_constant_rows_are_finite_and_their_gradient_is_the_centred_cotangent():
    x = jnp.full((2, 5), 3.0)
    g = jnp.arange(10.0).reshape(2, 5)
    y, vjp = jax.vjp(purebp.layer_norm, x)
    np.testing.assert_array_equal(y, 0)
    np.testing.assert_allclose(vjp(g)[0], (g - g.mean(-1, keepdims=True)) / np.sqrt(1e-6), rtol=1e-6)
    y, vjp = jax.vjp(purebp.rms_norm, jnp.zeros((2, 5)))
    assert np.all(np.isfinite(vjp(g)[0])) and np.all(y == 0)


def test_rows_with_a_large_mean_keep_their_digits_where_flax_fast_variance_cancels():
    """mean((x − μ)²) in two passes; flax's E[x²] − μ² at μ = 1e4 in float32 loses the variance."""
    x = jnp.asarray(1e4 + np.array([[-1.0, 0.0, 1.0, 2.0]]), jnp.float32)
    exact = (np.array([-1.0, 0.0, 1.0, 2.0]) - 0.5) / np.sqrt(1.25 + 1e-6)
    np.testing.assert_allclose(purebp.layer_norm(x)[0], exact, rtol=1e-6)
    flax_y = nn.LayerNorm(use_scale=False, use_bias=False).apply({}, x)[0]
    assert np.max(np.abs(flax_y - exact)) > 0.1


@pytest.mark.parametrize("call, error, message", [
    pytest.param(lambda: purebp.layer_norm(jnp.ones((2, 3)), jnp.ones(2)), ValueError,
                 r"`scale` must have the shape of the normalised axes \(1,\) of `x` \(shape \(2, 3\)\): \(3,\), got \(2,\)",
                 id="scale-shape"),
    pytest.param(lambda: purebp.layer_norm(jnp.ones((2, 3)), None, jnp.ones(3, jnp.bfloat16)), TypeError,
                 r"`bias` must have the dtype of `x` \(float32\), got bfloat16", id="bias-dtype"),
    pytest.param(lambda: purebp.rms_norm(jnp.ones((2, 3)), epsilon=0.0), ValueError,
                 "`epsilon` must be positive in float32", id="epsilon-zero"),
    pytest.param(lambda: purebp.layer_norm(jnp.ones((2, 3)), epsilon=1e-50), ValueError,
                 r"`epsilon` must be positive in float32, the statistics' dtype .* got 1e-50", id="epsilon-underflows"),
    pytest.param(lambda: purebp.layer_norm(jnp.ones((2, 3)), axis=2), ValueError,
                 r"`axis` must be in \[-2, 2\)", id="axis"),
    pytest.param(lambda: purebp.rms_norm(jnp.arange(3)), TypeError, "`x` must have a floating-point dtype",
                 id="integer-x"),
])
def test_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call()


# --- batch norm --------------------------------------------------------------------------------

BATCH_SHAPES = [pytest.param((8, 3), id="dense"), pytest.param((2, 3, 3, 4), id="images")]
MODES = [pytest.param(True, id="train"), pytest.param(False, id="eval")]


def running_stats(rng, channels, dtype=np.float32):
    return {"mean": jnp.asarray(rng.standard_normal(channels), dtype),
            "var": jnp.asarray(rng.uniform(0.5, 2.0, channels), dtype)}


@pytest.mark.parametrize("use_scale, use_bias", PARAMS)
@pytest.mark.parametrize("train", MODES)
@pytest.mark.parametrize("shape", BATCH_SHAPES)
def test_batch_norm_vjp_matches_reference(shape, train, use_scale, use_bias, dtype, rng):
    """Value, new statistics and the cotangents of x, γ and β, through y and the new statistics."""
    x, scale, bias = norm_args(rng, shape, -1, dtype, use_scale, use_bias)
    stats = running_stats(rng, shape[-1], dtype)
    params = [a for a in (scale, bias) if a is not None]

    def pack(f):
        def call(x, *p):
            p = iter(p)
            return f(x, next(p) if use_scale else None, next(p) if use_bias else None, stats, train=train, momentum=0.9)
        return call
    check_first_order(pack(purebp.batch_norm), pack(reference.batch_norm), x, *params)


@pytest.mark.parametrize("train", MODES)
@pytest.mark.parametrize("shape", BATCH_SHAPES)
def test_batch_norm_equals_flax_in_value_statistics_and_gradient(shape, train, rng):
    x, scale, bias = norm_args(rng, shape, -1, np.float32, True, True)
    stats = running_stats(rng, shape[-1])
    module = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)

    def flax_fn(x, params):
        y, updates = module.apply({"params": params, "batch_stats": stats}, x, mutable=["batch_stats"])
        return y, updates["batch_stats"]

    ours = lambda x, params: purebp.batch_norm(x, params["scale"], params["bias"], stats, train=train, momentum=0.9)
    params = {"scale": scale, "bias": bias}
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-6, atol=2e-6),
                           ours(x, params), flax_fn(x, params))
    loss = lambda f: jax.grad(lambda x, p: jnp.sum(jnp.sin(f(x, p)[0])), (0, 1))(x, params)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
                           loss(ours), loss(flax_fn))


def test_batch_norm_stats_get_no_cotangent_and_the_momentum_moves_them(rng):
    x = data(rng, (16, 3), np.float32)
    stats = running_stats(rng, 3)
    grads = jax.grad(lambda s: jnp.sum(purebp.batch_norm(x, None, None, s, train=True, momentum=0.5)[1]["mean"]))(stats)
    assert all(np.all(g == 0) for g in jax.tree_util.tree_leaves(grads))
    for momentum, want in ((0.0, x.mean(0)), (1.0, stats["mean"]), (0.5, (stats["mean"] + x.mean(0)) / 2)):
        new = purebp.batch_norm(x, None, None, stats, train=True, momentum=momentum)[1]
        np.testing.assert_allclose(new["mean"], want, rtol=1e-6)
    assert purebp.batch_norm(x, None, None, stats, train=False)[1] is not None
    np.testing.assert_array_equal(purebp.batch_norm(x, None, None, stats, train=True, momentum=0.0)[1]["var"],
                                  jnp.mean((x - x.mean(0)) ** 2, 0))  # biased: over n, as flax


def test_batch_norm_residuals_to_the_byte():
    x, channels = jnp.zeros((64, 32)), 32
    scale, bias = jnp.ones(channels), jnp.zeros(channels)
    stats = {"mean": jnp.zeros(channels), "var": jnp.ones(channels)}
    train = lambda x, s, b: purebp.batch_norm(x, s, b, stats, train=True)
    assert residual_bytes(train, x, scale, bias) == x.nbytes + 3 * channels * 4  # x, μ, 1/σ, γ
    evaluation = lambda x, s, b: purebp.batch_norm(x, s, b, stats, train=False)
    assert residual_bytes(evaluation, x, scale, bias) == x.nbytes + 3 * channels * 4
    assert residual_bytes(lambda x: purebp.batch_norm(x, None, None, stats, train=False)[0], x) == channels * 4  # 1/σ
    flax_bn = lambda x, s, b: nn.BatchNorm(use_running_average=False).apply(
        {"params": {"scale": s, "bias": b}, "batch_stats": stats}, x, mutable=["batch_stats"])
    assert residual_bytes(flax_bn, x, scale, bias) >= 2 * x.nbytes


def test_batch_norm_constant_channel_and_zero_scale(rng):
    x = jnp.concatenate([jnp.full((6, 1), 2.5), data(rng, (6, 2), np.float32)], axis=1)
    stats = running_stats(rng, 3)
    g = jnp.asarray(rng.standard_normal((6, 3)), jnp.float32)
    scale = jnp.array([1.0, 0.0, 2.0])
    (y, _), vjp = jax.vjp(lambda x, s: purebp.batch_norm(x, s, None, stats, train=True), x, scale)
    dx, dscale = vjp((g, jax.tree_util.tree_map(jnp.zeros_like, stats)))
    np.testing.assert_array_equal(y[:, 0], 0)  # x − μ = 0: finite, through ε
    np.testing.assert_allclose(dx[:, 0], (g[:, 0] - g[:, 0].mean()) / np.sqrt(1e-5), rtol=1e-5)
    np.testing.assert_array_equal(dx[:, 1], 0)  # γ = 0 passes nothing to x ...
    assert dscale[1] != 0  # ... and still learns


@pytest.mark.parametrize("call, error, message", [
    pytest.param(lambda s: purebp.batch_norm(jnp.ones(3), None, None, s, train=True), ValueError,
                 r"`x` must be \(N, ..., C\), channels last", id="one-dim"),
    pytest.param(lambda s: purebp.batch_norm(jnp.ones((2, 3)), None, None, s), TypeError, "train", id="train-missing"),
    pytest.param(lambda s: purebp.batch_norm(jnp.ones((2, 3)), None, None, s, train=1), TypeError,
                 "`train` must be a bool, got 1", id="train-int"),
    pytest.param(lambda s: purebp.batch_norm(jnp.ones((2, 3)), None, None, {"mean": s["mean"]}, train=True),
                 ValueError, r"`stats` must be the running statistics .* got a dict with keys \['mean'\]",
                 id="stats-keys"),
    pytest.param(lambda s: purebp.batch_norm(jnp.ones((2, 4)), None, None, s, train=True), ValueError,
                 r"`stats\['mean'\]` must have the shape of `x`'s channels \(4,\), got \(3,\)", id="stats-shape"),
    pytest.param(lambda s: purebp.batch_norm(jnp.ones((2, 3)), jnp.ones(4), None, s, train=True), ValueError,
                 r"`scale` must have the shape", id="scale-shape"),
    pytest.param(lambda s: purebp.batch_norm(jnp.ones((2, 3)), None, None, s, train=True, momentum=1.5), ValueError,
                 r"`momentum` must be in \[0, 1\]", id="momentum"),
    pytest.param(lambda s: purebp.batch_norm(jnp.ones((2, 3)), None, None, s, train=True, axis_name="devices"),
                 ValueError, "`axis_name` 'devices' names no mapped axis here", id="axis-name-unbound"),
])
def test_batch_norm_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call({"mean": jnp.zeros(3), "var": jnp.ones(3)})
