r"""Attention: ``dot_product_attention``, whose forward and backward run block by block (FlashAttention-2).

Layout as ``jax.nn.dot_product_attention``'s: query ``(B, T, N, H)``, key and value ``(B, S, K, H)``
with ``N`` a multiple of ``K`` (grouped-query attention: each key/value head serves ``N // K`` query
heads), or the same without ``B``; ``bias`` and ``mask`` broadcast against ``(B, N, T, S)``.

The forward pass takes the softmax online over blocks of keys: for each block of queries it keeps
the running row maximum m, the running sum l of e^(s − m) and the running output, rescaled by
e^(m_old − m_new) as m grows, and ends with o = acc / l and the log-sum-exp L = m + log l. The
backward recomputes each block's probabilities P = e^(s − L) from the saved L, so what it keeps is
q, k, v, o (in float32 for bfloat16 and float16 inputs) and one float32 L per (batch, head, query row): no T×S array, for the forward or the
backward, is ever alive (autodiff of the plain softmax(QKᵀ)V keeps two). With ``is_causal`` the blocks
above the diagonal, whose every entry is masked, are skipped (``lax.cond``): half the FLOPs.
Derivation: ``docs/derivations/attention.md``.
"""
from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from purebp import _static, _types

# jax.nn's masked logit: finite, so that a fully masked row's softmax is uniform (its output the mean of v)
MASKED = -0.7 * float(np.finfo(np.float32).max)
DEFAULT_BLOCK = 512  # queries and keys per block; see _block_size


def dot_product_attention(query, key, value, bias=None, mask=None, *, scale=None, is_causal: bool = False,
                          key_value_seq_lengths=None, query_block: int | None = None, key_block: int | None = None):
    r"""Scaled dot-product attention, softmax(s·QKᵀ + bias, masked)·V, as ``jax.nn.dot_product_attention``.

    Backward: FlashAttention-2's, with P = e^(S − L) recomputed per block from the saved
    log-sum-exp L and D = rowsum(dO ∘ O): dV = Pᵀ·dO, dS = P ∘ (dO·Vᵀ − D), dQ = s·dS·K,
    dK = s·dSᵀ·Q, d bias = dS (summed over its broadcast dims). Masked entries get no cotangent; a
    fully masked row's output is the mean of the values, as jax.nn's.

    Args:
      query: ``(B, T, N, H)`` or ``(T, N, H)``, floating.
      key: ``(B, S, K, H)`` or ``(S, K, H)``, with ``N % K == 0``, in ``query``'s dtype.
      value: the shape and dtype of ``key``.
      bias: optional floating array broadcastable to ``(B, N, T, S)`` (leading dims may be
        left out), added to the scaled logits.
      mask: optional boolean array broadcastable to ``(B, N, T, S)``: False masks an entry out.
      scale: the logits' scale s, a real number; None for 1/√H.
      is_causal: query t attends only to keys s ≤ t.
      key_value_seq_lengths: optional int32 ``(B,)``: keys at and past each length are masked out.
      query_block, key_block: the block sizes (positive ints); None for ``min(T, 512)`` and
        ``min(S, 512)``. A sequence that the block does not divide is padded to a multiple.

    Returns:
      An array of ``query``'s shape and dtype.

    Raises:
      TypeError: if the arrays' dtypes are not floating or differ, ``mask`` is not boolean,
        ``key_value_seq_lengths`` not integer, or ``is_causal`` not a bool.
      ValueError: for shapes that do not fit together (``N % K``, the head size, the batch),
        ``bias``/``mask`` that do not broadcast to ``(B, N, T, S)``, or block sizes that are not
        positive ints.

    >>> q = k = v = jnp.ones((1, 4, 2, 8))
    >>> dot_product_attention(q, k, v, is_causal=True).shape
    (1, 4, 2, 8)

    Derivation: docs/derivations/attention.md.
    """
    (query, key, value, bias, mask, lengths), batched = _checked(query, key, value, bias, mask,
                                                                 key_value_seq_lengths, is_causal)
    t, h, s = query.shape[1], query.shape[3], key.shape[1]
    scale = 1 / math.sqrt(h) if scale is None else _static.finite_real(scale, "scale")
    blocks = (_block_size(query_block, t, "query_block"), _block_size(key_block, s, "key_block"))
    out = _attention(blocks, scale, is_causal, _types.of(bias), query, key, value, bias, mask, lengths)
    return out if batched else out[0]


