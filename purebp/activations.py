r"""Activations: sigmoid, relu, tanh, gelu, silu, softplus, log_sigmoid, leaky_relu, softmax, log_softmax.

Each is a ``jax.custom_vjp`` whose backward rule keeps one array of the input's size: the
forward's *output* where the derivative is a function of it (sigmoid, tanh, softplus,
log_sigmoid, softmax, log_softmax), the input where it is not (gelu, silu), and where a sign is
all it needs a boolean mask (relu: a quarter of float32's bytes) or its bits (leaky_relu: a
thirty-second).
Derivations: ``docs/derivations/activations.md``.
"""
from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from purebp import _bits, _static


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


def gelu(z, approximate: bool = True):
    r"""Gaussian error linear unit y = z·Φ(z), by default in its tanh form, as ``jax.nn.gelu``.

    ``approximate=True``: y = ½z(1 + tanh u), u = √(2/π)(z + 0.044715 z³), computed as z·σ(2u),
    its equal, which keeps its digits where 1 + tanh u cancels (z < −3); ``approximate=False``:
    y = z·Φ(z) = ½z·erfc(−z/√2).

    Backward: z̄ = ȳ·σ(2u)(1 + 2z·σ(−2u)·u′), u′ = √(2/π)(1 + 3·0.044715 z²), in the tanh form;
    z̄ = ȳ·(Φ(z) + z·φ(z)) in the erf form; from the saved ``z`` alone, in float32 for bfloat16 and
    float16 inputs.

    Args:
      z: floating array of any shape.
      approximate: the tanh form (True, jax.nn's and PyTorch's ``approximate="tanh"``) or the exact
        erf form (False).

    Returns:
      An array of ``z``'s shape and dtype: jax.nn.gelu's to float32's rounding (and to 1e-7 where
      its ½(1 + tanh u) loses its digits).

    Raises:
      TypeError: if ``z`` is not floating or ``approximate`` is not a bool.

    >>> round(float(gelu(1.0)), 6), round(float(gelu(1.0, approximate=False)), 6)
    (0.841192, 0.841345)

    Derivation: docs/derivations/activations.md#gelu.
    """
    _static.check_floating(z, "z")
    _static.check_bool(approximate, "approximate")
    return _gelu(bool(approximate), z)


_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)
_GELU_CUBIC = 0.044715  # the tanh form's u = √(2/π)(z + 0.044715 z³)


def _gelu_u(z):
    return _SQRT_2_OVER_PI * (z + _GELU_CUBIC * z ** 3)


def _gelu_value(approximate, z):
    if approximate:
        return z * lax.logistic(2 * _gelu_u(z))  # ½(1 + tanh u) = σ(2u), which does not cancel for u ≪ 0
    return 0.5 * z * lax.erfc(-z * jnp.asarray(math.sqrt(0.5), z.dtype))  # jax.nn.gelu's arithmetic


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _gelu(approximate, z):
    return _gelu_value(approximate, z)


def _gelu_fwd(approximate, z):
    return _gelu_value(approximate, z), z  # z alone: autodiff of jax.nn.gelu's tanh form keeps five arrays of its size


def _gelu_bwd(approximate, z, g):  # (z, ct y) -> (ct z,)
    x = z.astype(_static.wide_dtype(z.dtype))
    if approximate:  # d/dz z σ(2u) = σ(2u) + z · 2σ(2u)σ(−2u) · u′
        u, du = _gelu_u(x), _SQRT_2_OVER_PI * (1 + 3 * _GELU_CUBIC * x * x)
        slope = lax.logistic(2 * u) * (1 + 2 * x * lax.logistic(-2 * u) * du)
    else:  # Φ(z) + z φ(z), φ's exponent −t² with erfc's own t = −z/√2, so that XLA computes one exp for both
        t = -x * math.sqrt(0.5)
        slope = 0.5 * lax.erfc(t) + x * jnp.exp(-t * t) / math.sqrt(2 * math.pi)
    return (g * slope.astype(g.dtype),)


