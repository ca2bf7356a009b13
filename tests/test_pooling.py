"""Tests for purebp.pooling: max_pool and avg_pool against flax, their reference twins and numpy."""
import importlib
import itertools
from functools import partial

import flax.linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import purebp
from purebp import reference, testing
from op_examples import check_first_order

pooling_module = importlib.import_module("purebp.pooling")

# (x shape, window, stride, padding), named by what each case exercises: "overlap" is stride <
# window; "gaps" is stride > window; "uneven" leaves a remainder no window reaches; "beyond" pads
# by at least a window, so some windows hold padding alone.
CASES = [
    pytest.param((2, 7, 3), 2, None, "VALID", id="1d-w2-default-stride-uneven"),
    pytest.param((2, 7, 3), 3, 1, "SAME", id="1d-w3-s1-same-overlap"),
    pytest.param((2, 8, 2), 3, 2, 1, id="1d-w3-s2-int-pad-overlap"),
    pytest.param((1, 9, 2), 2, 3, ((1, 2),), id="1d-w2-s3-pairs-gaps"),
    pytest.param((1, 5, 2), 2, 2, ((3, 2),), id="1d-w2-s2-pairs-beyond"),
    pytest.param((1, 6, 2), 1, 2, "VALID", id="1d-w1-s2"),
    pytest.param((2, 6, 6, 3), 2, None, "VALID", id="2d-w2-default-stride"),
    pytest.param((2, 7, 5, 2), (2, 3), (2, 1), "VALID", id="2d-w2x3-s2x1-uneven-overlap"),
    pytest.param((1, 7, 7, 2), 3, 2, "SAME", id="2d-w3-s2-same-overlap"),
    pytest.param((1, 5, 6, 2), 3, 3, "SAME", id="2d-w3-s3-same-odd"),
    pytest.param((1, 6, 5, 2), (3, 2), 1, ((2, 1), (0, 3)), id="2d-s1-pairs-overlap"),
    pytest.param((1, 5, 5, 1), 2, 3, 1, id="2d-w2-s3-int-pad-gaps"),
    pytest.param((1, 4, 5, 3, 2), 2, None, "VALID", id="3d-w2-default-stride-uneven"),
    pytest.param((1, 5, 4, 4, 1), (3, 2, 2), (2, 1, 2), "SAME", id="3d-same-overlap"),
    pytest.param((1, 3, 4, 3, 2), (2, 3, 1), (1, 2, 3), ((1, 0), (2, 2), (0, 1)), id="3d-pairs-mixed"),
]


def ties(shape, seed=0, dtype=jnp.float32):
    """relu of small integers: about half zeros and many equal values, the case that needs a rule."""
    values = np.random.default_rng(seed).integers(-3, 3, shape)
    return jnp.asarray(np.maximum(values, 0), dtype)


def distinct(shape, seed=0, dtype=jnp.float32):
    """A random permutation of 0.1, 0.2, …: no two values equal, well apart for finite differences."""
    return jnp.asarray(np.random.default_rng(seed).permutation(np.prod(shape)).reshape(shape) / 10 + 0.1, dtype)


def flax_arguments(x, window, stride, padding):
    """purebp's arguments spelled out for flax: tuples per spatial dim, stride explicit, (lo, hi) pairs."""
    n = x.ndim - 2
    per_dim = lambda v: (v,) * n if isinstance(v, int) else tuple(v)
    window = per_dim(window)
    padding = ((padding, padding),) * n if isinstance(padding, int) else padding
    return window, window if stride is None else per_dim(stride), padding


@pytest.mark.parametrize("inputs", [ties, distinct], ids=["ties", "distinct"])
@pytest.mark.parametrize("x_shape, window, stride, padding", CASES)
def test_max_pool(x_shape, window, stride, padding, inputs):
    """Equals flax, bit for bit; its VJP equals the twin's, on relu ties and on distinct values."""
    x = inputs(x_shape)
    window_, stride_, padding_ = flax_arguments(x, window, stride, padding)
    np.testing.assert_array_equal(jax.jit(purebp.max_pool, static_argnums=(1, 2, 3))(x, window, stride, padding),
                                  flax.linen.max_pool(x, window_, strides=stride_, padding=padding_))
    check_first_order(purebp.max_pool, reference.max_pool, x, window, stride, padding)


