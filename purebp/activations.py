r"""Activations: sigmoid, relu, tanh, softmax, log_softmax.

Each is a ``jax.custom_vjp`` whose backward rule is written from the forward's *output*, so the
output is the only residual it keeps (relu keeps a boolean mask, a quarter of the bytes).
Derivations: ``docs/derivations/activations.md``.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from purebp import _static


@jax.custom_vjp
def sigmoid(z):
    r"""Logistic sigmoid σ(z) = 1 / (1 + e^(−z)), stable for every finite ``z``.

    Backward: z̄ = ȳ · σ(z)(1 − σ(z)), from the saved output alone; in bfloat16 and float16, where
    1 − σ(z) would cancel, as σ(z)σ(−z) in float32 from the saved input.

    Args:
      z: floating array of any shape.

    Returns:
      An array of ``z``'s shape and dtype, in ``[0, 1]``.

    Raises:
      TypeError: if ``z`` is not floating.

    >>> float(sigmoid(0.0))
    0.5

    Derivation: docs/derivations/activations.md#sigmoid.
    """
    _static.check_floating(z, "z")
    return lax.logistic(z)  # XLA's logistic never forms e^{-z} for very negative z.


def _sigmoid_fwd(z):
    y = lax.logistic(z)  # the body, not the op: re-entering a custom_vjp would block forward-over-reverse
    # In bfloat16 and float16, y rounds to 1 long before σ' is negligible (σ(6) = 0.9975 is 1 in
    # bfloat16, where σ'(6) = 0.0025), and 1 − y cancels: the rule keeps z instead, of the same bytes.
    return y, (z if jnp.dtype(y.dtype) in _static.LOW_PRECISION else y)


def _sigmoid_bwd(res, g):  # (σ(z), or z in low precision; ct y) -> (ct z,)
    if jnp.dtype(res.dtype) in _static.LOW_PRECISION:
        z = res.astype(jnp.float32)
        return ((g * (lax.logistic(z) * lax.logistic(-z))).astype(res.dtype),)  # σ' = σ(z)σ(−z), no cancellation
    return (g * res * (1 - res),)  # σ' = σ(1 − σ)


sigmoid.defvjp(_sigmoid_fwd, _sigmoid_bwd)
sigmoid = jax.jit(sigmoid)  # one program per call (purebp/__init__.py)


@jax.custom_vjp
def relu(z):
    r"""Rectified linear unit relu(z) = max(z, 0).

    Backward: z̄ = ȳ · [z > 0]; the kink at 0 gets derivative 0, as ``jax.nn.relu``.

    Args:
      z: floating array of any shape.

    Returns:
      An array of ``z``'s shape and dtype.

    >>> relu(jnp.array([-1.0, 0.0, 2.0])).tolist()
    [0.0, 0.0, 2.0]

    Derivation: docs/derivations/activations.md#relu.
    """
    _static.check_floating(z, "z")
    return jnp.maximum(z, 0)


def _relu_fwd(z):
    positive = z > 0  # a bool mask is all the rule needs: 1 byte an element, not the output's 2-8
    return jnp.maximum(z, 0), positive


def _relu_bwd(positive, g):  # (z > 0, ct y) -> (ct z,)
    return (jnp.where(positive, g, 0),)  # relu'(z) = [z > 0]; NaN in g stays where it belongs


relu.defvjp(_relu_fwd, _relu_bwd)
relu = jax.jit(relu)  # one program per call (purebp/__init__.py)


@jax.custom_vjp
def tanh(z):
    r"""Hyperbolic tangent y = tanh(z).

    Backward: z̄ = ȳ · (1 − y²), from the saved output y.

    Args:
      z: floating array of any shape.

    Returns:
      An array of ``z``'s shape and dtype, in ``[-1, 1]``.

    >>> float(tanh(0.0))
    0.0

    Derivation: docs/derivations/activations.md#tanh.
    """
    _static.check_floating(z, "z")
    return jnp.tanh(z)


def _tanh_fwd(z):
    y = jnp.tanh(z)
    return y, y


def _tanh_bwd(y, g):  # (tanh z, ct y) -> (ct z,)
    return (g * ((1 - y) * (1 + y)),)  # tanh' = 1 − tanh², factored: 1 − y is exact near |y| = 1, y² rounds


tanh.defvjp(_tanh_fwd, _tanh_bwd)
tanh = jax.jit(tanh)  # one program per call (purebp/__init__.py)


def softmax(z, axis=-1, where=None):
    r"""Softmax along ``axis``: p_i = e^(z_i − m) / ∑_j e^(z_j − m), with m = max_j z_j.

    Backward: z̄ = p ⊙ (p̄ − ∑_j p̄_j p_j), from the saved output ``p`` alone: a masked-out entry
    has p = 0, so it gets no cotangent and takes no part in the sum.

    Args:
      z: floating array.
      axis: the axis, or tuple of axes, that sums to one; None for every axis (as ``jax.nn.softmax``).
      where: optional mask broadcastable to ``z``'s shape, as ``jax.nn.softmax``'s: only its True
        entries take part, and the others are 0 (all of a row that is masked out entirely).

    Returns:
      An array of ``z``'s shape and dtype.

    Raises:
      TypeError: if ``z`` is not floating or ``axis`` is not an int or a tuple of ints.
      ValueError: if ``axis`` is out of range or ``where`` does not broadcast to ``z``'s shape.

    >>> softmax(jnp.array([0.0, 0.0])).tolist()
    [0.5, 0.5]
    >>> softmax(jnp.array([1.0, 5.0, 1.0]), where=jnp.array([True, False, True])).tolist()
    [0.5, 0.0, 0.5]

    Derivation: docs/derivations/activations.md#softmax.
    """
    _static.check_floating(z, "z")
    return _softmax(_static.normalize_axes(axis, jnp.ndim(z)), z, _static.mask(where, jnp.shape(z)))


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _softmax(axis, z, where):
    return _softmax_fwd(axis, z, where)[0]


def _softmax_fwd(axis, z, where):
    unnormalized = jnp.exp(max_shifted(z, axis, where))
    p = masked(unnormalized / unnormalized.sum(axis, keepdims=True), where, 0)
    return p, p  # p is 0 where masked: the rule needs no mask


def _softmax_bwd(axis, p, g):  # (p, ct p) -> (ct z, ct where)
    return p * (g - (g * p).sum(axis, keepdims=True)), None  # J = diag(p) − p pᵀ


_softmax.defvjp(_softmax_fwd, _softmax_bwd)
_softmax = jax.jit(_softmax, static_argnums=0)  # one program per call (purebp/__init__.py)


def log_softmax(z, axis=-1, where=None):
    r"""Log of the softmax along ``axis``: y_i = z_i − m − log ∑_j e^(z_j − m), with m = max_j z_j.

    Backward: z̄ = ȳ − e^y · ∑_j ȳ_j, from the saved output ``y`` (and the mask, whose masked-out
    entries get no cotangent and take no part in the sum).

    Args:
      z: floating array.
      axis: the axis, or tuple of axes, along which ``exp(y)`` sums to one; None for every axis.
      where: optional mask broadcastable to ``z``'s shape, as ``jax.nn.log_softmax``'s: only its True
        entries take part, and the others are -inf.

    Returns:
      An array of ``z``'s shape and dtype.

    Raises:
      TypeError: if ``z`` is not floating or ``axis`` is not an int or a tuple of ints.
      ValueError: if ``axis`` is out of range or ``where`` does not broadcast to ``z``'s shape.

    Derivation: docs/derivations/activations.md#log-softmax.
    """
    _static.check_floating(z, "z")
    return _log_softmax(_static.normalize_axes(axis, jnp.ndim(z)), z, _static.mask(where, jnp.shape(z)))


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _log_softmax(axis, z, where):
    return stable_log_softmax(z, axis, where)


def _log_softmax_fwd(axis, z, where):
    y = stable_log_softmax(z, axis, where)
    return y, (y, where)  # the mask as given: a bool, broadcast only when used


def _log_softmax_bwd(axis, res, g):  # ((log p, where), ct y) -> (ct z, ct where)
    y, where = res
    g = masked(g, where, 0)  # a masked-out y is the constant -inf
    return g - jnp.exp(y) * g.sum(axis, keepdims=True), None  # ∂y_i/∂z_j = δ_ij − p_j


_log_softmax.defvjp(_log_softmax_fwd, _log_softmax_bwd)
_log_softmax = jax.jit(_log_softmax, static_argnums=0)  # one program per call (purebp/__init__.py)


def masked(x, where, fill):
    """``x`` where the mask is True and ``fill`` elsewhere; ``x`` itself when there is no mask."""
    return x if where is None else jnp.where(where, x, fill)


def row_max(z, axis):
    """The max along ``axis`` (-inf for an empty axis, or a row masked to -inf), as a constant: any
    shift gives the same softmax, so the max carries no gradient (``stop_gradient`` keeps grad of
    grad from differentiating it)."""
    return lax.stop_gradient(jnp.max(z, axis, keepdims=True, initial=-jnp.inf))


def shift(z, m):
    """``z − m``: every exponent ≤ 0 and one of them 0, so ``exp`` never overflows.

    A row holding +inf becomes 0 at its +inf entries and -inf elsewhere: the limit, in which softmax
    spreads evenly over the +inf entries. A row of -inf alone has no limit and stays NaN
    (-inf − (-inf)), as in ``jax.nn.softmax``.
    """
    return jnp.where(m == jnp.inf, jnp.where(z == jnp.inf, 0, -jnp.inf), z - m)


def max_shifted(z, axis, where=None):
    """``z − max(z)`` along ``axis`` (see ``shift``); masked-out entries become -inf first, so they
    take no part, and no value of theirs, however large or NaN, reaches a gradient."""
    z = masked(z, where, -jnp.inf)
    return shift(z, row_max(z, axis))


def stable_log_softmax(z, axis, where=None):
    """log softmax as z − m − log Σ e^{z − m}: every exponent ≤ 0, so nothing overflows; -inf where masked."""
    shifted = max_shifted(z, axis, where)
    return masked(shifted - jnp.log(jnp.exp(shifted).sum(axis, keepdims=True)), where, -jnp.inf)


# The elementwise activations, as functions of their *output*: f(z) and f'(z) written from a = f(z).
# mlp's backward pass uses these, so a layer keeps its activation a and never its pre-activation z.
ELEMENTWISE = {
    "sigmoid": (lax.logistic, lambda a: a * (1 - a)),
    "tanh": (jnp.tanh, lambda a: (1 - a) * (1 + a)),
    "relu": (lambda z: jnp.maximum(z, 0), lambda a: (a > 0).astype(a.dtype)),
    "identity": (lambda z: z, None),  # None: the derivative is 1, skip the multiply
}