def _checked(query, key, value, bias, mask, lengths, is_causal):
    """The arrays with a batch dim (added where left out), bias and mask as 4-d, after every check."""
    for a, name in ((query, "query"), (key, "key"), (value, "value")):
        _static.check_floating(a, name)
        _static.check_ndim(a, name, "(B, T, N, H) or (T, N, H)" if name == "query" else "(B, S, K, H) or (S, K, H)",
                           (3, 4))
    _static.check_dtype_of(key, "key", query, "query")
    _static.check_dtype_of(value, "value", query, "query")
    _static.check_bool(is_causal, "is_causal")
    batched = query.ndim == 4
    if key.ndim != query.ndim or value.shape != key.shape:
        raise ValueError(f"`key` and `value` must have one shape, with `query`'s rank ({query.ndim}), got "
                         f"{key.shape} and {value.shape}.")
    query, key, value = (a if batched else a[None] for a in (query, key, value))
    (b, t, n, h), (bk, s, k, hk) = query.shape, key.shape
    if bk != b or hk != h or n % k:
        raise ValueError(f"`query` {query.shape} and `key` {key.shape} must share the batch and head size, and the "
                         f"query heads ({n}) must be a multiple of the key/value heads ({k}).")
    full = (b, n, t, s)
    bias = None if bias is None else _broadcastable(bias, "bias", full, floating=True)
    if bias is not None:
        _static.check_dtype_of(bias, "bias", query, "query")
    mask = None if mask is None else _broadcastable(mask, "mask", full, floating=False)
    if lengths is not None:
        _static.check_integer(lengths, "key_value_seq_lengths")
        if jnp.shape(lengths) != (b,):
            raise ValueError(f"`key_value_seq_lengths` must have shape ({b},), one length per batch entry, got "
                             f"{jnp.shape(lengths)}.")
        lengths = jnp.asarray(lengths, jnp.int32)
    return (query, key, value, bias, mask, lengths), batched


def _broadcastable(a, name, full, *, floating):
    """``a`` as 4-d (leading dims added), refused unless each dim is 1 or ``full``'s, with the right dtype."""
    if floating:
        _static.check_floating(a, name)
    elif jnp.result_type(a) != jnp.bool_:
        raise TypeError(f"`{name}` must be boolean (True keeps an entry), got {jnp.result_type(a)}.")
    a = jnp.asarray(a)
    a = a.reshape((1,) * (4 - a.ndim) + a.shape) if a.ndim <= 4 else a
    if a.ndim != 4 or any(d not in (1, f) for d, f in zip(a.shape, full)):
        raise ValueError(f"`{name}` must broadcast to (B, N, T, S) = {full}, each dim 1 or that size, got "
                         f"{jnp.shape(a)}.")
    return a


def _block_size(block, length, name) -> int:
    """The block along a sequence of ``length``: ``block``, or min(length, DEFAULT_BLOCK)."""
    return min(length, DEFAULT_BLOCK) if block is None else _static.positive_int(block, name)


# --- the blocks ------------------------------------------------------------------------------------
#
# Inside, the heads are grouped: q (B, T, K, G, H) with G = N // K query heads per key/value head, k and
# v (B, S, K, H); bias and mask (B|1, K|1, G|1, T|1, S|1). Sequences are padded to whole blocks: padded
# keys are masked out, padded queries dropped at the end.