@pytest.mark.parametrize("count_include_pad", [True, False], ids=["count-pad", "skip-pad"])
@pytest.mark.parametrize("x_shape, window, stride, padding", CASES)
def test_avg_pool(x_shape, window, stride, padding, count_include_pad):
    """Equals flax (NaN for windows of padding alone without count_include_pad, which compares equal);
    its VJP equals the twin's."""
    x = distinct(x_shape)
    window_, stride_, padding_ = flax_arguments(x, window, stride, padding)
    want = flax.linen.avg_pool(x, window_, strides=stride_, padding=padding_, count_include_pad=count_include_pad)
    got = jax.jit(purebp.avg_pool, static_argnums=(1, 2, 3, 4))(x, window, stride, padding, count_include_pad)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    check_first_order(purebp.avg_pool, reference.avg_pool, x, window, stride, padding, count_include_pad)


def test_avg_pool_windows_of_padding_alone_are_nan_and_pass_nothing_back():
    x = distinct((1, 5, 2))
    y, vjp = jax.vjp(lambda x: purebp.avg_pool(x, 2, 2, ((3, 2),), count_include_pad=False), x)
    # padded positions 0-9 hold x at 3-7: windows 0 (0, 1) and 4 (8, 9) cover padding alone
    assert np.isnan(y[0, ::4]).all() and np.isfinite(y[0, 1:4]).all()
    np.testing.assert_allclose(vjp(jnp.ones_like(y))[0],
                               jax.vjp(lambda x: reference.avg_pool(x, 2, 2, ((3, 2),), False), x)[1](
                                   jnp.ones_like(y))[0])
    assert np.isfinite(vjp(jnp.ones_like(y))[0]).all()


# ---- ties: exactly one position per window, the first maximum in row-major window order ----

def first_max_positions(x, window, stride, pads, out_spatial):
    """numpy oracle: {(b, *o, c): padded position of window o's first maximum (row-major, padding -inf)}."""
    padded = np.pad(np.asarray(x, np.float64), ((0, 0), *pads, (0, 0)), constant_values=-np.inf)
    positions = {}
    for b, c in itertools.product(range(x.shape[0]), range(x.shape[-1])):
        for o in itertools.product(*map(range, out_spatial)):
            best = None
            for k in itertools.product(*map(range, window)):  # row-major; a later tie never wins
                p = tuple(oi * s + ki for oi, s, ki in zip(o, stride, k))
                if best is None or padded[(b, *p, c)] > padded[(b, *best, c)]:
                    best = p
            positions[(b, *o, c)] = (b, *best, c)
    return positions


def first_max_routing(x, window, stride, pads, g):
    """numpy oracle of the VJP: each window's cotangent to its first maximum, dropped if that is padding."""
    g = np.asarray(g, np.float64)
    dx = np.zeros((x.shape[0], *(n + lo + hi for n, (lo, hi) in zip(x.shape[1:-1], pads)), x.shape[-1]))
    for o, p in first_max_positions(x, window, stride, pads, g.shape[1:-1]).items():
        dx[p] += g[o]
    return dx[(slice(None), *(slice(lo, lo + n) for (lo, _), n in zip(pads, x.shape[1:-1])), slice(None))]


def first_max_gather(x, window, stride, pads, t, out_spatial):
    """numpy oracle of the JVP: each window's output takes the tangent at its first maximum."""
    t = np.pad(np.asarray(t, np.float64), ((0, 0), *pads, (0, 0)))
    y = np.zeros((x.shape[0], *out_spatial, x.shape[-1]))
    for o, p in first_max_positions(x, window, stride, pads, out_spatial).items():
        y[o] = t[p]
    return y


TIE_CASES = [
    pytest.param((2, 6, 6, 3), (2, 2), (2, 2), ((0, 0), (0, 0)), id="2x2-s2"),
    pytest.param((1, 7, 7, 2), (3, 3), (2, 2), ((1, 1), (1, 1)), id="3x3-s2-padded-overlap"),
    pytest.param((1, 6, 5, 2), (3, 2), (1, 1), ((2, 1), (0, 3)), id="3x2-s1-pairs"),
    pytest.param((1, 5, 4, 3, 1), (2, 2, 2), (1, 2, 1), ((1, 0), (0, 1), (1, 1)), id="3d"),
]


