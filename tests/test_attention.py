"""dot_product_attention: the blockwise VJP against its twin and jax.nn's, masks, residuals, bad input."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import purebp
from purebp import reference
from purebp.testing import check_vjp, residual_bytes
from op_examples import check_first_order

B, T, S, H = 2, 7, 9, 3


def qkv(rng, dtype, heads=4, kv_heads=2, batch=(B,), t=T, s=S):
    draw = lambda *shape: jnp.asarray(rng.standard_normal(batch + shape), dtype)
    return draw(t, heads, H), draw(s, kv_heads, H), draw(s, kv_heads, H)


def fully_masked_mask(rng, heads=4):
    mask = rng.uniform(size=(1, heads, T, S)) > 0.3
    mask[0, 1, 2] = False  # one query row sees no key: its output is the mean of the values
    return jnp.asarray(mask)


# (name, keyword arguments, the bias's shape or None); blocks 3×4 divide neither T nor S
CASES = [
    pytest.param({}, None, id="plain"),
    pytest.param({"is_causal": True}, None, id="causal"),
    pytest.param({}, (B, 1, T, S), id="bias-per-example"),
    pytest.param({}, (4, T, S), id="bias-per-head-no-batch-dim"),
    pytest.param({"scale": 0.3}, (1, 1, 1, S), id="bias-per-key-scale"),
    pytest.param({"mask": "fully-masked-row"}, None, id="mask"),
    pytest.param({"key_value_seq_lengths": np.array([S, 0], np.int32), "is_causal": True}, None,
                 id="lengths-causal-empty-example"),
    pytest.param({"mask": "fully-masked-row", "is_causal": True, "key_value_seq_lengths": np.array([S, 4], np.int32)},
                 (B, 4, T, S), id="everything"),
]


def options(rng, kwargs):
    return {k: (fully_masked_mask(rng) if isinstance(v, str) else v) for k, v in kwargs.items()}


# blocks 3×4 over every case, and one block (the whole sequence) over the plain one
VJP_CASES = [pytest.param(*case.values, (3, 4), id=case.id) for case in CASES] + [
    pytest.param(*CASES[0].values, (None, None), id="plain-one-block")]


@pytest.mark.parametrize("kwargs, bias_shape, blocks", VJP_CASES)
def test_vjp_matches_reference(kwargs, bias_shape, blocks, dtype, rng):
    q, k, v = qkv(rng, dtype)
    kwargs = options(rng, kwargs)
    ours = lambda *a: purebp.dot_product_attention(*a, **kwargs, query_block=blocks[0], key_block=blocks[1])
    twin = lambda *a: reference.dot_product_attention(*a, **kwargs)
    args = (q, k, v) if bias_shape is None else (q, k, v, jnp.asarray(rng.standard_normal(bias_shape), dtype))
    check_first_order(ours, twin, *args)


# the twin holds every case; jax.nn, with the batch dim, the bias and mask shapes and the empty rows, and
# without it, a causal case and one with a bias per head
JAX_NN_CASES = [pytest.param(*CASES[i].values, True, id=CASES[i].id) for i in (2, 5, 6, 7)] + [
    pytest.param(*CASES[i].values, False, id=f"{CASES[i].id}-no-batch") for i in (1, 3)]


@pytest.mark.parametrize("kwargs, bias_shape, batched", JAX_NN_CASES)
def test_equals_jax_nn_in_value_and_gradient(kwargs, bias_shape, batched, rng):
    q, k, v = qkv(rng, np.float32, batch=(B,) if batched else ())
    kwargs = options(rng, kwargs)
    bias = None if bias_shape is None else jnp.asarray(rng.standard_normal(bias_shape), np.float32)
    cotangent = jnp.asarray(rng.standard_normal(q.shape), np.float32)

    def value_and_grads(f):
        loss = lambda q, k, v, bias: jnp.sum(f(q, k, v, bias, **kwargs) * cotangent)
        return jax.value_and_grad(loss, (0, 1, 2) if bias is None else (0, 1, 2, 3))(q, k, v, bias)

    ours = value_and_grads(lambda *a, **o: purebp.dot_product_attention(*a, **o, query_block=3, key_block=4))
    theirs = value_and_grads(lambda *a, **o: jax.nn.dot_product_attention(*a, **o, implementation="xla"))
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6), ours, theirs)


@pytest.mark.slow  # the op table's check at check_vjp's defaults, with the causal lax.conds differentiated twice
def test_causal_attention_at_check_vjps_defaults(x64, rng):
    q, k, v = qkv(rng, np.float64)
    mask = fully_masked_mask(rng)
    check_vjp(lambda *a: purebp.dot_product_attention(*a, mask=mask, is_causal=True, query_block=3, key_block=4),
              lambda *a: reference.dot_product_attention(*a, mask=mask, is_causal=True), q, k, v)


def test_a_fully_masked_row_is_the_mean_of_the_values_and_passes_no_cotangent_to_q_or_k(rng):
    q, k, v = qkv(rng, np.float32)
    mask = jnp.ones((1, 1, T, S), bool).at[0, 0, 5].set(False)  # row 5 of every head sees nothing
    out, vjp = jax.vjp(lambda q, k, v: purebp.dot_product_attention(q, k, v, mask=mask, is_causal=True, query_block=2,
                                                                    key_block=2), q, k, v)
    np.testing.assert_allclose(out[:, 5], jnp.repeat(v.mean(1), 2, axis=1), rtol=1e-6)  # every key, skipped or not
    dq, dk, dv = vjp(jnp.zeros_like(out).at[:, 5].set(1.0))
    np.testing.assert_array_equal(dq, 0)
    np.testing.assert_array_equal(dk, 0)
    np.testing.assert_allclose(dv, jnp.full_like(dv, 2 / S), rtol=1e-6)  # two query heads per key/value head


def test_residuals_are_q_k_v_the_output_and_one_float32_log_sum_exp_per_row():
    q, k, v = (jnp.zeros((2, 256, 4, 16)) for _ in range(3))
    expected = 4 * q.nbytes + 2 * 4 * 256 * 4  # q, k, v, o and L per (batch, head, row)
    assert residual_bytes(lambda q, k, v: purebp.dot_product_attention(q, k, v, is_causal=True), q, k, v) == expected
    twin = residual_bytes(lambda q, k, v: reference.dot_product_attention(q, k, v, is_causal=True), q, k, v)
    assert expected <= 0.12 * twin  # autodiff keeps the 256×256 probabilities, twice over
    half = q.astype(jnp.bfloat16)  # bfloat16 inputs: the output and the log-sum-exp in float32
    assert residual_bytes(purebp.dot_product_attention, half, half, half) == 3 * half.nbytes + q.nbytes + 2 * 4 * 256 * 4


def test_causal_attention_skips_the_blocks_above_the_diagonal():
    """A ``lax.cond`` per block, in the forward and the backward: only under causal masking."""
    q = jnp.zeros((1, 8, 1, 4))
    jaxpr = lambda causal: str(jax.make_jaxpr(jax.grad(lambda q: purebp.dot_product_attention(
        q, q, q, is_causal=causal, query_block=2, key_block=2).sum()))(q))
    assert jaxpr(True).count("cond[") == 2 and "cond[" not in jaxpr(False)


def test_bfloat16_accumulates_in_float32(rng):
    q, k, v = qkv(rng, np.float32, t=64, s=64)
    exact = reference.dot_product_attention(q, k, v, is_causal=True)
    half = [a.astype(jnp.bfloat16) for a in (q, k, v)]
    ours = purebp.dot_product_attention(*half, is_causal=True, query_block=16, key_block=16)
    assert ours.dtype == jnp.bfloat16
    assert np.max(np.abs(np.asarray(ours, np.float32) - exact)) <= 2 * np.max(np.abs(
        np.asarray(jax.nn.dot_product_attention(*half, is_causal=True), np.float32) - exact))


@pytest.mark.parametrize("call, error, message", [
    pytest.param(lambda q, k, v: purebp.dot_product_attention(q, k[:, :5], v), ValueError,
                 r"`key` and `value` must have one shape", id="key-value-shapes"),
    pytest.param(lambda q, k, v: purebp.dot_product_attention(q[..., :3, :], k, v), ValueError,
                 r"the query heads \(3\) must be a multiple of the key/value heads \(2\)", id="heads"),
    pytest.param(lambda q, k, v: purebp.dot_product_attention(q, k.astype(jnp.bfloat16), v), TypeError,
                 r"`key` must have the dtype of `query` \(float32\), got bfloat16", id="dtype"),
    pytest.param(lambda q, k, v: purebp.dot_product_attention(q, k, v, mask=jnp.ones((1, 4, T, S))), TypeError,
                 r"`mask` must be boolean \(True keeps an entry\), got float32", id="mask-dtype"),
    pytest.param(lambda q, k, v: purebp.dot_product_attention(q, k, v, bias=jnp.ones((3, 4, T, S))), ValueError,
                 r"`bias` must broadcast to \(B, N, T, S\) = \(2, 4, 7, 9\), each dim 1 or that size, got \(3, 4, 7, 9\)",
                 id="bias-shape"),
    pytest.param(lambda q, k, v: purebp.dot_product_attention(q, k, v, key_value_seq_lengths=jnp.ones(3, jnp.int32)),
                 ValueError, r"`key_value_seq_lengths` must have shape \(2,\)", id="lengths"),
    pytest.param(lambda q, k, v: purebp.dot_product_attention(q, k, v, query_block=0), ValueError,
                 "`query_block` must be a positive int, got 0", id="block"),
    pytest.param(lambda q, k, v: purebp.dot_product_attention(q[0, 0], k, v), ValueError,
                 r"`query` must be \(B, T, N, H\) or \(T, N, H\)", id="rank"),
])
def test_bad_input(call, error, message, rng):
    with pytest.raises(error, match=message):
        call(*qkv(rng, np.float32))
