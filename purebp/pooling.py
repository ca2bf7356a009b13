r"""Pooling: max_pool and avg_pool, channels-last, 1 to 3 spatial dims.

Layout, stated once: an input is ``(N, *spatial, C)``, an output ``(N, *out_spatial, C)`` with
``out = (in + lo + hi - window) // stride + 1`` per spatial dim; windows never mix channels or
batch elements. ``stride=None`` means ``stride = window`` (non-overlapping windows).

The two pools share everything but their reduction: one validation (``_geometry``), one forward
(``lax.reduce_window``, the op flax uses, so values match flax bit for bit) and one backward,
``_unpool``, the transpose of "gather every window": it hands each window's cotangent to all of the
window's positions (average) or to the one position its saved argmax names (max), with no scatter.
Residuals: max_pool keeps each window's argmax as a small integer (int8 up to 127 positions);
avg_pool keeps nothing, its divisors being functions of static shapes.
Derivation: ``docs/derivations/pooling.md``.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from purebp import _static, _types


class _Geometry(NamedTuple):
    """Static description of a pooling: hashable, so it can be a ``nondiff_argnums`` argument."""

    window: tuple[int, ...]
    stride: tuple[int, ...]
    pads: tuple[tuple[int, int], ...]  # explicit (lo, hi) per spatial dim
    in_spatial: tuple[int, ...]

    @property
    def out_spatial(self) -> tuple[int, ...]:
        return tuple((n + lo + hi - w) // s + 1
                     for n, (lo, hi), w, s in zip(self.in_spatial, self.pads, self.window, self.stride))


def _geometry(x, window, stride, padding) -> _Geometry:
    """Validates a pool's arguments once and normalises them to explicit static tuples."""
    _static.check_floating(x, "x")
    n = _static.num_spatial_dims(x)
    window = _static.spatial_tuple(window, n, "window")
    stride = window if stride is None else _static.spatial_tuple(stride, n, "stride")
    in_spatial = tuple(jnp.shape(x)[1:-1])
    pads = _static.padding_pairs(_static.normalize_padding(padding, n), in_spatial, window, stride)
    _static.check_window_fits(in_spatial, pads, window, "window")
    return _Geometry(window, stride, pads, in_spatial)


def _reduce_window(x, geometry: _Geometry, init, op):
    """``op`` over every window of ``x`` padded with ``init``: the forward of both pools.

    ``init`` stays a Python scalar, as flax passes it, so lax recognises the monoid (-inf, max) or
    (0, add) and emits the specialised ``reduce_window_max`` / ``reduce_window_sum``.
    """
    return lax.reduce_window(x, init, op, (1, *geometry.window, 1),
                             (1, *geometry.stride, 1), ((0, 0), *geometry.pads, (0, 0)))


def max_pool(x, window, stride=None, padding="VALID"):
    r"""Max pooling: y[n, o, c] = max_k x̂[n, o·s + k, c], x̂ the input padded with −inf.

    Equals ``flax.linen.max_pool(x, window, strides=stride, padding=padding)`` (stride passed
    explicitly: flax's default is 1, ours is the window).

    Backward: x̄[p] = ∑_o ȳ[o] · [p = o·s + k*(o)], with k*(o) the *first* maximum of window o in
    row-major window order: ties (all-zero windows after a relu) give the whole cotangent to one
    position, exactly as ``jax.grad`` of ``lax.reduce_window`` (its ``select_and_scatter_add``)
    does. A window whose first maximum is padding (it holds only -inf) passes nothing back. NaN
    follows XLA's select rule too.

    Args:
      x: floating ``(N, *spatial, C)`` with 1, 2 or 3 spatial dims; with a tuple ``window``,
        ``(*batch, *spatial, C)`` with any number of batch dims, none included (as flax).
      window: window extent, an int or one per spatial dim, positive; a tuple fixes the spatial rank.
      stride: window step, an int or one per spatial dim, positive; None means ``window``.
      padding: ``"VALID"``, ``"SAME"`` (output ``ceil(in / stride)``), an int ``p`` (``(p, p)``
        on every spatial dim) or one ``(lo, hi)`` pair per spatial dim; padding is -inf.

    Returns:
      ``(N, *out_spatial, C)`` in ``x``'s dtype; a window of padding alone gives -inf.

    Raises:
      TypeError: if ``x`` is not floating.
      ValueError: for a bad rank, ``window``, ``stride`` or ``padding``, or a window larger than
        the padded input.

    >>> max_pool(jnp.array([[[1.0], [3.0], [2.0], [2.0]]]), 2).ravel().tolist()
    [3.0, 2.0]

    Derivation: docs/derivations/pooling.md#max-pooling.
    """
    return _over_batch_dims(x, window, lambda x: _max_pool(_geometry(x, window, stride, padding), x))


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _max_pool(geometry, x):
    return _reduce_window(x, geometry, -jnp.inf, lax.max)