@pytest.mark.parametrize("x_shape, window, stride, pads", TIE_CASES)
@pytest.mark.parametrize("fill", ["relu-ties", "all-zero", "all-negative"])
def test_ties_route_to_the_first_maximum(x_shape, window, stride, pads, fill):
    x = {"relu-ties": ties(x_shape, seed=3), "all-zero": jnp.zeros(x_shape),
         "all-negative": -jnp.ones(x_shape)}[fill]  # all-negative: the -inf padding never wins
    y, vjp = jax.vjp(lambda x: purebp.max_pool(x, window, stride, pads), x)
    g = jnp.asarray(np.random.default_rng(1).permutation(y.size).reshape(y.shape) + 1, jnp.float32)
    got = vjp(g)[0]
    np.testing.assert_array_equal(got, first_max_routing(x, window, stride, pads, g))
    np.testing.assert_array_equal(got, jax.vjp(lambda x: reference.max_pool(x, window, stride, pads), x)[1](g)[0])


def test_all_equal_window_gives_everything_to_its_first_position():
    x = jnp.zeros((1, 4, 4, 1))
    dx = jax.grad(lambda x: purebp.max_pool(x, 2).sum())(x)[0, :, :, 0]
    np.testing.assert_array_equal(dx, [[1, 0, 1, 0], [0, 0, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])


def test_relu_ties_one_position_per_window():
    z = jnp.asarray(np.random.default_rng(5).integers(-3, 3, (4, 8, 8, 3)), jnp.float32)
    dz = jax.grad(lambda z: purebp.max_pool(purebp.relu(z), 2).sum())(z)
    as_windows = lambda a: a.reshape(4, 4, 2, 4, 2, 3).transpose(0, 1, 3, 5, 2, 4).reshape(4, 4, 4, 3, 4)
    receivers = (as_windows(dz) != 0).sum(-1)
    # a window with a positive max passes its 1 to exactly one position; an all-zero window passes it
    # to the relu's first zero, where relu' = 0
    np.testing.assert_array_equal(receivers, as_windows(z).max(-1) > 0)
    np.testing.assert_array_equal(dz, jax.grad(lambda z: reference.max_pool(reference.relu(z), 2).sum())(z))


def test_padding_first_maximum_passes_nothing_back():
    # window 0 is [padding, x0]: both -inf, padding comes first and keeps the cotangent
    x = jnp.full((1, 2, 1), -jnp.inf)
    y, vjp = jax.vjp(lambda x: purebp.max_pool(x, 2, 1, ((1, 1),)), x)
    g = jnp.array([1.0, 2.0, 3.0]).reshape(y.shape)
    np.testing.assert_array_equal(vjp(g)[0].ravel(), [2.0, 3.0])
    np.testing.assert_array_equal(vjp(g)[0], jax.vjp(lambda x: reference.max_pool(x, 2, 1, ((1, 1),)), x)[1](g)[0])


def test_nan_propagates_and_routes_as_xla():
    x = jnp.array([1.0, jnp.nan, 0.5, 2.0, jnp.nan, jnp.nan]).reshape(1, 6, 1)
    for f in (purebp.max_pool, jax.jit(purebp.max_pool, static_argnums=(1, 2))):
        y, vjp = jax.vjp(lambda x: f(x, 2, 1), x)
        y_ref, vjp_ref = jax.vjp(lambda x: reference.max_pool(x, 2, 1), x)
        np.testing.assert_array_equal(y, y_ref)
        g = jnp.arange(1.0, 6.0).reshape(y.shape)
        np.testing.assert_array_equal(vjp(g)[0], vjp_ref(g)[0])


# ---- residuals and the shape of the backward ----

@pytest.mark.parametrize("x_shape, window, stride, padding", CASES)
def test_max_pool_keeps_one_int8_per_window(x_shape, window, stride, padding):
    x = ties(x_shape)
    y = purebp.max_pool(x, window, stride, padding)
    ours = testing.residual_bytes(purebp.max_pool, x, window, stride, padding)
    assert ours == y.size  # one int8 per window and channel: 1/4 of y's float32 bytes
    assert ours <= testing.residual_bytes(reference.max_pool, x, window, stride, padding)


def test_max_pool_residual_bytes_for_the_benchmark_shape():
    x = jax.ShapeDtypeStruct((128, 28, 28, 32), jnp.float32)
    _, residuals = jax.eval_shape(lambda x: pooling_module._max_pool_fwd(
        pooling_module._geometry(x, 2, None, "VALID"), x), x)
    assert (residuals.shape, residuals.dtype) == ((128, 14, 14, 32), jnp.int8)
    assert residuals.size * residuals.dtype.itemsize == 802_816  # vs 12,845,056 bytes of x for autodiff


def test_large_windows_use_a_wider_index():
    x = distinct((1, 6, 6, 6, 2))  # a 6x6x6 window has 216 positions: more than int8 holds
    assert testing.residual_bytes(purebp.max_pool, x, 6) == 2 * 2  # two int16 argmaxes
    check_first_order(purebp.max_pool, reference.max_pool, x, 6)


@pytest.mark.parametrize("count_include_pad", [True, False], ids=["count-pad", "skip-pad"])
def test_avg_pool_keeps_nothing(count_include_pad):
    x = distinct((2, 7, 7, 3))
    assert testing.residual_bytes(purebp.avg_pool, x, 3, 2, "SAME", count_include_pad) == 0


@pytest.mark.parametrize("op", [purebp.max_pool, purebp.avg_pool], ids=["max", "avg"])
@pytest.mark.parametrize("window, stride, padding", [(2, None, "VALID"), (3, 2, "SAME"), (3, 1, 1)],
                         ids=["2x2-s2", "3x3-s2-same", "3x3-s1-pad1"])
def test_backward_has_no_scatter(op, window, stride, padding):
    x = distinct((2, 8, 8, 3))
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda x: op(x, window, stride, padding).sum()))(x))
    assert "scatter" not in jaxpr and "gather" not in jaxpr


