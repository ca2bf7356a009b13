"""Boolean masks kept as bits: a residual of one bit an element, where a ``bool`` array takes a byte.

The bits run along the last axis, so the leading (batch) dims keep their sharding, and the
backward rule reads the shape back from its cotangent.
"""
from __future__ import annotations

import jax.numpy as jnp


def pack(mask):
    """``mask``'s bits, eight to a ``uint8`` along the last axis (a scalar as one of one bit)."""
    return jnp.packbits(jnp.atleast_1d(mask), axis=-1)


def unpack(packed, like):
    """The boolean mask of ``like``'s shape whose bits ``pack`` kept."""
    count = like.shape[-1] if like.ndim else 1
    return jnp.unpackbits(packed, axis=-1, count=count).reshape(like.shape).astype(bool)
