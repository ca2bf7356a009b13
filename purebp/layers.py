"""Layers as pure ``init``/``apply`` pairs over parameter pytrees, in the manner of stax.

Each constructor returns a ``Layer(init, apply)`` (plus ``init_state`` and ``takes`` for the few
layers that need randomness or state, below):

- ``init(key, input_shape) -> (output_shape, params)``, where ``input_shape`` includes the batch
  dim. Params are ``{"w", "b"}`` dicts, ``{}`` for layers without parameters, and a list of the
  children's params for ``serial``. The output shape is inferred by abstract evaluation
  (``jax.eval_shape``: no FLOPs, no memory), which also runs the op's own validation, so a bad
  ``input_shape`` fails in ``init`` with an error naming the layer.
- ``apply(params, x) -> y`` calls purebp's ops, so every gradient taken through a model flows
  through hand-written VJPs.

Randomness and state extend the protocol without changing it for any other layer, as equinox
does (explicit state in, new state out, and a key per call): a layer's ``takes`` names the keyword
arguments its ``apply`` needs beyond ``(params, x)``, and ``serial`` passes each child just those.

- ``"train"``: ``apply(..., train=True | False)``, a switch between training and evaluation
  (``Dropout``, ``BatchNorm``). Required: a model that acts differently in the two is never run
  in a mode nobody chose.
- ``"key"``: ``apply(..., key=k)``, a PRNG key per call in training (``Dropout``); ``serial`` splits
  its key into one per child, as stax's ``rng``.
- ``"state"``: the layer has ``init_state(input_shape) -> state``, and ``apply(params, x, state=s,
  train=...)`` returns ``(y, new_state)`` (``BatchNorm``'s running statistics). For ``serial`` the
  state is a list with one entry per child (``{}`` for a child without state), as its params are.

State stays apart from params, so that an optimizer never updates it, as flax's ``batch_stats``
collection and haiku's ``transform_with_state`` keep it apart; ``purebp.training`` threads it
through each step (``make_train_step(..., has_state=True)``, ``fit(..., state=)``), evaluates
with it and checkpoints it beside the params.

Layouts are the ops': dense ``x[..., in] @ w[in, out]``, convolutions channels-last
``(N, *spatial, C)`` with kernels ``(*kernel, C_in // groups, C_out)``. Weights default to LeCun
normal (``jax.nn.initializers.lecun_normal``, flax's default: variance 1 / fan_in) and biases to
zeros; pass ``w_init``/``b_init`` (any ``jax.nn.initializers`` function) to override, e.g.
``he_normal()`` for relu networks or ``glorot_uniform()`` for sigmoid and tanh ones. Params are
float32 (``param_dtype=jnp.float32``, flax's default) with or without x64: the ops take weights of
their input's dtype, so pass ``param_dtype`` for data of another.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.nn import initializers

import purebp
from purebp import _static


CONTEXT = ("key", "train", "state")  # the keyword arguments a layer's apply may take, in this order


class Layer(NamedTuple):
    """A pure layer: ``init(key, input_shape) -> (output_shape, params)``, ``apply(params, x) -> y``.

    ``takes`` names what ``apply`` needs besides, of ``"key"``, ``"train"`` and ``"state"`` (see the
    module's docstring); a layer with ``"state"`` has ``init_state(input_shape) -> state`` and its
    ``apply`` returns ``(y, new_state)``.
    """

    init: Callable
    apply: Callable
    init_state: Callable | None = None
    takes: frozenset = frozenset()


def _layer(name: str, make_params: Callable, apply: Callable, dtype=jnp.float32, *, takes=frozenset(),
           make_state: Callable | None = None) -> Layer:
    """A Layer whose init makes params with ``make_params(key, x)`` and infers the output shape.

    ``x`` is the abstract input (a ``jax.ShapeDtypeStruct`` of the params' ``dtype``), so
    ``make_params`` can validate it with the ops' own checks before reading its shape. ``apply``
    takes the keyword arguments named in ``takes``; with ``make_state(x) -> state`` the layer has
    state, and ``apply`` returns ``(y, new_state)``.
    """
    takes = frozenset(takes) | ({"state"} if make_state else frozenset())

    def abstract_context(x):  # what init's shape inference passes for the context: training, with a key
        return {"key": jax.random.key(0), "train": True, "state": make_state(x) if make_state else None}

    def init(key, input_shape):
        _check_key(name, key)
        x = jax.ShapeDtypeStruct(_check_shape(name, input_shape), dtype)
        try:
            params = make_params(key, x)
            context = {k: v for k, v in abstract_context(x).items() if k in takes}
            output = jax.eval_shape(lambda params, x: apply(params, x, **context), params, x)
        except (TypeError, ValueError) as error:
            raise type(error)(f"{name} cannot take input_shape {x.shape}: {error}") from None
        return (output[0] if make_state else output).shape, params

    def init_state(input_shape):
        x = jax.ShapeDtypeStruct(_check_shape(name, input_shape), dtype)
        try:
            return make_state(x)
        except (TypeError, ValueError) as error:
            raise type(error)(f"{name} cannot take input_shape {x.shape}: {error}") from None

    def named_apply(params, x, **context):
        """``apply``, its errors naming the layer, the shape it got and, for a missing key, its params."""
        _check_context(name, takes, context)
        try:
            return apply(params, x, **context)
        except KeyError as error:
            raise ValueError(f"{name} needs params with the key {error}, got {_describe(params)}: are these "
                             f"another layer's params?") from None
        except (TypeError, ValueError) as error:
            raise type(error)(f"{name} cannot take `x` of shape {jnp.shape(x)}: {error}") from None

    return Layer(init, named_apply, init_state if make_state else None, takes)


def _check_context(name, takes, context, harmless=frozenset()):
    """Refuses keyword arguments the layer does not take (but the ``harmless`` ones), and a missing
    one that it does."""
    if unknown := sorted(set(context) - takes - harmless):
        taken = f"takes only {', '.join(f'`{k}`' for k in CONTEXT if k in takes)}" if takes else "takes none"
        raise TypeError(f"{name}.apply got the keyword argument(s) {', '.join(map(repr, unknown))} but {taken}.")
    if "train" in takes and not isinstance(context.get("train"), (bool, np.bool_)):
        raise TypeError(f"{name} acts differently in training and in evaluation: pass `train=True`"
                        f"{' with a `key`' if 'key' in takes else ''} or `train=False`, got "
                        f"{context.get('train')!r}.")
    if "key" in takes and context["train"] and context.get("key") is None:
        raise TypeError(f"{name} draws random numbers in training: pass `key=` with `train=True`.")
    if "state" in takes and context.get("state") is None:
        raise TypeError(f"{name} has state: pass `state=` (from its init_state, or the last apply's) and "
                        f"take `(y, new_state)` back.")


def _describe(params) -> str:
    """A params pytree in a few words, never its arrays' values."""
    if isinstance(params, dict):
        return f"a dict with keys {sorted(params)}"
    if isinstance(params, (list, tuple)):
        return f"a {type(params).__name__} of {len(params)}"
    return f"{type(params).__name__} {jnp.shape(params) if hasattr(params, 'shape') else params!r}"


def _check_shape(name, input_shape):
    """``input_shape`` as a tuple of ints (NumPy integers too); an array gets told to pass its ``.shape``."""
    if hasattr(input_shape, "shape") and hasattr(input_shape, "dtype"):  # the data itself: the flax habit
        raise TypeError(f"{name}: `input_shape` must be a shape (batch dim included), got an array of shape "
                        f"{tuple(input_shape.shape)}; pass its `.shape`.")
    if (not isinstance(input_shape, Sequence) or not all(
            isinstance(d, (int, np.integer)) and not isinstance(d, (bool, np.bool_)) and d >= 0 for d in input_shape)):
        raise TypeError(f"{name}: `input_shape` must be a tuple of non-negative ints (batch dim included), "
                        f"got {input_shape!r}.")
    return tuple(int(d) for d in input_shape)


def _check_key(name, key):
    """A PRNG key: a typed key (``jax.random.key``) or a raw uint32 ``(2,)`` one (``jax.random.PRNGKey``)."""
    dtype, shape = getattr(key, "dtype", None), getattr(key, "shape", None)
    typed = dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key) and shape == ()
    raw = dtype == jnp.uint32 and shape == (2,)
    if not (typed or raw):
        raise TypeError(f"{name}: `key` must be a PRNG key, e.g. jax.random.PRNGKey(0) or jax.random.key(0), "
                        f"got {type(key).__name__}{'' if shape is None else f' of shape {shape} and dtype {dtype}'}.")


def _check_has_features(x):
    """A dense layer's input needs a last (feature) dim: any rank but 0."""
    _static.check_ndim(x, "x", "[..., in] with at least one dim", range(1, x.ndim + 1))


def _param_dtype(param_dtype):
    """The params' dtype, a floating one: float32 by default, as flax's ``param_dtype``, whether or
    not x64 is on, so that a model initialised for float32 data takes float32 data."""
    if not jnp.issubdtype(param_dtype, jnp.floating):
        raise TypeError(f"`param_dtype` must be a floating-point dtype, got {param_dtype!r}.")
    return jnp.dtype(param_dtype)


def _no_params(key, x):
    return {}


def Dense(features: int, *, w_init=initializers.lecun_normal(), b_init=initializers.zeros,
          param_dtype=jnp.float32) -> Layer:
    """``purebp.dense`` with params ``{"w": [in, features], "b": [features]}`` in ``param_dtype``."""
    features, param_dtype = _static.positive_int(features, "features"), _param_dtype(param_dtype)

    def make_params(key, x):
        _check_has_features(x)
        w_key, b_key = jax.random.split(key)
        return {"w": w_init(w_key, (x.shape[-1], features), param_dtype),
                "b": b_init(b_key, (features,), param_dtype)}

    return _layer(f"Dense({features})", make_params, lambda params, x: purebp.dense(x, params["w"], params["b"]),
                  param_dtype)


def Conv(features: int, kernel_size, stride=1, padding="SAME", dilation=1, groups: int = 1,
         use_bias: bool = True, *, w_init=initializers.lecun_normal(), b_init=initializers.zeros,
         param_dtype=jnp.float32) -> Layer:
    """``purebp.conv`` with params ``{"w": (*kernel_size, C_in // groups, features), "b": [features]}``.

    ``"b"`` is absent when ``use_bias`` is False. Options as ``purebp.conv``. The spatial rank is the
    layer's: the first of ``kernel_size``, ``stride``, ``dilation``, ``padding`` given as a sequence
    (one entry per spatial dim) fixes it, and with ints alone it is 2; an input of another rank is
    refused. ``Conv(8, 3)`` takes ``(N, H, W, C)``, ``Conv(8, (3,))`` takes ``(N, W, C)``.
    """
    name = f"Conv({features}, {kernel_size})"
    features, groups = _static.positive_int(features, "features"), _static.positive_int(groups, "groups")
    param_dtype = _param_dtype(param_dtype)
    rank = _spatial_rank(kernel_size, stride, dilation, padding)
    kernel = _static.spatial_tuple(kernel_size, rank, "kernel_size")

    def make_params(key, x):
        return _kernel_and_bias(key, kernel + (x.shape[-1] // groups, features), use_bias, w_init, b_init,
                                param_dtype)

    def apply(params, x):
        return purebp.conv(x, params["w"], params.get("b"), stride=stride, padding=padding, dilation=dilation,
                           groups=groups)

    return _layer(name, make_params, _of_rank(name, rank, apply), param_dtype)


def ConvTranspose(features: int, kernel_size, stride=1, padding="SAME", dilation=1, use_bias: bool = True, *,
                  w_init=initializers.lecun_normal(), b_init=initializers.zeros, param_dtype=jnp.float32) -> Layer:
    """``purebp.conv_transpose`` with params ``{"w": (*kernel_size, C_in, features), "b": [features]}``.

    The spatial rank as ``Conv``'s: fixed by the first option given as a sequence, else 2.
    """
    name = f"ConvTranspose({features}, {kernel_size})"
    features, param_dtype = _static.positive_int(features, "features"), _param_dtype(param_dtype)
    rank = _spatial_rank(kernel_size, stride, dilation, padding)
    kernel = _static.spatial_tuple(kernel_size, rank, "kernel_size")

    def make_params(key, x):
        return _kernel_and_bias(key, kernel + (x.shape[-1], features), use_bias, w_init, b_init, param_dtype)

    def apply(params, x):
        return purebp.conv_transpose(x, params["w"], params.get("b"), stride=stride, padding=padding,
                                     dilation=dilation)

    return _layer(name, make_params, _of_rank(name, rank, apply), param_dtype)


def _spatial_rank(*options) -> int:
    """The spatial rank the first per-dimension option given as a sequence fixes (a kernel size, a
    stride, explicit ``(lo, hi)`` pairs: one entry per spatial dim), 2 when every option is an int
    or a padding name, as ``Conv2d``/``Conv2D``: the rank is the layer's, never the input's."""
    for option in options:
        if isinstance(option, Sequence) and not isinstance(option, str):
            return len(option)
    return 2


def _of_rank(name: str, rank: int, apply: Callable) -> Callable:
    """``apply``, refusing an input whose spatial rank is not ``rank`` with the layout it expects."""
    layout = "(N, " + ", ".join("DHW"[3 - rank:]) + ", C)" if 1 <= rank <= 3 else f"(N, {rank} spatial dims, C)"

    def checked(params, x):
        if jnp.ndim(x) != rank + 2:
            raise ValueError(f"{name} takes {rank}-D inputs {layout}, got `x` of shape {jnp.shape(x)}; give "
                             f"the layer a tuple of {jnp.ndim(x) - 2} kernel/window sizes for another rank."
                             if jnp.ndim(x) > 2 else
                             f"{name} takes {rank}-D inputs {layout}, got `x` of shape {jnp.shape(x)}.")
        return apply(params, x)

    return checked


def _kernel_and_bias(key, kernel_shape, use_bias, w_init, b_init, dtype):
    w_key, b_key = jax.random.split(key)
    params = {"w": w_init(w_key, kernel_shape, dtype)}
    if use_bias:
        params["b"] = b_init(b_key, kernel_shape[-1:], dtype)
    return params


def MaxPool(window, stride=None, padding="VALID") -> Layer:
    """``purebp.max_pool``; no params. Its spatial rank as ``Conv``'s: ``MaxPool(2)`` is 2-D, ``MaxPool((2,))`` 1-D."""
    name = f"MaxPool({window})"
    return _layer(name, _no_params, _of_rank(name, _spatial_rank(window, stride, padding),
                                             lambda params, x: purebp.max_pool(x, window, stride=stride, padding=padding)))


def AvgPool(window, stride=None, padding="VALID", count_include_pad: bool = True) -> Layer:
    """``purebp.avg_pool``; no params. Its spatial rank as ``MaxPool``'s."""
    name = f"AvgPool({window})"
    return _layer(name, _no_params, _of_rank(name, _spatial_rank(window, stride, padding), lambda params, x: purebp.avg_pool(
        x, window, stride=stride, padding=padding, count_include_pad=count_include_pad)))


def ZeroPad(padding) -> Layer:
    """``purebp.zero_pad`` of the spatial dims; no params. An int pads a 2-D input; one pair per dim fixes the rank."""
    name = f"ZeroPad({padding})"
    return _layer(name, _no_params, _of_rank(name, _spatial_rank(padding), lambda params, x: purebp.zero_pad(x, padding)))


def Embed(num_embeddings: int, features: int, *,
          embedding_init=initializers.variance_scaling(1.0, "fan_in", "normal", out_axis=0),
          param_dtype=jnp.float32) -> Layer:
    """``purebp.embedding`` of integer ids with params ``{"embedding": (num_embeddings, features)}``.

    flax.linen.Embed's name and default initialiser (unit variance per row). Its input is integer
    ids of any shape; the output adds a last dim of ``features``.
    """
    num_embeddings, features = (_static.positive_int(num_embeddings, "num_embeddings"),
                                _static.positive_int(features, "features"))
    param_dtype = _param_dtype(param_dtype)

    def make_params(key, ids):
        return {"embedding": embedding_init(key, (num_embeddings, features), param_dtype)}

    return _layer(f"Embed({num_embeddings}, {features})", make_params,
                  lambda params, ids: purebp.embedding(ids, params["embedding"]), jnp.int32)


def LayerNorm(axis=-1, epsilon: float = 1e-6, use_scale: bool = True, use_bias: bool = True, *,
              scale_init=initializers.ones, bias_init=initializers.zeros, param_dtype=jnp.float32) -> Layer:
    """``purebp.layer_norm`` over ``axis`` with params ``{"scale", "bias"}`` of those axes' shape (flax's names).

    ``"scale"`` is absent when ``use_scale`` is False, ``"bias"`` when ``use_bias`` is.
    """
    return _norm_layer("LayerNorm", purebp.layer_norm, axis, epsilon, use_scale, use_bias, scale_init, bias_init,
                       param_dtype)


def RMSNorm(axis=-1, epsilon: float = 1e-6, use_scale: bool = True, *, scale_init=initializers.ones,
            param_dtype=jnp.float32) -> Layer:
    """``purebp.rms_norm`` over ``axis`` with params ``{"scale"}`` of those axes' shape (absent without ``use_scale``)."""
    return _norm_layer("RMSNorm", purebp.rms_norm, axis, epsilon, use_scale, False, scale_init, None, param_dtype)


def _affine_inits(use_scale, use_bias, scale_init, bias_init) -> dict:
    """A normalisation's initialisers of γ ("scale") and β ("bias"), of those it uses."""
    _static.check_bool(use_scale, "use_scale")
    _static.check_bool(use_bias, "use_bias")
    return {name: init for name, init, used in (("scale", scale_init, use_scale), ("bias", bias_init, use_bias))
            if used}


def _affine_params(inits, key, shape, dtype) -> dict:
    return {name: init(k, shape, dtype) for (name, init), k in zip(inits.items(), jax.random.split(key))}


def _norm_layer(name, op, axis, epsilon, use_scale, use_bias, scale_init, bias_init, param_dtype):
    inits, param_dtype = _affine_inits(use_scale, use_bias, scale_init, bias_init), _param_dtype(param_dtype)

    def make_params(key, x):
        return _affine_params(inits, key, tuple(x.shape[a] for a in _static.normalize_axes(axis, x.ndim)), param_dtype)

    def apply(params, x):
        return op(x, *(params[name] for name in inits), axis=axis, epsilon=epsilon)

    return _layer(f"{name}(axis={axis})", make_params, apply, param_dtype)


def BatchNorm(momentum: float = 0.99, epsilon: float = 1e-5, axis_name=None, use_scale: bool = True,
              use_bias: bool = True, *, scale_init=initializers.ones, bias_init=initializers.zeros,
              param_dtype=jnp.float32) -> Layer:
    """``purebp.batch_norm`` of channels-last input: params ``{"scale", "bias"}`` and state
    ``{"mean", "var"}``, each ``(C,)`` (flax's names; the state starts at zeros and ones).

    ``apply(params, x, state=s, train=True)`` normalises with the batch's statistics and returns
    ``(y, new_state)``, the running statistics moved towards them by ``momentum``;
    ``train=False`` uses ``state`` and returns it unchanged. ``axis_name`` names the mapped axis
    over which the batch is split (``jax.shard_map``), as ``batch_norm``'s.
    """
    inits, param_dtype = _affine_inits(use_scale, use_bias, scale_init, bias_init), _param_dtype(param_dtype)

    def make_params(key, x):
        _static.check_ndim(x, "x", "(N, ..., C), channels last", range(2, max(x.ndim, 2) + 1))
        return _affine_params(inits, key, x.shape[-1:], param_dtype)

    def make_state(x):
        _static.check_ndim(x, "x", "(N, ..., C), channels last", range(2, max(x.ndim, 2) + 1))
        return {"mean": jnp.zeros(x.shape[-1:], param_dtype), "var": jnp.ones(x.shape[-1:], param_dtype)}

    def apply(params, x, *, train, state):
        return purebp.batch_norm(x, params.get("scale"), params.get("bias"), state, train=train, momentum=momentum,
                                 epsilon=epsilon, axis_name=axis_name)

    return _layer(f"BatchNorm(momentum={momentum})", make_params, apply, param_dtype, takes={"train"},
                  make_state=make_state)


def Dropout(rate: float) -> Layer:
    """``purebp.dropout`` at ``rate`` (the probability of dropping an element, flax's meaning); no params.

    ``apply(params, x, key=k, train=True)`` drops with the key; ``train=False`` returns ``x``.
    """
    rate = _static.finite_real(rate, "rate")
    if not 0 <= rate <= 1:
        raise ValueError(f"`rate` must be a probability in [0, 1] (of dropping an element), got {rate!r}.")

    def apply(params, x, *, train, key=None):
        return purebp.dropout(x, key, rate, deterministic=not train)

    return _layer(f"Dropout({rate})", _no_params, apply, takes={"key", "train"})


def MultiHeadAttention(num_heads: int, qkv_features: int | None = None, out_features: int | None = None,
                       is_causal: bool = False, *, w_init=initializers.lecun_normal(), b_init=initializers.zeros,
                       param_dtype=jnp.float32) -> Layer:
    """Self-attention over ``(B, T, D)``: ``dense`` projections to ``num_heads`` query, key and value
    heads, ``purebp.dot_product_attention`` (blockwise, FlashAttention-2's backward) and an output
    ``dense``. Params ``{"query", "key", "value", "out"}``, each ``{"w", "b"}``: ``(D, qkv_features)``
    for the three projections, ``(qkv_features, out_features)`` for the output; both default to D.
    """
    num_heads = _static.positive_int(num_heads, "num_heads")
    qkv_features, out_features = (None if f is None else _static.positive_int(f, name)
                                  for f, name in ((qkv_features, "qkv_features"), (out_features, "out_features")))
    _static.check_bool(is_causal, "is_causal")
    param_dtype = _param_dtype(param_dtype)

    def make_params(key, x):
        _static.check_ndim(x, "x", "(B, T, D)", (3,))
        d = x.shape[-1]
        qkv, out = qkv_features or d, out_features or d
        if qkv % num_heads:
            raise ValueError(f"`qkv_features` ({qkv}) must be a multiple of `num_heads` ({num_heads}).")
        shapes = {"query": (d, qkv), "key": (d, qkv), "value": (d, qkv), "out": (qkv, out)}
        keys = jax.random.split(key, 2 * len(shapes))
        return {name: {"w": w_init(keys[2 * i], shape, param_dtype), "b": b_init(keys[2 * i + 1], shape[1:], param_dtype)}
                for i, (name, shape) in enumerate(shapes.items())}

    def apply(params, x):
        b, t, _ = x.shape
        heads = lambda name: purebp.dense(x, params[name]["w"], params[name]["b"]).reshape(b, t, num_heads, -1)
        o = purebp.dot_product_attention(heads("query"), heads("key"), heads("value"), is_causal=is_causal)
        return purebp.dense(o.reshape(b, t, -1), params["out"]["w"], params["out"]["b"])

    return _layer(f"MultiHeadAttention({num_heads})", make_params, apply, param_dtype)


def PositionalEmbedding(max_length: int, *, embedding_init=initializers.normal(0.02), param_dtype=jnp.float32) -> Layer:
    """Adds a learned embedding per position to ``(B, T, D)``, ``T ≤ max_length``: params
    ``{"embedding": (max_length, D)}``, looked up with ``purebp.embedding`` (whose backward
    scatter-adds into the rows used)."""
    max_length, param_dtype = _static.positive_int(max_length, "max_length"), _param_dtype(param_dtype)

    def make_params(key, x):
        _static.check_ndim(x, "x", "(B, T, D)", (3,))
        if x.shape[1] > max_length:
            raise ValueError(f"the sequence's length {x.shape[1]} exceeds `max_length` ({max_length}).")
        return {"embedding": embedding_init(key, (max_length, x.shape[-1]), param_dtype)}

    def apply(params, x):
        return x + purebp.embedding(jnp.arange(x.shape[1]), params["embedding"])

    return _layer(f"PositionalEmbedding({max_length})", make_params, apply, param_dtype)


def Residual(*layers: Layer) -> Layer:
    """``x + serial(*layers)(x)``, a skip connection; params (and state) those of ``serial(*layers)``,
    which must keep ``x``'s shape."""
    inner = serial(*layers)

    def init(key, input_shape):
        output_shape, params = inner.init(key, input_shape)
        if output_shape != tuple(input_shape):
            raise ValueError(f"Residual adds its layers' output to their input: they must keep its shape "
                             f"{tuple(input_shape)}, got {output_shape}.")
        return output_shape, params

    def apply(params, x, **context):
        y = inner.apply(params, x, **context)
        return (x + y[0], y[1]) if "state" in inner.takes else x + y

    return Layer(init, apply, inner.init_state, inner.takes)


def TransformerBlock(features: int, num_heads: int, mlp_features: int | None = None, is_causal: bool = False) -> Layer:
    """The pre-norm transformer block on ``(B, T, features)``: ``x + attention(layer_norm(x))``, then
    ``x + mlp(layer_norm(x))`` with the MLP ``Dense(mlp_features)``, ``Gelu``, ``Dense(features)``
    (``mlp_features`` defaults to 4·features). Params: those of a ``serial`` of the two ``Residual`` layers."""
    features = _static.positive_int(features, "features")
    mlp_features = 4 * features if mlp_features is None else _static.positive_int(mlp_features, "mlp_features")
    return serial(Residual(LayerNorm(), MultiHeadAttention(num_heads, is_causal=is_causal)),
                  Residual(LayerNorm(), Dense(mlp_features), Gelu(), Dense(features)))


def Flatten() -> Layer:
    """Flattens every dim after the batch dim; no params. (A reshape: its VJP is the inverse reshape.)"""
    return _layer("Flatten()", _no_params, lambda params, x: x.reshape(x.shape[0], math.prod(x.shape[1:])))


def _activation(name: str, op: Callable) -> Callable[[], Layer]:
    def constructor() -> Layer:
        return _layer(f"{name}()", _no_params, lambda params, x: op(x))

    constructor.__name__ = constructor.__qualname__ = name
    constructor.__doc__ = f"``purebp.{op.__name__}`` as a layer; no params."
    return constructor


Sigmoid = _activation("Sigmoid", purebp.sigmoid)
Relu = _activation("Relu", purebp.relu)
Tanh = _activation("Tanh", purebp.tanh)
Silu = _activation("Silu", purebp.silu)


def Gelu(approximate: bool = True) -> Layer:
    """``purebp.gelu`` as a layer (the tanh form unless ``approximate=False``); no params."""
    _static.check_bool(approximate, "approximate")
    return _layer(f"Gelu(approximate={approximate})", _no_params, lambda params, x: purebp.gelu(x, approximate))


Softmax = _activation("Softmax", purebp.softmax)
LogSoftmax = _activation("LogSoftmax", purebp.log_softmax)


def MLP(sizes: Sequence[int], activation: str = "sigmoid", output_activation: str = "identity", *,
        w_init=initializers.lecun_normal(), b_init=initializers.zeros, param_dtype=jnp.float32) -> Layer:
    """``purebp.mlp``, the whole network as one VJP; params are a list of ``{"w", "b"}``.

    ``sizes`` lists the widths after the input: ``MLP((64, 10))`` is one hidden layer of 64 and an
    output of 10, the input width coming from ``input_shape``.
    """
    if not isinstance(sizes, Sequence):
        raise TypeError(f"MLP: `sizes` must be a sequence of the layers' widths after the input, e.g. (64, 10), "
                        f"got {sizes!r}.")
    sizes = tuple(_static.positive_int(size, f"sizes[{i}]") for i, size in enumerate(sizes))
    param_dtype = _param_dtype(param_dtype)
    if not sizes:
        raise ValueError("`sizes` must list at least one layer width, got ().")

    def make_params(key, x):
        _check_has_features(x)
        widths = (x.shape[-1],) + sizes
        keys = jax.random.split(key, 2 * len(sizes))
        return [{"w": w_init(keys[2 * l], (m, n), param_dtype), "b": b_init(keys[2 * l + 1], (n,), param_dtype)}
                for l, (m, n) in enumerate(zip(widths[:-1], widths[1:]))]

    def apply(params, x):
        return purebp.mlp(params, x, activation=activation, output_activation=output_activation)

    return _layer(f"MLP({sizes})", make_params, apply, param_dtype)


def serial(*layers: Layer) -> Layer:
    """Layers in sequence; params are the list of the children's params, one key split per child.

    ``serial`` takes what its children take. Its ``apply(params, x, *, key=None, train=None,
    state=None)`` passes each child only the arguments the child takes: ``train`` as given, one of
    ``len(layers)`` keys split from ``key``, and the child's entry of ``state``. With a child that
    has state, ``serial`` has state (a list of the children's, ``{}`` for those without), and its
    ``apply`` returns ``(y, new_state)``.
    """
    if not layers or not all(isinstance(layer, Layer) for layer in layers):
        raise TypeError(f"serial takes one or more Layers, got {layers!r}.")
    takes = frozenset().union(*(layer.takes for layer in layers))
    stateful = "state" in takes

    def init(key, input_shape):
        _check_key("serial", key)
        params = []
        for layer, layer_key in zip(layers, jax.random.split(key, len(layers))):
            input_shape, layer_params = layer.init(layer_key, input_shape)
            params.append(layer_params)
        return input_shape, params

    def init_state(input_shape):
        states = []
        for layer in layers:
            states.append(layer.init_state(input_shape) if layer.init_state else {})
            input_shape = _output_shape(layer, input_shape)
        return states

    def apply(params, x, **context):
        if not isinstance(params, (list, tuple)) or len(params) != len(layers):
            raise ValueError(f"serial of {len(layers)} layers needs a list of {len(layers)} params, one per layer, "
                             f"got {_describe(params)}.")
        _check_context("serial", takes, context, harmless={"key", "train"})  # what no child uses is ignored
        states = context.get("state")
        if stateful and (not isinstance(states, (list, tuple)) or len(states) != len(layers)):
            raise ValueError(f"serial of {len(layers)} layers needs `state` as a list of {len(layers)}, one per layer "
                             f"(its init_state's), got {_describe(states)}.")
        key = context.get("key")
        keys = [None] * len(layers) if key is None else jax.random.split(key, len(layers))
        new_states = []
        for i, (layer, layer_params) in enumerate(zip(layers, params)):
            given = {"key": keys[i], "train": context.get("train"), "state": states[i] if stateful else None}
            try:
                x = layer.apply(layer_params, x, **{k: v for k, v in given.items() if k in layer.takes})
            except (TypeError, ValueError) as error:
                raise type(error)(f"serial layer {i}: {error}") from None
            if "state" in layer.takes:
                x, state = x
            new_states.append(state if "state" in layer.takes else {})
        return (x, new_states) if stateful else x

    return Layer(init, apply, init_state if stateful else None, takes)


def _output_shape(layer: Layer, input_shape) -> tuple[int, ...]:
    """``layer``'s output shape for ``input_shape``, from its init traced abstractly: no params made."""
    shapes = []
    jax.eval_shape(lambda key: shapes.append(layer.init(key, input_shape)[0]), jax.random.key(0))
    return shapes[0]