_gelu.defvjp(_gelu_fwd, _gelu_bwd)
_gelu = jax.jit(_gelu, static_argnums=0)  # one program per call (purebp/__init__.py)


@jax.custom_vjp
def silu(z):
    r"""Sigmoid linear unit (swish) y = z·σ(z), as ``jax.nn.silu``.

    Backward: z̄ = ȳ·σ(z)(1 + z·σ(−z)), from the saved ``z`` alone (σ(−z) for 1 − σ(z), which
    cancels for large z); in float32 for bfloat16 and float16 inputs.

    Args:
      z: floating array of any shape.

    Returns:
      An array of ``z``'s shape and dtype.

    Raises:
      TypeError: if ``z`` is not floating.

    >>> round(float(silu(1.0)), 6)
    0.731059

    Derivation: docs/derivations/activations.md#silu.
    """
    _static.check_floating(z, "z")
    return z * lax.logistic(z)


def _silu_fwd(z):
    return z * lax.logistic(z), z  # z alone: autodiff keeps z and σ(z), and σ(z)'s own residuals


def _silu_bwd(z, g):  # (z, ct y) -> (ct z,)
    x = z.astype(_static.wide_dtype(z.dtype))
    return (g * (lax.logistic(x) * (1 + x * lax.logistic(-x))).astype(g.dtype),)


silu.defvjp(_silu_fwd, _silu_bwd)
silu = jax.jit(silu)  # one program per call (purebp/__init__.py)


@jax.custom_vjp
def softplus(z):
    r"""Softplus y = log(1 + e^z), finite in value and gradient for every finite ``z``, as ``jax.nn.softplus``.

    Backward: z̄ = ȳ·σ(z) = ȳ·(1 − e^(−y)), from the saved output, computed as 2t/(1 + t) with
    t = tanh(y/2) (−expm1(−y), but cheaper), which keeps its digits where y is tiny (z very
    negative, σ(z) ≈ y); in bfloat16 and float16, whose rounding of y would reach σ (and σ′, at
    second order), as σ(z) in float32 from the saved input.

    Args:
      z: floating array of any shape.

    Returns:
      An array of ``z``'s shape and dtype, ≥ 0.

    Raises:
      TypeError: if ``z`` is not floating.

    >>> round(float(softplus(0.0)), 6)
    0.693147

    Derivation: docs/derivations/activations.md#softplus-and-log-sigmoid.
    """
    _static.check_floating(z, "z")
    return jnp.logaddexp(z, 0)


def _softplus_fwd(z):
    y = jnp.logaddexp(z, 0)
    return y, (z if jnp.dtype(y.dtype) in _static.LOW_PRECISION else y)  # the output, which the next layer keeps


def _softplus_bwd(res, g):  # (softplus z, or z in low precision; ct y) -> (ct z,)
    if jnp.dtype(res.dtype) in _static.LOW_PRECISION:
        return (g * lax.logistic(res.astype(jnp.float32)).astype(g.dtype),)
    return (g * _one_minus_exp_of_minus(res),)  # σ(z) = 1 − e^{−softplus(z)}


softplus.defvjp(_softplus_fwd, _softplus_bwd)
softplus = jax.jit(softplus)  # one program per call (purebp/__init__.py)


@jax.custom_vjp
def log_sigmoid(z):
    r"""Log-sigmoid y = log σ(z) = −softplus(−z), finite in value and gradient for every finite ``z``.

    Backward: z̄ = ȳ·σ(−z) = ȳ·(1 − e^y), from the saved output, computed as softplus's
    1 − e^(−a) at a = −y, which keeps its digits where y is tiny (z large, σ(−z) ≈ −y); in bfloat16 and float16 as σ(−z) in float32
    from the saved input, as softplus.

    Args:
      z: floating array of any shape.

    Returns:
      An array of ``z``'s shape and dtype, ≤ 0.

    Raises:
      TypeError: if ``z`` is not floating.

    >>> round(float(log_sigmoid(0.0)), 6)
    -0.693147

    Derivation: docs/derivations/activations.md#softplus-and-log-sigmoid.
    """
    _static.check_floating(z, "z")
    return -jnp.logaddexp(-z, 0)


