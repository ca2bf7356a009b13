r"""Normalisation: layer_norm and rms_norm.

Each is a ``jax.custom_vjp`` that keeps one array of ``x``'s size, ``x`` itself, plus its
statistics per normalised row (μ and 1/σ, in float32 or wider) and the scale, and recomputes
x̂ = (x − μ)/σ from them exactly as the forward did: autodiff keeps three arrays of ``x``'s size.
(Keeping x̂ instead, in ``x``'s dtype, would round it in bfloat16 before the rule's sums cancel.) Statistics are taken in float32 for bfloat16 and float16 inputs, as flax's
``force_float32_reductions``, and the variance in two passes, mean((x − μ)²), which keeps its
digits where flax's fast E[x²] − μ² cancels (rows with a large mean). Derivations:
``docs/derivations/normalization.md``.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from purebp import _static, _types


def layer_norm(x, scale=None, bias=None, *, axis=-1, epsilon: float = 1e-6):
    r"""Layer normalisation over ``axis``: y = (x − μ)/√(σ² + ε)·γ + β, μ and σ² of each row.

    Backward: with x̂ = (x − μ)·r, r = 1/√(σ² + ε), and d = ȳ·γ:
    x̄ = r·(d − mean(d) − x̂·mean(d·x̂)), γ̄ = Σ ȳ·x̂ and β̄ = Σ ȳ over the other axes; from the saved
    x, μ and r.

    Args:
      x: floating array.
      scale: γ, of the shape of the normalised axes (``x.shape[-1:]`` for ``axis=-1``), in ``x``'s
        dtype; None for none (γ = 1).
      bias: β, likewise; None for none.
      axis: the axis, or tuple of axes, that each row spans (flax's ``reduction_axes`` and
        ``feature_axes`` alike).
      epsilon: ε, a positive number added to the variance.

    Returns:
      An array of ``x``'s shape and dtype: ``flax.linen.LayerNorm(epsilon=epsilon,
      reduction_axes=axis, feature_axes=axis)``'s output with these params.

    Raises:
      TypeError: if ``x``, ``scale`` or ``bias`` is not floating, or ``scale``/``bias`` is not in
        ``x``'s dtype.
      ValueError: if ``axis`` is out of range, ``scale``/``bias`` do not have the normalised
        axes' shape, or ``epsilon`` is not positive.

    >>> [round(v, 4) for v in layer_norm(jnp.array([1.0, 2.0, 3.0])).tolist()]
    [-1.2247, 0.0, 1.2247]

    Derivation: docs/derivations/normalization.md#layer-norm.
    """
    axes, epsilon = _checked(x, scale, bias, axis, epsilon)
    return _layer_norm(axes, epsilon, _types.of(bias), x, scale, bias)


def rms_norm(x, scale=None, *, axis=-1, epsilon: float = 1e-6):
    r"""Root-mean-square normalisation over ``axis``: y = x/√(mean(x²) + ε)·γ, as ``flax.linen.RMSNorm``.

    Backward: with x̂ = x·r, r = 1/√(mean(x²) + ε), and d = ȳ·γ: x̄ = r·(d − x̂·mean(d·x̂)) and
    γ̄ = Σ ȳ·x̂ over the other axes; from the saved x and r.

    Args:
      x: floating array.
      scale: γ, of the shape of the normalised axes, in ``x``'s dtype; None for none.
      axis: the axis, or tuple of axes, that each row spans.
      epsilon: ε, a positive number added to the mean square.

    Returns:
      An array of ``x``'s shape and dtype: ``flax.linen.RMSNorm(epsilon=epsilon,
      reduction_axes=axis, feature_axes=axis)``'s output with this scale.

    Raises:
      TypeError: as ``layer_norm``'s.
      ValueError: as ``layer_norm``'s.

    >>> [round(v, 4) for v in rms_norm(jnp.array([3.0, 4.0]), epsilon=1e-12).tolist()]
    [0.8485, 1.1314]

    Derivation: docs/derivations/normalization.md#rms-norm.
    """
    axes, epsilon = _checked(x, scale, None, axis, epsilon)
    return _rms_norm(axes, epsilon, x, scale)


def _checked(x, scale, bias, axis, epsilon):
    """The normalised axes (sorted non-negative ints) and ε as a float, after checking every argument."""
    _static.check_floating(x, "x")
    axes = _static.normalize_axes(axis, jnp.ndim(x))
    rows = tuple(jnp.shape(x)[a] for a in axes)
    for param, name in ((scale, "scale"), (bias, "bias")):
        if param is not None:
            _static.check_floating(param, name)
            _static.check_dtype_of(param, name, x, "x")
            if jnp.shape(param) != rows:
                raise ValueError(f"`{name}` must have the shape of the normalised axes {axes} of `x` (shape "
                                 f"{jnp.shape(x)}): {rows}, got {jnp.shape(param)}.")
    epsilon = _static.finite_real(epsilon, "epsilon")
    if epsilon <= 0 or np.asarray(epsilon, _static.wide_dtype(x.dtype)) == 0:
        raise ValueError(f"`epsilon` must be positive in {_static.wide_dtype(x.dtype)}, the statistics' dtype (it keeps a "
                         f"constant row finite), got {epsilon!r}.")
    return axes, epsilon


def _broadcastable(param, x, axes):
    """``param`` (of the normalised axes' shape) reshaped to broadcast against ``x``."""
    return param.reshape([x.shape[a] if a in axes else 1 for a in range(x.ndim)])


def _other_axes(x, axes):
    return tuple(a for a in range(x.ndim) if a not in axes)


# --- layer norm ----------------------------------------------------------------------------------


@partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _layer_norm(axes, epsilon, bias_type, x, scale, bias):
    return _layer_norm_fwd(axes, epsilon, bias_type, x, scale, bias)[0]


def _layer_norm_fwd(axes, epsilon, bias_type, x, scale, bias):
    wide = x.astype(_static.wide_dtype(x.dtype))
    mean = wide.mean(axes, keepdims=True)
    centred = wide - mean
    r = jax.lax.rsqrt(jnp.mean(centred * centred, axes, keepdims=True) + epsilon)  # two passes: no cancellation
    y = _scaled(centred * r, scale, axes)
    y = y if bias is None else y + _broadcastable(bias, x, axes)
    return y.astype(x.dtype), (x, mean, r, scale)  # x, its row statistics and γ (of a row's size)


def _layer_norm_bwd(axes, epsilon, bias_type, res, g):  # ((x, μ, r, γ), ct y) -> (ct x, ct γ, ct β)
    x, mean, r, scale = res
    x_hat = (x.astype(r.dtype) - mean) * r  # the forward's x̂, to the bit
    d, dscale = _normalised_cotangent(axes, x_hat, scale, g)
    dx = r * (d - d.mean(axes, keepdims=True) - x_hat * jnp.mean(d * x_hat, axes, keepdims=True))
    dbias = None if bias_type is None else _types.like(g.sum(_other_axes(g, axes)), bias_type)
    return _types.like(dx, _types.of(g)), dscale, dbias


_layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)
_layer_norm = jax.jit(_layer_norm, static_argnums=(0, 1, 2))  # one program per call (purebp/__init__.py)


