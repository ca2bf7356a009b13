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

    Backward: z̄ = ȳ · σ(z)(1 − σ(z)), from the saved output alone.

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
    return y, y


def _sigmoid_bwd(y, g):  # (σ(z), ct y) -> (ct z,)
    return (g * y * (1 - y),)  # σ' = σ(1 − σ)


sigmoid.defvjp(_sigmoid_fwd, _sigmoid_bwd)


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
    return (g * (1 - y * y),)  # tanh' = 1 − tanh²


tanh.defvjp(_tanh_fwd, _tanh_bwd)


def softmax(z, axis: int = -1):
    r"""Softmax along ``axis``: p_i = e^(z_i − m) / ∑_j e^(z_j − m), with m = max_j z_j.

    Backward: z̄ = p ⊙ (p̄ − ∑_j p̄_j p_j), from the saved output ``p``.

    Args:
      z: floating array with at least one dim.
      axis: the axis that sums to one.

    Returns:
      An array of ``z``'s shape and dtype.

    Raises:
      TypeError: if ``z`` is not floating or ``axis`` is not an int.
      ValueError: if ``axis`` is out of range.

    >>> softmax(jnp.array([0.0, 0.0])).tolist()
    [0.5, 0.5]

    Derivation: docs/derivations/activations.md#softmax.
    """
    _static.check_floating(z, "z")
    return _softmax(_static.normalize_axis(axis, jnp.ndim(z)), z)


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _softmax(axis, z):
    return _softmax_fwd(axis, z)[0]


def _softmax_fwd(axis, z):
    unnormalized = jnp.exp(max_shifted(z, axis))
    p = unnormalized / unnormalized.sum(axis, keepdims=True)
    return p, p


def _softmax_bwd(axis, p, g):  # (p, ct p) -> (ct z,)
    return (p * (g - (g * p).sum(axis, keepdims=True)),)  # J = diag(p) − p pᵀ


_softmax.defvjp(_softmax_fwd, _softmax_bwd)


def log_softmax(z, axis: int = -1):
    r"""Log of the softmax along ``axis``: y_i = z_i − m − log ∑_j e^(z_j − m), with m = max_j z_j.

    Backward: z̄ = ȳ − e^y · ∑_j ȳ_j, from the saved output ``y``.

    Args:
      z: floating array with at least one dim.
      axis: the axis along which ``exp(y)`` sums to one.

    Returns:
      An array of ``z``'s shape and dtype.

    Raises:
      TypeError: if ``z`` is not floating or ``axis`` is not an int.
      ValueError: if ``axis`` is out of range.

    Derivation: docs/derivations/activations.md#log-softmax.
    """
    _static.check_floating(z, "z")
    return _log_softmax(_static.normalize_axis(axis, jnp.ndim(z)), z)


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _log_softmax(axis, z):
    return stable_log_softmax(z, axis)


def _log_softmax_fwd(axis, z):
    y = stable_log_softmax(z, axis)
    return y, y


def _log_softmax_bwd(axis, y, g):  # (log p, ct y) -> (ct z,)
    return (g - jnp.exp(y) * g.sum(axis, keepdims=True),)  # ∂y_i/∂z_j = δ_ij − p_j


_log_softmax.defvjp(_log_softmax_fwd, _log_softmax_bwd)


def max_shifted(z, axis):
    """``z − max(z)`` along ``axis``: every exponent ≤ 0 and one of them 0, so ``exp`` never overflows.

    Any shift gives the same softmax, so the max carries no gradient (``stop_gradient`` keeps grad
    of grad from differentiating it). A row holding +inf becomes 0 at its +inf entries and -inf
    elsewhere: the limit, in which softmax spreads evenly over the +inf entries. A row of -inf
    alone has no limit and stays NaN (-inf − (-inf)), as in ``jax.nn.softmax``.
    """
    m = lax.stop_gradient(jnp.max(z, axis, keepdims=True))
    return jnp.where(m == jnp.inf, jnp.where(z == jnp.inf, 0, -jnp.inf), z - m)


def stable_log_softmax(z, axis):
    """log softmax as z − m − log Σ e^{z − m}: every exponent ≤ 0, so nothing overflows."""
    shifted = max_shifted(z, axis)
    return shifted - jnp.log(jnp.exp(shifted).sum(axis, keepdims=True))


# The elementwise activations, as functions of their *output*: f(z) and f'(z) written from a = f(z).
# mlp's backward pass uses these, so a layer keeps its activation a and never its pre-activation z.
ELEMENTWISE = {
    "sigmoid": (lax.logistic, lambda a: a * (1 - a)),
    "tanh": (jnp.tanh, lambda a: 1 - a * a),
    "relu": (lambda z: jnp.maximum(z, 0), lambda a: (a > 0).astype(a.dtype)),
    "identity": (lambda z: z, None),  # None: the derivative is 1, skip the multiply
}