# ---- transformations and dtypes ----

POOLS = {
    "max": (purebp.max_pool, reference.max_pool, dict(window=3, stride=2, padding="SAME")),
    "avg": (purebp.avg_pool, reference.avg_pool, dict(window=3, stride=2, padding="SAME")),
    "avg-skip-pad": (purebp.avg_pool, reference.avg_pool,
                     dict(window=(2, 3), stride=(1, 2), padding=((1, 0), (2, 1)), count_include_pad=False)),
}


@pytest.mark.parametrize("name", POOLS)
def test_jit_matches_eager(name):
    op, _, kwargs = POOLS[name]
    x = ties((2, 7, 6, 3))
    f = partial(op, **kwargs)
    np.testing.assert_array_equal(jax.jit(f)(x), f(x))
    loss = lambda x: jnp.sum(jnp.sin(f(x)))
    np.testing.assert_allclose(jax.jit(jax.grad(loss))(x), jax.grad(loss)(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("x_shape, window, stride, pads", TIE_CASES)
def test_grad_of_grad_at_ties_routes_through_the_first_maximum(x_shape, window, stride, pads):
    # With L = ½ Σ y², ∇L = S y (S: route to the first maximum), and ∇⟨∇L, w⟩ = S Sᵀ w. JAX's own
    # rule is no oracle here: its forward-mode select_and_gather_add breaks 2-D ties differently
    # from its select_and_scatter_add on CPU; purebp uses the first maximum in both orders.
    x, weights = ties(x_shape, seed=3), distinct(x_shape, seed=1)
    loss = lambda x: 0.5 * jnp.sum(purebp.max_pool(x, window, stride, pads) ** 2)
    got = jax.grad(lambda x: jnp.sum(jax.grad(loss)(x) * weights))(x)
    out_spatial = purebp.max_pool(x, window, stride, pads).shape[1:-1]
    gathered = first_max_gather(x, window, stride, pads, weights, out_spatial)
    np.testing.assert_allclose(got, first_max_routing(x, window, stride, pads, gathered), rtol=1e-6)


def test_float64_keeps_float64(x64):
    x = distinct((1, 4, 4, 1), dtype=jnp.float64)
    for op in (purebp.max_pool, purebp.avg_pool):
        assert op(x, 2).dtype == jnp.float64
        assert jax.grad(lambda x: op(x, 2).sum())(x).dtype == jnp.float64


# ---- bad input ----

def ones(*shape, dtype=jnp.float32):
    return jnp.ones(shape, dtype)


BAD_INPUTS = [
    pytest.param(lambda: purebp.max_pool(ones(5, 4), 2), ValueError,
                 r"`x` must be \(N, \*spatial, C\) with 1, 2 or 3 spatial dims, got shape \(5, 4\) \(2 dims\)",
                 id="max-rank-2"),
    pytest.param(lambda: purebp.avg_pool(ones(1, 2, 2, 2, 2, 1), 2), ValueError,
                 r"`x` must be .* got shape \(1, 2, 2, 2, 2, 1\) \(6 dims\)", id="avg-rank-6"),
    pytest.param(lambda: purebp.max_pool(ones(1, 3, 3, 1), 4), ValueError,
                 r"`window` spans \(4, 4\) spatial positions, larger than the padded input \(3, 3\)",
                 id="max-window-too-big"),
    pytest.param(lambda: purebp.avg_pool(ones(1, 3, 1), 6, 1, ((1, 1),)), ValueError,
                 r"`window` spans \(6,\) spatial positions, larger than the padded input \(5,\)",
                 id="avg-window-too-big-padded"),
    pytest.param(lambda: purebp.max_pool(ones(1, 4, 4, 1), 0), ValueError,
                 r"`window` must be positive, got 0", id="max-window-zero"),
    pytest.param(lambda: purebp.max_pool(ones(1, 4, 4, 1), (2, -1)), ValueError,
                 r"`window` must be positive, got \(2, -1\)", id="max-window-negative"),
    pytest.param(lambda: purebp.avg_pool(ones(1, 4, 4, 1), 2, 0), ValueError,
                 r"`stride` must be positive, got 0", id="avg-stride-zero"),
    pytest.param(lambda: purebp.max_pool(ones(1, 4, 4, 1), 2, -2), ValueError,
                 r"`stride` must be positive, got -2", id="max-stride-negative"),
    pytest.param(lambda: purebp.max_pool(ones(1, 4, 4, 1), 2, (1, 1, 1)), ValueError,
                 r"`stride` must be an int or a tuple of 2 ints \(one per spatial dim\), got \(1, 1, 1\)",
                 id="max-stride-length"),
    pytest.param(lambda: purebp.max_pool(ones(4, 4, 1), (2, 2, 2)), ValueError,  # a tuple window: flax's layout
                 r"`x` must be \(\*batch, \*spatial, C\) with as many spatial dims as `window` \(2, 2, 2\)",
                 id="max-window-longer-than-input"),
    pytest.param(lambda: purebp.max_pool(ones(1, 4, 4, 1), 2.0), ValueError,
                 r"`window` must be an int or a tuple of 2 ints", id="max-window-float"),
    pytest.param(lambda: purebp.max_pool(ones(1, 4, 4, 1), 2, padding="FULL"), ValueError,
                 r'`padding` must be "VALID", "SAME", an int or \(lo, hi\) pairs, got \'FULL\'',
                 id="max-padding-unknown"),
    pytest.param(lambda: purebp.avg_pool(ones(1, 4, 4, 1), 2, padding=((1, 1),)), ValueError,
                 r"`padding` must be .* a sequence of 2 \(lo, hi\) pairs", id="avg-padding-pairs"),
    pytest.param(lambda: purebp.avg_pool(ones(1, 4, 4, 1), 2, padding=-1), ValueError,
                 r"`padding` must be non-negative, got -1", id="avg-padding-negative"),
    pytest.param(lambda: purebp.max_pool(ones(1, 4, 4, 1, dtype=jnp.int32), 2), TypeError,
                 r"`x` must have a floating-point dtype, got int32", id="max-int-x"),
    pytest.param(lambda: purebp.avg_pool(ones(1, 4, 4, 1, dtype=jnp.uint8), 2), TypeError,
                 r"`x` must have a floating-point dtype, got uint8", id="avg-int-x"),
    pytest.param(lambda: purebp.avg_pool(ones(1, 4, 4, 1), 2, count_include_pad="yes"), TypeError,
                 r"`count_include_pad` must be a bool, got 'yes'", id="avg-count-include-pad"),
    pytest.param(lambda: jax.jit(purebp.max_pool, static_argnums=1)(ones(1, 3, 3, 1), 5), ValueError,
                 r"`window` spans \(5, 5\)", id="max-under-jit"),
]


@pytest.mark.parametrize("call, error, match", BAD_INPUTS)
def test_bad_input_raises(call, error, match):
    with pytest.raises(error, match=match):
        call()
