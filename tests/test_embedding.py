"""embedding: the VJP against its twin, jnp.take and flax.linen.Embed; out-of-range ids; residuals; bad input."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import purebp
from purebp import reference
from purebp.testing import residual_bytes
from op_examples import check_first_order

IDS = [pytest.param((5,), id="1d"), pytest.param((2, 3), id="2d"), pytest.param((), id="scalar"),
       pytest.param((2, 2, 4), id="3d")]


@pytest.mark.parametrize("shape", IDS)
def test_vjp_matches_reference_and_flax(shape, dtype, rng):
    table = jnp.asarray(rng.standard_normal((9, 4)), dtype)
    ids = jnp.asarray(rng.integers(-9, 9, shape), jnp.int32)  # negative ids count from the end
    check_first_order(purebp.embedding, reference.embedding, ids, table)
    np.testing.assert_array_equal(purebp.embedding(ids, table), nn.Embed(9, 4).apply({"params": {"embedding": table}}, ids))


def test_repeated_ids_sum_their_cotangents_and_unpicked_rows_get_zero():
    table = jnp.zeros((4, 2))
    g = jnp.arange(6.0).reshape(3, 2)
    _, vjp = jax.vjp(purebp.embedding, jnp.array([1, 1, 3]), table)
    np.testing.assert_array_equal(vjp(g)[1], [[0, 0], [0 + 2, 1 + 3], [0, 0], [4, 5]])


def test_out_of_range_ids_give_nan_rows_and_no_cotangent():
    """As jnp.take (and flax.linen.Embed): a row of NaN forward, nothing added backward."""
    table = jnp.arange(8.0).reshape(4, 2)
    ids = jnp.array([1, 4, -5, -1])
    y, vjp = jax.vjp(purebp.embedding, ids, table)
    assert np.isnan(y[1:3]).all() and np.array_equal(y[jnp.array([0, 3])], table[jnp.array([1, 3])])
    np.testing.assert_array_equal(vjp(jnp.ones_like(y))[1], jax.vjp(lambda t: jnp.take(t, ids, axis=0), table)[1](
        jnp.ones_like(y))[0])


@pytest.mark.parametrize("rows, bytes_per_id", [(255, 1), (256, 2), (65535, 2), (65536, 4)])
def test_keeps_the_ids_alone_in_the_narrowest_type_that_holds_the_rows(rows, bytes_per_id):
    ids = jnp.zeros((8, 16), jnp.int32)
    assert residual_bytes(purebp.embedding, ids, jnp.zeros((rows, 3))) == ids.size * bytes_per_id
    assert residual_bytes(lambda t: jnp.take(t, ids, axis=0), jnp.zeros((rows, 3))) == ids.size * 4  # autodiff


def test_the_ids_get_no_cotangent():
    grads = jax.grad(lambda t, i: purebp.embedding(i, t).sum(), allow_int=True, argnums=(0, 1))(
        jnp.ones((3, 2)), jnp.array([0, 2]))
    assert grads[1].dtype == jax.dtypes.float0


@pytest.mark.parametrize("call, error, message", [
    pytest.param(lambda: purebp.embedding(jnp.array([0.0]), jnp.ones((3, 2))), TypeError,
                 "`ids` must have an integer dtype, got float32", id="float-ids"),
    pytest.param(lambda: purebp.embedding(jnp.array([0]), jnp.ones(3)), ValueError,
                 r"`table` must be a table \(V, D\) of V rows of D features, got shape \(3,\)", id="1d-table"),
    pytest.param(lambda: purebp.embedding(jnp.array([0]), jnp.ones((3, 2), jnp.int32)), TypeError,
                 "`table` must have a floating-point dtype", id="int-table"),
])
def test_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call()
