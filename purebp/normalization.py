r"""Normalisation: layer_norm, rms_norm and batch_norm.

Each is a ``jax.custom_vjp`` that keeps one array of ``x``'s size, ``x`` itself, plus its
statistics per normalised row or channel (μ and 1/σ, in float32 or wider) and the scale, and
recomputes x̂ = (x − μ)/σ from them exactly as the forward did: autodiff keeps three arrays of
``x``'s size. (Keeping x̂ instead, in ``x``'s dtype, would round it in bfloat16 before the rule's
sums cancel.) Statistics are taken in float32 for bfloat16 and float16 inputs, as flax's
``force_float32_reductions``, and the variance in two passes, mean((x − μ)²), which keeps its
digits where flax's fast E[x²] − μ² cancels (rows with a large mean). Derivations:
``docs/derivations/normalization.md``.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

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
    g_type, x, g = _types.of(g), x.astype(r.dtype), g.astype(r.dtype)
    d = _scaled(g, scale, axes).astype(r.dtype)  # d = ȳ·γ
    # x̄ = r·(d − x̂·mean(d·x̂)) with x̂ = x·r, written in x: r·d − r³·mean(d·x)·x, one product an element
    # fewer, which took the fwd+bwd at (8192, 1024) from 1.17× autodiff's time to 0.87×
    dx = r * d - (r * r * r * jnp.mean(d * x, axes, keepdims=True)) * x
    dscale = None if scale is None else _types.like(((g * x) * r).sum(_other_axes(g, axes)), _types.of(scale))
    return _types.like(dx, g_type), dscale


_rms_norm.defvjp(_rms_norm_fwd, _rms_norm_bwd)
_rms_norm = jax.jit(_rms_norm, static_argnums=(0, 1))  # one program per call (purebp/__init__.py)


# --- batch norm ----------------------------------------------------------------------------------


def batch_norm(x, scale, bias, stats, *, train: bool, momentum: float = 0.99, epsilon: float = 1e-5,
               axis_name=None):
    r"""Batch normalisation of channels-last ``x``: y = (x − μ)/√(σ² + ε)·γ + β per channel (the last axis).

    ``train=True`` takes μ and the biased σ² over every other axis (and over ``axis_name``'s
    devices) and returns the running statistics moved towards them:
    ``momentum·stats + (1 − momentum)·(μ, σ²)``. ``train=False`` takes μ and σ² from ``stats`` and
    returns them unchanged. As ``flax.linen.BatchNorm(use_running_average=not train)``.

    Backward: with x̂ = (x − μ)·r, r = 1/√(σ² + ε), d = ȳ·γ and means over the batch, in training
    x̄ = r·(d − mean(d) − x̂·mean(d·x̂)) (layer norm's rule over the other axes), in evaluation
    x̄ = r·d; γ̄ = Σ ȳ·x̂ and β̄ = Σ ȳ in both. ``stats`` gets no cotangent; the new statistics pass
    theirs on to ``x`` through μ and σ².

    Args:
      x: floating array ``(N, ..., C)``, channels last.
      scale: γ, ``(C,)`` in ``x``'s dtype; None for none (γ = 1).
      bias: β, likewise; None for none.
      stats: the running statistics ``{"mean": (C,), "var": (C,)}``, floating (flax's
        ``batch_stats``: float32 for float32 and lower inputs). Start from zeros and ones.
      train: use the batch's statistics and update ``stats`` (True), or use ``stats`` (False).
      momentum: the running statistics' decay, in [0, 1].
      epsilon: ε, a positive number added to the variance.
      axis_name: None, or the name of a mapped axis (``jax.shard_map``'s mesh axis,
        ``jax.vmap(..., axis_name=)``) whose members together hold the batch: the statistics and the
        backward's means are taken over all of them (flax's ``axis_name``): two ``lax.pmean`` of
        ``C`` numbers each way. Under ``jax.vmap``, differentiate inside it
        (``vmap(grad(...))``): JAX does not bind a vmap's axis in a backward rule outside it.

    Returns:
      ``(y, new_stats)``: ``y`` of ``x``'s shape and dtype, and ``stats`` as described, in their dtype.

    Raises:
      TypeError: if ``x``, ``scale``, ``bias`` or ``stats``' arrays are not floating, ``scale``/``bias``
        are not in ``x``'s dtype, or ``train`` is not a bool.
      ValueError: if ``x`` has fewer than two dims, ``scale``/``bias``/``stats`` are not of shape
        ``(C,)``, ``stats`` has keys other than ``"mean"`` and ``"var"``, ``momentum`` is not in
        [0, 1], ``epsilon`` is not positive, or ``axis_name`` names no mapped axis.

    >>> y, stats = batch_norm(jnp.array([[1.0], [3.0]]), None, None, {"mean": jnp.zeros(1), "var": jnp.ones(1)},
    ...                       train=True, momentum=0.5)
    >>> y[:, 0].round(4).tolist(), stats["mean"].tolist(), stats["var"].tolist()  # batch μ = 2, σ² = 1
    ([-1.0, 1.0], [1.0], [1.0])

    Derivation: docs/derivations/normalization.md#batch-norm.
    """
    _static.check_ndim(x, "x", "(N, ..., C), channels last", range(2, max(jnp.ndim(x), 2) + 1))
    _, epsilon = _checked(x, scale, bias, -1, epsilon)
    _check_stats(stats, x)
    _static.check_bool(train, "train")
    momentum = _static.finite_real(momentum, "momentum")
    if not 0 <= momentum <= 1:
        raise ValueError(f"`momentum` must be in [0, 1] (the running statistics' decay), got {momentum!r}.")
    _check_axis_name(axis_name)
    if not train:  # the statistics, not parameters, get no cotangent (the rules give them none either)
        y = _batch_norm_eval(epsilon, _types.of(bias), x, scale, bias, stats["mean"], stats["var"])
        return y, jax.lax.stop_gradient(stats)
    y, mean, var = _batch_norm_train(axis_name, epsilon, momentum, _types.of(bias), _types.of(stats["mean"]), x, scale,
                                     bias, stats["mean"], stats["var"])
    return y, {"mean": mean, "var": var}


def _check_axis_name(axis_name):
    if axis_name is None:
        return
    try:
        hash(axis_name)
        lax.axis_size(axis_name)
    except (NameError, TypeError) as error:  # unbound, or not a name at all
        raise ValueError(f"`axis_name` {axis_name!r} names no mapped axis here ({error}): call batch_norm under "
                         f"jax.shard_map or jax.vmap(..., axis_name={axis_name!r}), or pass axis_name=None.") from None


def _check_stats(stats, x):
    if not isinstance(stats, dict) or set(stats) != {"mean", "var"}:
        got = f"a dict with keys {sorted(stats)}" if isinstance(stats, dict) else type(stats).__name__
        raise ValueError(f"`stats` must be the running statistics {{\"mean\": (C,), \"var\": (C,)}}, got {got}.")
    for name in ("mean", "var"):
        _static.check_floating(stats[name], f"stats[{name!r}]")
        if jnp.shape(stats[name]) != x.shape[-1:]:
            raise ValueError(f"`stats[{name!r}]` must have the shape of `x`'s channels {x.shape[-1:]}, got "
                             f"{jnp.shape(stats[name])}.")


def _batch_mean(a, axes, axis_name):
    """The mean over ``axes`` and, when named, over the mapped axis's members (equal batches each)."""
    mean = a.mean(axes, keepdims=True)
    if axis_name is None:
        return mean
    try:
        return lax.pmean(mean, axis_name)
    except NameError:  # in the backward rule: grad of a vmap, whose axis JAX does not bind there
        raise ValueError(f"batch_norm's backward rule needs the mapped axis `axis_name` {axis_name!r} bound: JAX "
                         f"binds a vmap's axis in a custom_vjp's backward only under the vmap, so take "
                         f"jax.vmap(jax.grad(...), axis_name={axis_name!r}) rather than jax.grad of the vmap (or "
                         f"use jax.shard_map, which works either way).") from None


@partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3, 4))
def _batch_norm_train(axis_name, epsilon, momentum, bias_type, stats_type, x, scale, bias, running_mean, running_var):
    return _batch_norm_train_fwd(axis_name, epsilon, momentum, bias_type, stats_type, x, scale, bias, running_mean,
                                 running_var)[0]


def _batch_norm_train_fwd(axis_name, epsilon, momentum, bias_type, stats_type, x, scale, bias, running_mean,
                          running_var):
    axes = tuple(range(x.ndim - 1))
    wide = x.astype(_static.wide_dtype(x.dtype))
    mean = _batch_mean(wide, axes, axis_name)
    centred = wide - mean
    var = _batch_mean(centred * centred, axes, axis_name)  # two passes, as layer norm's
    r = lax.rsqrt(var + epsilon)
    y = _scaled(centred * r, scale, (x.ndim - 1,))
    y = y if bias is None else y + bias
    moved = lambda running, batch: (momentum * running + (1 - momentum) * batch.reshape(-1)).astype(running.dtype)
    return (y.astype(x.dtype), moved(running_mean, mean), moved(running_var, var)), (x, mean, r, scale)


def _batch_norm_train_bwd(axis_name, epsilon, momentum, bias_type, stats_type, res, cotangents):
    # ((x, μ, r, γ), (ct y, ct new mean, ct new var)) -> (ct x, ct γ, ct β, 0, 0)
    x, mean, r, scale = res
    g, dmean, dvar = cotangents
    axes, channel = tuple(range(x.ndim - 1)), (x.ndim - 1,)
    centred = x.astype(r.dtype) - mean
    x_hat = centred * r  # the forward's x̂, to the bit
    d, dscale = _normalised_cotangent(channel, x_hat, scale, g)
    dx = r * (d - _batch_mean(d, axes, axis_name) - x_hat * _batch_mean(d * x_hat, axes, axis_name))
    # The new running statistics' cotangents reach x through the batch's μ (∂μ/∂x = 1/n) and σ²
    # (∂σ²/∂x = 2(x − μ)/n), each weighted by the update's 1 − momentum.
    count = x.size // x.shape[-1] * (1 if axis_name is None else lax.psum(1, axis_name))
    dmean, dvar = ((1 - momentum) * ct.astype(r.dtype) for ct in (dmean, dvar))
    dx = dx + (dmean + 2 * dvar * centred) / count
    dbias = None if bias_type is None else _types.like(g.sum(axes), bias_type)
    # the old statistics' zeros made here, in the rule's program: a None would be made outside it, eagerly
    no_cotangent = _types.like(jnp.zeros(stats_type.shape, stats_type.dtype), stats_type)
    return _types.like(dx, _types.of(g)), dscale, dbias, no_cotangent, no_cotangent