def _log_sigmoid_fwd(z):
    y = -jnp.logaddexp(-z, 0)
    return y, (z if jnp.dtype(y.dtype) in _static.LOW_PRECISION else y)


def _log_sigmoid_bwd(res, g):  # (log σ(z), or z in low precision; ct y) -> (ct z,)
    if jnp.dtype(res.dtype) in _static.LOW_PRECISION:
        return (g * lax.logistic(-res.astype(jnp.float32)).astype(g.dtype),)
    return (g * _one_minus_exp_of_minus(-res),)  # σ(−z) = 1 − σ(z) = 1 − e^{log σ(z)}


log_sigmoid.defvjp(_log_sigmoid_fwd, _log_sigmoid_bwd)
log_sigmoid = jax.jit(log_sigmoid)  # one program per call (purebp/__init__.py)


def _one_minus_exp_of_minus(a):
    """1 − e^(−a) for a ≥ 0, to full relative precision for tiny a, as −expm1(−a), but as
    2t/(1 + t) with t = tanh(a/2) (since e^(−a) = (1 − t)/(1 + t)): XLA:CPU's expm1 costs about three
    exps, which put softplus's fwd+bwd at 1.06-1.11× autodiff's at (8192, 1024); tanh, 0.975×, for
    the same largest error against float64 over z in [−87, 30] (3.7e-7)."""
    t = jnp.tanh(0.5 * a)
    return 2 * t / (1 + t)


def leaky_relu(z, negative_slope: float = 0.01):
    r"""Leaky rectified linear unit: y = z where z ≥ 0, ``negative_slope``·z elsewhere, as ``jax.nn.leaky_relu``.

    Backward: z̄ = ȳ where z ≥ 0, ``negative_slope``·ȳ elsewhere (derivative 1 at 0, as
    ``jax.nn.leaky_relu``), from the signs of ``z`` saved as bits: an eighth of autodiff's boolean mask.

    Args:
      z: floating array of any shape.
      negative_slope: the slope below 0, a finite real number. It is static (a hyperparameter, no
        gradient flows into it); for a learned slope (PReLU) write ``jnp.where`` with autodiff.

    Returns:
      An array of ``z``'s shape and dtype.

    Raises:
      TypeError: if ``z`` is not floating or ``negative_slope`` is not a real number.
      ValueError: if ``negative_slope`` is not finite.

    >>> leaky_relu(jnp.array([-2.0, 0.0, 3.0]), 0.5).tolist()
    [-1.0, 0.0, 3.0]

    Derivation: docs/derivations/activations.md#leaky-relu.
    """
    _static.check_floating(z, "z")
    return _leaky_relu(_static.finite_real(negative_slope, "negative_slope"), z)


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _leaky_relu(negative_slope, z):
    return jnp.where(z >= 0, z, negative_slope * z)


def _leaky_relu_fwd(negative_slope, z):
    nonnegative = z >= 0
    # One bit an element: packing and unpacking cost no more than the bool mask's byte to write and
    # read (8192 × 1024 float32 on 2 CPU cores: 26 + 22 ms against 49 ms for the bool rule's pass)
    return jnp.where(nonnegative, z, negative_slope * z), _bits.pack(nonnegative)


def _leaky_relu_bwd(negative_slope, packed, g):  # (bits of z ≥ 0, ct y) -> (ct z,)
    return (jnp.where(_bits.unpack(packed, g), g, negative_slope * g),)


_leaky_relu.defvjp(_leaky_relu_fwd, _leaky_relu_bwd)
_leaky_relu = jax.jit(_leaky_relu, static_argnums=0)  # one program per call (purebp/__init__.py)


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
