"""Tests for purebp.padding: zero_pad against jnp.pad and its reference twin; its VJP is a slice."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import purebp
from purebp import reference, testing
from op_examples import check_first_order


CASES = [
    pytest.param((2, 5, 3), 2, id="1d-int"),
    pytest.param((2, 5, 3), ((0, 3),), id="1d-hi-only"),
    pytest.param((1, 4, 3, 2), ((1, 0), (2, 3)), id="2d-pairs"),
    pytest.param((1, 4, 3, 2), 0, id="2d-zero"),
    pytest.param((1, 3, 2, 4, 2), ((1, 1), (0, 2), (3, 0)), id="3d-pairs"),
    pytest.param((2, 1, 1, 1, 1), 1, id="3d-int-single-pixel"),
]


def normal(shape, seed=0, dtype=jnp.float32):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


def as_pairs(padding, n):
    return ((padding, padding),) * n if isinstance(padding, int) else padding


@pytest.mark.parametrize("x_shape, padding", CASES)
def test_matches_jnp_pad(x_shape, padding):
    x = normal(x_shape)
    want = jnp.pad(x, ((0, 0), *as_pairs(padding, x.ndim - 2), (0, 0)))
    np.testing.assert_array_equal(purebp.zero_pad(x, padding), want)


@pytest.mark.parametrize("x_shape, padding", CASES)
def test_vjp_matches_reference(x_shape, padding, dtype):
    check_first_order(purebp.zero_pad, reference.zero_pad, normal(x_shape, dtype=dtype), padding)


@pytest.mark.parametrize("x_shape, padding", CASES)
def test_vjp_is_the_slice(x_shape, padding):
    x = normal(x_shape)
    y, vjp = jax.vjp(lambda x: purebp.zero_pad(x, padding), x)
    g = normal(y.shape, seed=1)
    inner = tuple(slice(lo, lo + n) for (lo, _), n in zip(as_pairs(padding, x.ndim - 2), x.shape[1:-1]))
    np.testing.assert_array_equal(vjp(g)[0], g[(slice(None), *inner, slice(None))])


def test_keeps_no_residual():
    x = normal((2, 5, 5, 3))
    assert testing.residual_bytes(purebp.zero_pad, x, 2) == 0 <= testing.residual_bytes(reference.zero_pad, x, 2)


BAD_INPUTS = [
    pytest.param(lambda: purebp.zero_pad(jnp.ones((4, 3)), 1), ValueError,
                 r"`x` must be \(N, \*spatial, C\) with 1, 2 or 3 spatial dims, got shape \(4, 3\)", id="rank-2"),
    pytest.param(lambda: purebp.zero_pad(jnp.ones((1, 2, 2, 2, 2, 1)), 1), ValueError,
                 r"`x` must be .* \(6 dims\)", id="rank-6"),
    pytest.param(lambda: purebp.zero_pad(jnp.ones((1, 4, 4, 1)), "SAME"), ValueError,
                 r"`padding` must be an int or a sequence of 2 \(lo, hi\) pairs .* got 'SAME': \"SAME\" and "
                 r"\"VALID\" need a window and a stride", id="same"),
    pytest.param(lambda: purebp.zero_pad(jnp.ones((1, 4, 4, 1)), "valid"), ValueError,
                 r"got 'valid'", id="valid"),
    pytest.param(lambda: purebp.zero_pad(jnp.ones((1, 4, 4, 1)), -1), ValueError,
                 r"`padding` must be non-negative, got -1", id="negative"),
    pytest.param(lambda: purebp.zero_pad(jnp.ones((1, 4, 4, 1)), ((1, 1),)), ValueError,
                 r"`padding` must be .* a sequence of 2 \(lo, hi\) pairs", id="pair-count"),
    pytest.param(lambda: purebp.zero_pad(jnp.ones((1, 4, 1)), ((1, 1.5),)), ValueError,
                 r"`padding` must be .* pairs of ints", id="float-pair"),
    pytest.param(lambda: purebp.zero_pad(jnp.ones((1, 4, 4, 1), jnp.int32), 1), TypeError,
                 r"`x` must have a floating-point dtype, got int32", id="int-x"),
]


@pytest.mark.parametrize("call, error, match", BAD_INPUTS)
def test_bad_input_raises(call, error, match):
    with pytest.raises(error, match=match):
        call()