def _max_pool_fwd(geometry, x):
    y, argmax = _max_and_argmax(x, geometry)
    return y, argmax  # one small integer per window: the index of its first maximum, nothing else


def _max_pool_bwd(geometry, argmax, g):  # (argmax, ct y) -> (ct x,)
    return (_unpool(g, geometry, argmax),)  # x̄[o s + k] += ȳ[o] · [k = argmax[o]]


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)
_max_pool = jax.jit(_max_pool, static_argnums=0)  # one program per call (purebp/__init__.py)


def avg_pool(x, window, stride=None, padding="VALID", count_include_pad=True):
    r"""Average pooling: y[n, o, c] = (1 / |W_o|) · ∑_k x̂[n, o·s + k, c], x̂ the input padded with 0.

    |W_o| is the window size, or with ``count_include_pad=False`` the number of the
    window's positions that are not padding. Equals ``flax.linen.avg_pool(x, window,
    strides=stride, padding=padding, count_include_pad=count_include_pad)``.

    Backward: x̄[p] = ∑_{o : p ∈ W_o} ȳ[o] / |W_o|, the transposed sum-pool of ȳ / |W|.

    Args:
      x: floating ``(N, *spatial, C)`` with 1, 2 or 3 spatial dims; with a tuple ``window``,
        ``(*batch, *spatial, C)`` with any number of batch dims, none included (as flax).
      window: window extent, an int or one per spatial dim, positive; a tuple fixes the spatial rank.
      stride: window step, an int or one per spatial dim, positive; None means ``window``.
      padding: as ``max_pool``'s; padding is 0.
      count_include_pad: whether padding counts in the divisor. Without it, a window of padding
        alone is 0 / 0 = NaN, as in flax.

    Returns:
      ``(N, *out_spatial, C)`` in ``x``'s dtype.

    Raises:
      TypeError: if ``x`` is not floating or ``count_include_pad`` is not a bool.
      ValueError: as ``max_pool``.

    >>> avg_pool(jnp.array([[[1.0], [3.0], [2.0], [2.0]]]), 2).ravel().tolist()
    [2.0, 2.0]

    Derivation: docs/derivations/pooling.md#average-pooling.
    """
    if not isinstance(count_include_pad, (bool, np.bool_)):
        raise TypeError(f"`count_include_pad` must be a bool, got {count_include_pad!r}.")
    return _over_batch_dims(
        x, window, lambda x: _avg_pool(_geometry(x, window, stride, padding), bool(count_include_pad), x))


def _over_batch_dims(x, window, pool):
    """``pool`` of an ``(N, *spatial, C)`` array, applied as flax pools: a tuple ``window`` gives the
    spatial rank, and ``x`` may have any number of leading batch dims (none included), merged into
    one ``N`` for the pool and split again after. An int window keeps the ``(N, *spatial, C)`` rule."""
    if not isinstance(window, Sequence):
        return pool(x)
    _static.check_floating(x, "x")
    rank = len(window)
    if not 1 <= rank <= 3 or jnp.ndim(x) < rank + 1:
        raise ValueError(f"`x` must be (*batch, *spatial, C) with as many spatial dims as `window` {window!r} "
                         f"has entries (1, 2 or 3), got shape {jnp.shape(x)}.")
    batch = jnp.shape(x)[:jnp.ndim(x) - rank - 1]
    if len(batch) == 1:
        return pool(x)
    y = pool(jnp.reshape(x, (math.prod(batch), *jnp.shape(x)[len(batch):])))
    return jnp.reshape(y, batch + y.shape[1:])


@partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _avg_pool(geometry, count_include_pad, x):
    return _avg_pool_fwd(geometry, count_include_pad, x)[0]


def _avg_pool_fwd(geometry, count_include_pad, x):
    y = _reduce_window(x, geometry, 0.0, lax.add) / _window_sizes(geometry, count_include_pad, x.dtype)
    return y, None  # divisors come from static shapes


def _avg_pool_bwd(geometry, count_include_pad, _, g):  # (nothing, ct y) -> (ct x,)
    g = g / _window_sizes(geometry, count_include_pad, g.dtype)
    return (_unpool(g, geometry),)  # x̄[o s + k] += ȳ[o] / |W_o| for every k: the transposed sum-pool


_avg_pool.defvjp(_avg_pool_fwd, _avg_pool_bwd)
_avg_pool = jax.jit(_avg_pool, static_argnums=(0, 1))  # one program per call (purebp/__init__.py)


def _window_sizes(geometry: _Geometry, count_include_pad: bool, dtype):
    """|W_o|: the window size, or (a static ``(1, *out, 1)`` array) its positions that are not padding."""
    if count_include_pad:
        return jnp.asarray(math.prod(geometry.window), dtype)
    sizes = np.ones((), np.int64)
    for n, (lo, _), w, s, o in zip(geometry.in_spatial, geometry.pads, geometry.window, geometry.stride,
                                   geometry.out_spatial):
        start = np.arange(o) * s  # window o covers padded positions [o s, o s + w); the input, [lo, lo + n)
        sizes = np.multiply.outer(sizes, np.clip(np.minimum(start + w, lo + n) - np.maximum(start, lo), 0, None))
    return jnp.asarray(sizes[None, ..., None], dtype)  # a box's count is the product of its dims' counts


@partial(jax.jit, static_argnums=(1,))  # one compiled unit: eager calls would dispatch each offset's ops
def _max_and_argmax(x, geometry: _Geometry):
    """Each window's max and the row-major index of its *first* maximum, in one pass over the offsets.

    The running choice moves to a later offset only when ``not (chosen >= candidate)``: XLA's
    ``select_and_scatter`` rule, so ties keep the earliest position (and NaN behaves as in XLA).
    Padding is -inf and takes part like any position. The value is the chosen one (NaN where the
    window holds a NaN, as ``lax.max``), so differentiating this function again (grad of grad)
    routes through the same first maximum.
    """
    padded = lax.pad(x, jnp.array(-jnp.inf, x.dtype),
                     ((0, 0, 0), *((lo, hi, 0) for lo, hi in geometry.pads), (0, 0, 0)))
    index_dtype = _index_dtype(math.prod(geometry.window))
    chosen = argmax = has_nan = None
    for k, offset in enumerate(itertools.product(*map(range, geometry.window))):  # row-major order
        candidate = _window_slice(padded, offset, geometry)  # x̂[o s + offset] for every window o
        if chosen is None:
            chosen, argmax, has_nan = candidate, jnp.zeros(candidate.shape, index_dtype), jnp.isnan(candidate)
            continue
        later = ~(chosen >= candidate)  # strictly larger (or unordered): ties stay with the first
        chosen = jnp.where(later, candidate, chosen)
        argmax = jnp.where(later, jnp.asarray(k, index_dtype), argmax)
        has_nan = has_nan | jnp.isnan(candidate)
    return jnp.where(has_nan, jnp.asarray(jnp.nan, x.dtype), chosen), argmax


def _window_slice(padded, offset, geometry: _Geometry):
    """``padded[:, o s + offset, :]`` for every output position ``o``: one strided slice."""
    start = (0, *offset, 0)
    limit = (padded.shape[0], *(k + (o - 1) * s + 1 for k, o, s in zip(offset, geometry.out_spatial,
                                                                       geometry.stride)), padded.shape[-1])
    return lax.slice(padded, start, limit, (1, *geometry.stride, 1))


def _index_dtype(num_positions: int):
    """The smallest signed integer type that holds every window index (and -1)."""
    return next(t for t in (jnp.int8, jnp.int16, jnp.int32) if num_positions <= jnp.iinfo(t).max)