def _grouped(a, k):
    """A 4-d (B|1, N|1, T|1, S|1) bias or mask as (B|1, K|1, G|1, T|1, S|1)."""
    if a is None:
        return None
    b, n, t, s = a.shape
    return a.reshape(b, 1, 1, t, s) if n == 1 else a.reshape(b, k, n // k, t, s)


def _padded(a, axis, size):
    """``a`` padded with zeros (False) along ``axis`` to ``size``; None and broadcast dims as they are."""
    if a is None or a.shape[axis] in (1, size):
        return a
    return jnp.pad(a, [(0, size - a.shape[axis]) if d == axis else (0, 0) for d in range(a.ndim)])


def _block(a, axis, start, size):
    """``a``'s block along ``axis`` (a broadcast dim of 1 stays whole)."""
    return a if a is None or a.shape[axis] == 1 else lax.dynamic_slice_in_dim(a, start, size, axis)


def _logits(scale, q, k, bias, mask, keep):
    """One block's masked logits (B, K, G, bq, bk), in float32 or wider: s·qkᵀ + bias where kept, MASKED elsewhere."""
    wide = _static.wide_dtype(q.dtype)
    logits = jnp.einsum("btkgh,bskh->bkgts", q, k, preferred_element_type=wide) * scale
    if bias is not None:
        logits = logits + bias.astype(wide)
    if mask is not None:
        keep = keep & mask
    return jnp.where(keep, logits, MASKED)


def _kept(is_causal, lengths, q_start, bq, k_start, bk, s):
    """(B|1, 1, 1, bq|1, bk): the entries neither causal masking, the lengths nor the padding mask out."""
    keys = k_start + jnp.arange(bk)
    keep = (keys < s)[None, None, None, None, :]
    if is_causal:
        keep = keep & (keys[None, :] <= (q_start + jnp.arange(bq))[:, None])[None, None, None]
    if lengths is not None:
        keep = keep & (keys[None, :] < lengths[:, None])[:, None, None, None, :]
    return keep


def _if_needed(is_causal, q_start, bq, k_start, update, carry):
    """``update(carry)``, but under causal masking only for a block that holds a kept entry (its first
    key at or before its last query): ``lax.cond`` runs one branch, so the others cost nothing."""
    if not is_causal:
        return update(carry)
    return lax.cond(k_start <= q_start + bq - 1, update, lambda carry: carry, carry)


def _is_empty(lse):
    """The rows whose every logit is masked: L = MASKED + log(count), which is MASKED in float32."""
    return lse < MASKED / 2


@partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _attention(blocks, scale, is_causal, bias_type, query, key, value, bias, mask, lengths):
    return _attention_fwd(blocks, scale, is_causal, bias_type, query, key, value, bias, mask, lengths)[0]


def _attention_fwd(blocks, scale, is_causal, bias_type, query, key, value, bias, mask, lengths):
    wide_out, lse = _forward(blocks, scale, is_causal, query, key, value, bias, mask, lengths)
    out = wide_out.astype(query.dtype)
    # O in float32 for bfloat16/float16 (the same array otherwise): D = rowsum(dO ∘ O) is subtracted from
    # dP = dO·Vᵀ, and an O rounded to 8 bits would pass its rounding on where the two cancel
    return out, (query, key, value, bias, mask, lengths, out if wide_out.dtype == out.dtype else wide_out, lse)


def _forward(blocks, scale, is_causal, query, key, value, bias, mask, lengths):
    """(o, L): the output in query's layout, and L (B, K, G, T), both in float32 or wider."""
    (b, t, n, h), (_, s, kh, _) = query.shape, key.shape
    (bq, bk), g, wide = blocks, n // kh, _static.wide_dtype(query.dtype)
    tp, sp = -(-t // bq) * bq, -(-s // bk) * bk
    q = _padded(query.reshape(b, t, kh, g, h), 1, tp)
    k, v = _padded(key, 1, sp), _padded(value, 1, sp)
    bias, mask = (_padded(_padded(_grouped(a, kh), 3, tp), 4, sp) for a in (bias, mask))

    def query_block(i):
        q_start = i * bq
        q_i = lax.dynamic_slice_in_dim(q, q_start, bq, 1)
        bias_i, mask_i = _block(bias, 3, q_start, bq), _block(mask, 3, q_start, bq)

        def key_step(carry, j):
            def update(carry):
                m, l, acc = carry
                k_start = j * bk
                logits = _logits(scale, q_i, _block(k, 1, k_start, bk), _block(bias_i, 4, k_start, bk),
                                 _block(mask_i, 4, k_start, bk), _kept(is_causal, lengths, q_start, bq, k_start, bk, s))
                m_new = jnp.maximum(m, logits.max(-1))
                p = jnp.exp(logits - m_new[..., None])
                rescale = jnp.exp(m - m_new)  # the running sums' maximum grew: e^(m_old − m_new)
                pv = jnp.einsum("bkgts,bskh->bkgth", p, _block(v, 1, k_start, bk).astype(wide))
                return m_new, l * rescale + p.sum(-1), acc * rescale[..., None] + pv

            return _if_needed(is_causal, q_start, bq, j * bk, update, carry), None

        init = (_types.full_beside(query, (b, kh, g, bq), -jnp.inf, wide), _types.full_beside(query, (b, kh, g, bq), 0, wide),
                _types.full_beside(query, (b, kh, g, bq, h), 0, wide))
        m, l, acc = lax.scan(key_step, init, jnp.arange(sp // bk))[0]
        return acc / l[..., None], m + jnp.log(l)

    out, lse = lax.map(query_block, jnp.arange(tp // bq))  # (nq, B, K, G, bq, H), (nq, B, K, G, bq)
    out = jnp.moveaxis(out, 0, 3).reshape(b, kh, g, tp, h)[:, :, :, :t]
    lse = jnp.moveaxis(lse, 0, 3).reshape(b, kh, g, tp)[..., :t]
    out, lse = _fully_masked_rows(out, lse, value, s)
    return jnp.transpose(out, (0, 3, 1, 2, 4)).reshape(b, t, n, h), lse


def _fully_masked_rows(out, lse, value, s):
    """A row whose every logit is masked has jax.nn's uniform softmax over all S keys: the mean of v
    (the blocks skipped above the diagonal, if any, left out of the online sums)."""
    empty = _is_empty(lse)
    mean_v = jnp.mean(value.astype(out.dtype), 1)[:, :, None, None, :]  # (B, K, 1, 1, H)
    return jnp.where(empty[..., None], mean_v, out), jnp.where(empty, MASKED, lse)


def _attention_bwd(blocks, scale, is_causal, bias_type, res, g):
    # ((q, k, v, bias, mask, lengths, o, L), ct o) -> (ct q, ct k, ct v, ct bias, -, -)
    query, key, value, bias, mask, lengths, out, lse = res
    (b, t, n, h), (_, s, kh, _) = query.shape, key.shape
    (bq, bk), gq, wide = blocks, n // kh, _static.wide_dtype(query.dtype)
    tp, sp = -(-t // bq) * bq, -(-s // bk) * bk
    grouped = lambda a: _padded(a.reshape(b, t, kh, gq, h), 1, tp)
    q, do = grouped(query), grouped(g.astype(wide))
    k, v = _padded(key, 1, sp), _padded(value, 1, sp)
    # D = rowsum(dO ∘ O), as (B, K, G, T); fully masked rows take no part in the blocks' sums
    d = jnp.einsum("btkgh,btkgh->bkgt", do, grouped(out.astype(wide)))
    empty = _is_empty(lse)
    lse = _padded(jnp.where(empty, jnp.inf, lse), 3, tp)  # e^(s − ∞) = 0: their P is added apart
    d = _padded(d, 3, tp)
    bias_g, mask_g = (_padded(_padded(_grouped(a, kh), 3, tp), 4, sp) for a in (bias, mask))

    def key_block(carry, j):
        dq, dbias = carry
        k_start = j * bk
        k_j, v_j = _block(k, 1, k_start, bk), _block(v, 1, k_start, bk)
        bias_j, mask_j = _block(bias_g, 4, k_start, bk), _block(mask_g, 4, k_start, bk)

        def query_step(carry, i):
            def update(carry):
                dq, dk, dv, dbias = carry
                q_start = i * bq
                q_i, do_i = _block(q, 1, q_start, bq), _block(do, 1, q_start, bq)
                logits = _logits(scale, q_i, k_j, _block(bias_j, 3, q_start, bq), _block(mask_j, 3, q_start, bq),
                                 _kept(is_causal, lengths, q_start, bq, k_start, bk, s))
                p = jnp.exp(logits - _block(lse, 3, q_start, bq)[..., None])  # P = e^(S − L)
                dv = dv + jnp.einsum("bkgts,btkgh->bskh", p, do_i)  # dV = Pᵀ dO
                dp = jnp.einsum("btkgh,bskh->bkgts", do_i, v_j.astype(wide))  # dP = dO Vᵀ
                ds = p * (dp - _block(d, 3, q_start, bq)[..., None])  # dS = P ∘ (dP − D): 0 where masked
                dq_i = scale * jnp.einsum("bkgts,bskh->btkgh", ds, k_j.astype(wide))
                dq = lax.dynamic_update_slice_in_dim(dq, _block(dq, 1, q_start, bq) + dq_i, q_start, 1)
                dk = dk + scale * jnp.einsum("bkgts,btkgh->bskh", ds, q_i.astype(wide))
                if dbias is not None:
                    dbias = _add_bias_block(dbias, ds, q_start, k_start)
                return dq, dk, dv, dbias

            return _if_needed(is_causal, i * bq, bq, k_start, update, carry), None

        zeros = _types.full_beside(key, (b, bk, kh, h), 0, wide)
        dq, dk, dv, dbias = lax.scan(query_step, (dq, zeros, zeros, dbias), jnp.arange(tp // bq))[0]
        return (dq, dbias), (dk, dv)

    dbias = None if bias is None else _types.full_beside(bias, bias_g.shape, 0, wide, query, key, value)
    (dq, dbias), (dk, dv) = lax.scan(key_block, (_types.full_beside(query, q.shape, 0, wide), dbias),
                                     jnp.arange(sp // bk))
    unblock = lambda a: jnp.moveaxis(a, 0, 1).reshape(b, sp, kh, h)[:, :s]
    dk, dv = unblock(dk), unblock(dv)
    # the fully masked rows: P = 1/S on every key, so dV gains Σ_rows dO / S; no cotangent reaches q, k or bias
    dv = dv + jnp.einsum("bkgt,btkgh->bkh", empty.astype(wide), do[:, :t])[:, None] / s
    dq = dq[:, :t].reshape(b, t, n, h)
    dbias = None if bias is None else dbias[:, :, :, :t, :s].reshape(bias.shape)
    return (_types.like(dq, _types.of(query)), _types.like(dk, _types.of(key)), _types.like(dv, _types.of(value)),
            None if bias is None else _types.like(dbias, bias_type), None, None)


def _add_bias_block(dbias, ds, q_start, k_start):
    """``ds`` (B, K, G, bq, bk) summed over the dims where the bias broadcasts, onto its block of ``dbias``."""
    block = ds.sum(tuple(d for d in range(5) if dbias.shape[d] == 1 and ds.shape[d] != 1), keepdims=True)
    starts = (0, 0, 0, q_start if dbias.shape[3] != 1 else 0, k_start if dbias.shape[4] != 1 else 0)
    return lax.dynamic_update_slice(dbias, lax.dynamic_slice(dbias, starts, block.shape) + block, starts)


_attention.defvjp(_attention_fwd, _attention_bwd)
_attention = jax.jit(_attention, static_argnums=(0, 1, 2, 3))  # one program per call (purebp/__init__.py)