_batch_norm_train.defvjp(_batch_norm_train_fwd, _batch_norm_train_bwd)
_batch_norm_train = jax.jit(_batch_norm_train, static_argnums=(0, 1, 2, 3, 4))  # one program per call


@partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _batch_norm_eval(epsilon, bias_type, x, scale, bias, mean, var):
    return _batch_norm_eval_fwd(epsilon, bias_type, x, scale, bias, mean, var)[0]


def _batch_norm_eval_fwd(epsilon, bias_type, x, scale, bias, mean, var):
    dtype = jnp.promote_types(_static.wide_dtype(x.dtype), mean.dtype)
    mean, r = mean.astype(dtype), lax.rsqrt(var.astype(dtype) + epsilon)
    y = _scaled((x.astype(dtype) - mean) * r, scale, (x.ndim - 1,))
    y = y if bias is None else y + bias
    kept = (x, mean) if scale is not None else (None, None)  # only γ̄ needs x̂
    return y.astype(x.dtype), (*kept, r, scale)


def _batch_norm_eval_bwd(epsilon, bias_type, res, g):  # ((x, μ, r, γ), ct y) -> (ct x, ct γ, ct β, -, -)
    x, mean, r, scale = res
    if scale is None:
        d, dscale = g.astype(r.dtype), None
    else:
        d, dscale = _normalised_cotangent((g.ndim - 1,), (x.astype(r.dtype) - mean) * r, scale, g)
    dbias = None if bias_type is None else _types.like(g.sum(tuple(range(g.ndim - 1))), bias_type)
    return _types.like(r * d, _types.of(g)), dscale, dbias, None, None  # x̄ = r·d: here μ and r are constants


_batch_norm_eval.defvjp(_batch_norm_eval_fwd, _batch_norm_eval_bwd)
_batch_norm_eval = jax.jit(_batch_norm_eval, static_argnums=(0, 1))  # one program per call