@partial(jax.jit, static_argnums=(1,))
def _unpool(g, geometry: _Geometry, argmax=None):
    r"""The transpose of gathering every window: :math:`\bar x[o s + k - lo] \mathrel{+}= \bar y[o]\, m[o, k]`.

    :math:`m = 1` for every window offset ``k`` (avg_pool) or :math:`[k = \text{argmax}[o]]`
    (max_pool). Written without a scatter, in three steps:

    1. The padded input splits into the ``prod(stride)`` phases :math:`r` of the stride lattice,
       positions :math:`c s + r`. Offset :math:`k = q s + r` of window :math:`o` lands on phase
       :math:`r` of cell :math:`c = o + q`; so each phase is a sum over the ``ceil(window / stride)``
       shifts :math:`q` of :math:`\bar y[c - q]` masked by :math:`m`. Non-overlapping windows have
       one shift: a broadcast compare of ``argmax`` against the offsets.
    2. The phases, stacked on a trailing axis, interleave into the padded input by one reshape and
       transpose: ``(N, *cells, C, *stride) -> (N, *(cells * stride), C)``.
    3. One ``lax.pad`` with negative low padding crops the padding (and zero-fills any remainder
       no window reached).
    """
    n = len(geometry.window)
    shifts = tuple(-(-w // s) for w, s in zip(geometry.window, geometry.stride))  # ceil(w / s)
    cells = tuple(o + q - 1 for o, q in zip(geometry.out_spatial, shifts))
    zero = jnp.zeros((), g.dtype)
    halo = ((0, 0, 0), *((q - 1, q - 1, 0) for q in shifts), (0, 0, 0))  # room to shift by 0 … q - 1
    g = lax.pad(g, zero, halo)
    if argmax is not None:
        argmax = lax.pad(argmax, jnp.asarray(-1, argmax.dtype), halo)  # -1 matches no offset
    phases = list(itertools.product(*map(range, geometry.stride)))
    total = None
    for shift in itertools.product(*map(range, shifts)):
        offsets = np.array([_flat_offset([q * s + r for q, s, r in zip(shift, geometry.stride, phase)],
                                         geometry.window) for phase in phases])  # k = q s + r, or -1
        start = (0, *(q_max - 1 - q for q, q_max in zip(shift, shifts)), 0)
        limit = (g.shape[0], *(b + c for b, c in zip(start[1:], cells)), g.shape[-1])
        shifted = lax.slice(g, start, limit)[..., None]  # ȳ[c − q]
        if argmax is None:
            term = jnp.where(offsets >= 0, shifted, zero)
        else:
            term = jnp.where(lax.slice(argmax, start, limit)[..., None] == offsets.astype(argmax.dtype),
                             shifted, zero)  # ȳ[c − q] · [argmax[c − q] = q s + r]
        total = term if total is None else total + term
    # (N, *cells, C, prod(stride)) -> (N, cell_1, r_1, ..., cell_n, r_n, C) -> (N, *(cells * stride), C),
    # the batch and channel dims split over devices as ȳ's (Explicit axes ask a reshape for it)
    batch, channel = _types.spec(g)[0], _types.spec(g)[-1]
    total = jnp.reshape(total, total.shape[:-1] + geometry.stride,
                        out_sharding=_types.named(g, batch, *(None,) * n, channel))
    total = total.transpose(0, *itertools.chain(*((1 + i, n + 2 + i) for i in range(n))), n + 1)
    total = jnp.reshape(total, (total.shape[0], *(c * s for c, s in zip(cells, geometry.stride)), total.shape[-1]),
                        out_sharding=_types.named(g, *_types.spec(g)))
    crop = ((0, 0, 0), *((-lo, size + lo - c * s, 0) for size, (lo, _), c, s
                         in zip(geometry.in_spatial, geometry.pads, cells, geometry.stride)), (0, 0, 0))
    return lax.pad(total, zero, crop)


def _flat_offset(offset, window) -> int:
    """Row-major index of a window offset, or -1 if it falls outside the window."""
    if any(k >= w for k, w in zip(offset, window)):
        return -1
    return int(np.ravel_multi_index(tuple(offset), tuple(window)))