def _scaled(x_hat, scale, axes):
    return x_hat if scale is None else x_hat * _broadcastable(scale, x_hat, axes)


def _normalised_cotangent(axes, x_hat, scale, g):
    """``(d = ȳ·γ, γ̄ = Σ ȳ·x̂)`` in x̂'s dtype (the statistics'); γ̄ None without a scale."""
    g = g.astype(x_hat.dtype)
    if scale is None:
        return g, None
    dscale = _types.like((g * x_hat).sum(_other_axes(g, axes)), _types.of(scale))
    return g * _broadcastable(scale, g, axes).astype(x_hat.dtype), dscale


# --- RMS norm ------------------------------------------------------------------------------------


@partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _rms_norm(axes, epsilon, x, scale):
    return _rms_norm_fwd(axes, epsilon, x, scale)[0]


def _rms_norm_fwd(axes, epsilon, x, scale):
    wide = x.astype(_static.wide_dtype(x.dtype))
    r = jax.lax.rsqrt(jnp.mean(wide * wide, axes, keepdims=True) + epsilon)
    return _scaled(wide * r, scale, axes).astype(x.dtype), (x, r, scale)


def _rms_norm_bwd(axes, epsilon, res, g):  # ((x, r, γ), ct y) -> (ct x, ct γ)
    x, r, scale = res
    x_hat = x.astype(r.dtype) * r
    d, dscale = _normalised_cotangent(axes, x_hat, scale, g)
    dx = r * (d - x_hat * jnp.mean(d * x_hat, axes, keepdims=True))
    return _types.like(dx, _types.of(g)), dscale


_rms_norm.defvjp(_rms_norm_fwd, _rms_norm_bwd)
_rms_norm = jax.jit(_rms_norm, static_argnums=(0, 1))  # one program per call (purebp/__init__.py)
