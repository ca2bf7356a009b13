r"""Regularisation: dropout.

A ``jax.custom_vjp`` whose backward rule keeps the dropout mask as bits, one bit an element (a
thirty-second of float32's bytes, an eighth of a boolean mask), and no copy of ``x`` or ``y``.
Regenerating the mask from the key instead would keep 8 bytes, but costs the threefry draw again
in the backward pass: on this project's 2-core CPUs about 200 ms for 8M elements, against some
25 ms for the elementwise pass itself, so the bits win there. Derivation:
``docs/derivations/dropout.md``.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from purebp import _bits, _static, _types


def dropout(x, key, rate: float, *, deterministic: bool = False):
    r"""Inverted dropout: y = x·m/(1 − rate), m ~ Bernoulli(1 − rate) drawn from ``key``, as ``flax.linen.Dropout``.

    Backward: x̄ = ȳ·m/(1 − rate), from the mask saved as bits.

    Args:
      x: floating array.
      key: a ``jax.random`` key (typed or raw); the same key drops the same elements.
      rate: the probability of *dropping* an element (flax's meaning, not stax's keep rate), in
        [0, 1]. 0 returns ``x``; 1 returns zeros.
      deterministic: True returns ``x`` unchanged (evaluation), as flax's.

    Returns:
      An array of ``x``'s shape and dtype.

    Raises:
      TypeError: if ``x`` is not floating, ``rate`` is not a real number or ``deterministic`` not
        a bool.
      ValueError: if ``rate`` is not in [0, 1].

    >>> y = dropout(jnp.ones(8), jax.random.key(0), 0.5)
    >>> sorted(set(y.tolist())) == [0.0, 2.0]  # dropped, or kept and scaled by 1 / (1 − 0.5)
    True

    Derivation: docs/derivations/dropout.md.
    """
    _static.check_floating(x, "x")
    rate = _static.finite_real(rate, "rate")
    if not 0 <= rate <= 1:
        raise ValueError(f"`rate` must be a probability in [0, 1] (of dropping an element), got {rate!r}.")
    _static.check_bool(deterministic, "deterministic")
    if deterministic or rate == 0:
        return x
    if rate == 1:
        return jnp.zeros_like(x)
    return _dropout(rate, x, key)


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _dropout(rate, x, key):
    return _dropout_fwd(rate, x, key)[0]


def _dropout_fwd(rate, x, key):
    # flax's draw, its p in float32 whatever x's dtype and jax_enable_x64: one key, one mask
    keep = jax.random.bernoulli(key, jnp.float32(1.0 - rate), x.shape, out_sharding=_types.sharding(x))
    return lax.select(keep, x / jnp.asarray(1.0 - rate, x.dtype), jnp.zeros_like(x)), _bits.pack(keep)


def _dropout_bwd(rate, packed, g):  # (the mask's bits, ct y) -> (ct x, ct key)
    return lax.select(_bits.unpack(packed, g), g / jnp.asarray(1.0 - rate, g.dtype), jnp.zeros_like(g)), None


_dropout.defvjp(_dropout_fwd, _dropout_bwd)
_dropout = jax.jit(_dropout, static_argnums=0)  # one program per call (purebp/__init__.py)
