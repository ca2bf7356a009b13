r"""Dense layers and the whole multilayer perceptron as one backward pass.

Layout: ``x[..., in] @ w[in, out] + b[out]``; any leading dims of ``x`` are batch dims, summed
over in the weight and bias cotangents. Derivations: ``docs/derivations/dense.md`` and
``docs/derivations/mlp.md``.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from purebp import _static, _types
from purebp.activations import ELEMENTWISE


def dense(x, w, b=None):
    r"""Affine map y = x W + b over the last axis of ``x``.

    Backward: x̄ = ȳ Wᵀ, W̄ = xᵀ ȳ, b̄ = ∑_batch ȳ (batch dims flattened for the two sums).

    Args:
      x: floating array ``[..., in]``.
      w: ``[in, out]`` in ``x``'s dtype (as ``conv``'s kernel: for mixed precision, cast float32
        weights with ``w.astype(x.dtype)``, whose VJP returns their cotangent in float32).
      b: optional ``[out]`` in ``x``'s dtype.

    Returns:
      ``[..., out]`` in ``x``'s dtype.

    Raises:
      TypeError: if an argument is not floating or ``w``, ``b`` are not in ``x``'s dtype.
      ValueError: if the shapes do not chain.

    >>> dense(jnp.ones((2, 3)), jnp.ones((3, 4)), jnp.zeros(4)).shape
    (2, 4)

    Derivation: docs/derivations/dense.md.
    """
    _static.check_floating(x, "x")
    _check_dense_args(x, jnp.shape(x), w, b, "x", "w", "b")
    return _dense(_types.of(b), x, w, b)


def _check_dense_args(x, x_shape, w, b, x_name, w_name, b_name):
    """Checks that x (of shape ``x_shape``), w and b chain as ``x @ w + b``, all in x's dtype (as conv's)."""
    _static.check_floating(w, w_name)
    _static.check_dtype_of(w, w_name, x, x_name)
    if b is not None:
        _static.check_dtype_of(b, b_name, x, x_name)
    _static.check_ndim(w, w_name, "a matrix [in, out]", (2,))
    if not x_shape or x_shape[-1] != jnp.shape(w)[0]:
        raise ValueError(
            f"`{x_name}` must have shape [..., in] with in = {jnp.shape(w)[0]} (`{w_name}`'s first dim), "
            f"got `{x_name}` of shape {x_shape} and `{w_name}` of shape {jnp.shape(w)}.")
    if b is not None:
        _static.check_floating(b, b_name)
        if jnp.shape(b) != jnp.shape(w)[1:]:
            raise ValueError(
                f"`{b_name}` must have shape {jnp.shape(w)[1:]} (out of `{w_name}`), got {jnp.shape(b)}.")


# The bias's type travels as a static argument (None: no bias), so the rule can return its
# cotangent in that type without keeping the bias itself as a residual.
@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _dense(bias, x, w, b):
    return _dense_fwd(bias, x, w, b)[0]


def _dense_fwd(bias, x, w, b):
    y = _affine_part(x, w)
    return (y if bias is None else y + b), (x, w)


def _dense_bwd(bias, res, g):  # ((x, w), ct y) -> (ct x, ct w, ct b)
    x, w = res
    dx = _input_cotangent(g, w, x)  # x̄ = ȳ Wᵀ
    dw, db = _weight_and_bias_cotangents(x, g, w)  # W̄ = xᵀ ȳ, b̄ = Σ ȳ
    return _types.like(dx, _types.of(x)), _types.like(dw, _types.of(w)), _types.like(db, bias)


def _affine_part(a, w):
    """a W, typed so that a weight split over devices (FSDP, tensor parallel) works under Explicit axes."""
    return jnp.matmul(a, w, out_sharding=_types.features_out(a, w, batch_dims=a.ndim - 1))


def _input_cotangent(delta, w, a_prev):
    """(Wᵀ δ) in the batched layout: δ Wᵀ, typed (sharded) as ``a_prev``."""
    return jnp.matmul(delta, w.T, out_sharding=_types.sharding(a_prev))


def _weight_and_bias_cotangents(a_prev, delta, w):
    """∇W = a_prevᵀ δ, typed (sharded) as ``w``, and ∇b = Σ δ, both summed over every batch dim."""
    batch_axes = tuple(range(delta.ndim - 1))
    dw = jnp.tensordot(a_prev, delta, (batch_axes, batch_axes), out_sharding=_types.sharding(w))
    return dw, delta.sum(batch_axes)


_dense.defvjp(_dense_fwd, _dense_bwd)
_dense = jax.jit(_dense, static_argnums=0)  # one program per call (purebp/__init__.py)


def mlp(params, x, *, activation: str = "sigmoid", output_activation: str = "identity"):
    r"""A multilayer perceptron, aˡ = σ(aˡ⁻¹ Wˡ + bˡ) layer by layer, whose backward pass is textbook backprop.

    Forward: a⁰ = x, zˡ = aˡ⁻¹ Wˡ + bˡ, aˡ = σ(zˡ) for l = 1 … L, with ``output_activation`` on
    the last layer.
    Backward: δᴸ = āᴸ ⊙ σ′(zᴸ), δˡ = (δˡ⁺¹ (Wˡ⁺¹)ᵀ) ⊙ σ′(zˡ), W̄ˡ = (aˡ⁻¹)ᵀ δˡ, b̄ˡ = ∑ δˡ,
    from the saved activations aˡ only: σ′(z) is written from a = σ(z) (e.g. a(1 − a)).
    This is the composition of ``dense`` and the activations in one ``custom_vjp``: one residual
    per layer (its output) instead of one per op.

    Args:
      params: list of ``{"w": [in, out], "b": [out]}``, one per layer, in order.
      x: floating array ``[..., in]``.
      activation: hidden activation, one of ``"sigmoid"``, ``"tanh"``, ``"relu"``, ``"identity"``.
      output_activation: the last layer's activation, from the same set.

    Returns:
      ``[..., out]`` of the last layer.

    Raises:
      TypeError, ValueError: for bad params (naming ``params[l]``), shapes or activation names.

    >>> params = [{"w": jnp.ones((3, 4)), "b": jnp.zeros(4)}, {"w": jnp.ones((4, 2)), "b": jnp.zeros(2)}]
    >>> mlp(params, jnp.ones((5, 3))).shape
    (5, 2)

    Derivation: docs/derivations/mlp.md.
    """
    for name, value in (("activation", activation), ("output_activation", output_activation)):
        if value not in ELEMENTWISE:
            raise ValueError(f"`{name}` must be one of {sorted(ELEMENTWISE)}, got {value!r}.")
    _static.check_floating(x, "x")
    if not isinstance(params, (list, tuple)) or not params:
        raise ValueError(f"`params` must be a non-empty list of {{'w', 'b'}} dicts, got {params!r}.")
    shape, name = jnp.shape(x), "x"
    for l, layer in enumerate(params):
        if not isinstance(layer, dict) or set(layer) != {"w", "b"}:
            raise ValueError(f"`params[{l}]` must be a dict with keys 'w' and 'b', got {layer!r}.")
        if layer["b"] is None:  # dense may go without a bias; every mlp layer has one
            raise ValueError(f"`params[{l}]['b']` must be an array of shape {jnp.shape(layer['w'])[1:]}, got None.")
        _check_dense_args(x, shape, layer["w"], layer["b"], name, f"params[{l}]['w']", f"params[{l}]['b']")
        shape, name = shape[:-1] + jnp.shape(layer["w"])[1:], f"layer {l}'s output"
    bias_types = tuple(_types.of(layer["b"]) for layer in params)
    return _mlp(activation, output_activation, bias_types, list(params), x)


@partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _mlp(activation, output_activation, bias_types, params, x):
    return _mlp_fwd(activation, output_activation, bias_types, params, x)[0]


def _mlp_fwd(activation, output_activation, bias_types, params, x):
    inputs = []  # a⁰ … aᴸ⁻¹, each layer's input: the rule needs activations, never a pre-activation z
    a = x
    for l, layer in enumerate(params):
        inputs.append(a)
        forward, _ = ELEMENTWISE[output_activation if l == len(params) - 1 else activation]
        a = forward(_affine_part(a, layer["w"]) + layer["b"])  # aˡ = σ(zˡ), zˡ = aˡ⁻¹ Wˡ + bˡ
    output_derivative = ELEMENTWISE[output_activation][1]
    output = None if output_derivative is None else a  # an identity output needs no aᴸ: σ' = 1
    weights = [layer["w"] for layer in params]  # biases are not needed: ∇b = Σ δ
    return a, (weights, inputs, output)


def _mlp_bwd(activation, output_activation, bias_types, res, g):  # ((W, a⁰…aᴸ⁻¹, aᴸ), ct aᴸ) -> (ct params, ct x)
    weights, inputs, output = res
    output_derivative, hidden_derivative = ELEMENTWISE[output_activation][1], ELEMENTWISE[activation][1]
    delta = g if output_derivative is None else g * output_derivative(output)  # δᴸ = ∇ₐC ⊙ σ'(zᴸ)
    grads = [None] * len(weights)
    for l in reversed(range(len(weights))):
        a_prev, w = inputs[l], weights[l]
        dw, db = _weight_and_bias_cotangents(a_prev, delta, w)  # ∇Wˡ = aˡ⁻¹ᵀ δˡ, ∇bˡ = Σ δˡ
        grads[l] = {"w": _types.like(dw, _types.of(w)), "b": _types.like(db, bias_types[l])}
        delta = _input_cotangent(delta, w, a_prev)  # (Wˡ)ᵀ δˡ: the cotangent of aˡ⁻¹
        if l > 0 and hidden_derivative is not None:
            delta = delta * hidden_derivative(a_prev)  # δˡ⁻¹ = ((Wˡ)ᵀ δˡ) ⊙ σ'(zˡ⁻¹)
    return grads, _types.like(delta, _types.of(inputs[0]))


_mlp.defvjp(_mlp_fwd, _mlp_bwd)
_mlp = jax.jit(_mlp, static_argnums=(0, 1, 2))  # one program per call (purebp/__init__.py)
