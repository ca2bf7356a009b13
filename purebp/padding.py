r"""Zero padding of the spatial dims, channels-last.

Layout, stated once: an input is ``(N, *spatial, C)`` with 1, 2 or 3 spatial dims; the batch and
channel dims are never padded. Padding is linear, so its VJP is its adjoint: the slice that cuts
the padding back off. It needs no residual: the slice bounds are static.
Derivation: ``docs/derivations/padding.md``.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from purebp import _static


def zero_pad(x, padding):
    r"""Zero padding of the spatial dims: y[n, i, c] = x[n, i − lo, c] for lo ≤ i < lo + in, else 0.

    ``lo`` zeros go before and ``hi`` after each spatial dim (the formula holds per spatial dim).
    Equals ``jnp.pad(x, ((0, 0), *pairs, (0, 0)))``.

    Backward: x̄ = ȳ[:, lo : lo + in, :], the slice that drops the padding.

    Args:
      x: floating ``(N, *spatial, C)`` with 1, 2 or 3 spatial dims.
      padding: an int ``p`` (``(p, p)`` on every spatial dim) or one ``(lo, hi)`` pair of
        non-negative ints per spatial dim (for 1-D input, ``((lo, hi),)``). "SAME" and "VALID" have
        no meaning without a window and are rejected.

    Returns:
      ``(N, *(in + lo + hi), C)`` in ``x``'s dtype.

    Raises:
      TypeError: if ``x`` is not floating.
      ValueError: for a bad rank or a bad ``padding`` (a string, negative, the wrong count).

    >>> zero_pad(jnp.ones((1, 2, 3)), ((1, 2),)).shape
    (1, 5, 3)

    Derivation: docs/derivations/padding.md.
    """
    _static.check_floating(x, "x")
    pairs = _static.explicit_padding(padding, _static.num_spatial_dims(x))
    return _zero_pad(pairs, x)


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _zero_pad(pairs, x):
    return _zero_pad_fwd(pairs, x)[0]


def _zero_pad_fwd(pairs, x):
    config = ((0, 0, 0), *((lo, hi, 0) for lo, hi in pairs), (0, 0, 0))
    return lax.pad(x, jnp.zeros((), x.dtype), config), None  # the slice bounds are static: no residual


def _zero_pad_bwd(pairs, _, g):  # (nothing, ct y) -> (ct x,)
    start = (0, *(lo for lo, _ in pairs), 0)
    limit = (g.shape[0], *(n - hi for n, (_, hi) in zip(g.shape[1:-1], pairs)), g.shape[-1])
    return (lax.slice(g, start, limit),)  # x̄ = ȳ[:, lo : n − hi, :]: padding is P, its adjoint Pᵀ the slice


_zero_pad.defvjp(_zero_pad_fwd, _zero_pad_bwd)
_zero_pad = jax.jit(_zero_pad, static_argnums=0)  # one program per call (purebp/__init__.py)
