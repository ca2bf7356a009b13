"""Plain-jnp twins of purebp's operations: the oracles that JAX's own autodiff differentiates.

Each function here has the name, signature and semantics of the purebp op it checks, written as
directly as the math allows, with no custom derivative rule. It imports no purebp op module, so a
bug in an op can never leak into its oracle. The twins do not validate their inputs.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp


def sigmoid(z):
    # = 1/(1 + e^{-z}) = e^{-softplus(-z)}: no overflow, and full relative accuracy for very negative
    # z, where 0.5 (tanh(z/2) + 1) cancels to 0 (at z < -17 in float32) and its derivative with it.
    return jnp.exp(-jnp.logaddexp(0.0, -z))


def relu(z):
    return jnp.where(z > 0, z, jnp.zeros_like(z))  # autodiff of where: derivative 0 at z = 0


def tanh(z):
    return jnp.tanh(z)


def gelu(z, approximate=True):
    if approximate:  # ½ z (1 + tanh u) as z σ(2u), its equal: jax.nn.gelu's 1 + tanh u cancels for z < −3
        return z * sigmoid(2 * jnp.sqrt(2 / jnp.pi).astype(z.dtype) * (z + 0.044715 * z ** 3))
    return z * 0.5 * jax.scipy.special.erfc(-z / jnp.sqrt(2).astype(z.dtype))  # z Φ(z)


def silu(z):
    return z * sigmoid(z)


def softplus(z):
    return jnp.logaddexp(z, 0.0)


def log_sigmoid(z):
    return -jnp.logaddexp(-z, 0.0)


def leaky_relu(z, negative_slope=0.01):
    return jnp.where(z >= 0, z, negative_slope * z)


def _max_shifted(z, axis, where):
    z = z if where is None else jnp.where(where, z, -jnp.inf)  # masked out: no part in the max or the sum
    return z - jax.lax.stop_gradient(jnp.max(z, axis, keepdims=True, initial=-jnp.inf))


def softmax(z, axis=-1, where=None):
    unnormalized = jnp.exp(_max_shifted(z, axis, where))
    p = unnormalized / unnormalized.sum(axis, keepdims=True)
    return p if where is None else jnp.where(where, p, 0)


def log_softmax(z, axis=-1, where=None):
    # Shift by the max first, as jax.nn.log_softmax does: z − logsumexp(z) rounds m + log Σ e^{z−m}
    # at the ulp of m, which for z ≈ [1e4, 1e4] in float32 is 2e-4 off the true −ln 2.
    shifted = _max_shifted(z, axis, where)
    y = shifted - logsumexp(shifted, axis, keepdims=True)
    return y if where is None else jnp.where(where, y, -jnp.inf)


def _normalised(x, axis, centre, epsilon):
    """(x − μ)/√(σ² + ε) (or x/√(mean x² + ε)) over ``axis``, in float32 for bfloat16/float16, as flax."""
    axes = axis if isinstance(axis, tuple) else (axis,)
    wide = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    if centre:
        wide = wide - wide.mean(axes, keepdims=True)
    return wide / jnp.sqrt(jnp.mean(wide ** 2, axes, keepdims=True) + epsilon), axes


def _feature_shaped(param, x, axes):
    axes = tuple(a % x.ndim for a in axes)
    return param.reshape([x.shape[a] if a in axes else 1 for a in range(x.ndim)])


def layer_norm(x, scale=None, bias=None, *, axis=-1, epsilon=1e-6):
    y, axes = _normalised(x, axis, True, epsilon)
    y = y if scale is None else y * _feature_shaped(scale, x, axes)
    return (y if bias is None else y + _feature_shaped(bias, x, axes)).astype(x.dtype)


def rms_norm(x, scale=None, *, axis=-1, epsilon=1e-6):
    y, axes = _normalised(x, axis, False, epsilon)
    return (y if scale is None else y * _feature_shaped(scale, x, axes)).astype(x.dtype)


def batch_norm(x, scale, bias, stats, *, train, momentum=0.99, epsilon=1e-5, axis_name=None):
    stats = jax.lax.stop_gradient(stats)
    if train:
        wide = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        mean = _mean_over_batch(wide, axis_name)
        var = _mean_over_batch((wide - mean) ** 2, axis_name)
    else:
        mean, var = stats["mean"], stats["var"]
        wide = x.astype(jnp.promote_types(jnp.promote_types(x.dtype, jnp.float32), mean.dtype))
    y = (wide - mean) / jnp.sqrt(var + epsilon)
    y = y if scale is None else y * scale
    y = (y if bias is None else y + bias).astype(x.dtype)
    if not train:
        return y, stats
    moved = lambda running, batch: (momentum * running + (1 - momentum) * batch).astype(running.dtype)
    return y, {"mean": moved(stats["mean"], mean), "var": moved(stats["var"], var)}


def _mean_over_batch(x, axis_name):
    mean = x.mean(tuple(range(x.ndim - 1)))
    return mean if axis_name is None else jax.lax.pmean(mean, axis_name)


def embedding(ids, table):
    return jnp.take(table, ids, axis=0)


def dropout(x, key, rate, *, deterministic=False):
    if deterministic or rate == 0:
        return x
    keep = jax.random.bernoulli(key, jnp.float32(1 - rate), x.shape)  # the same mask under x64
    return jnp.where(keep, x / (1 - rate), 0)


def dot_product_attention(query, key, value, bias=None, mask=None, *, scale=None, is_causal=False,
                          key_value_seq_lengths=None, query_block=None, key_block=None):
    batched = query.ndim == 4
    query, key, value = (a if batched else a[None] for a in (query, key, value))
    (b, t, n, h), (s, k) = query.shape, key.shape[1:3]
    key, value = (jnp.repeat(a, n // k, axis=2) for a in (key, value))  # each key/value head serves n // k
    scale = 1 / h ** 0.5 if scale is None else scale
    wide = jnp.promote_types(query.dtype, jnp.float32)
    logits = jnp.einsum("btnh,bsnh->bnts", query, key, preferred_element_type=wide) * scale
    if bias is not None:
        logits = logits + jnp.asarray(bias, wide)
    keep = jnp.ones((1, 1, t, s), bool)
    if mask is not None:
        keep = keep & mask
    if is_causal:
        keep = keep & jnp.tril(jnp.ones((t, s), bool))
    if key_value_seq_lengths is not None:
        keep = keep & (jnp.arange(s) < key_value_seq_lengths[:, None])[:, None, None, :]
    logits = jnp.where(keep, logits, -0.7 * jnp.finfo(jnp.float32).max)  # jax.nn's finite masked logit
    out = jnp.einsum("bnts,bsnh->btnh", jax.nn.softmax(logits, -1), value.astype(wide)).astype(query.dtype)
    return out if batched else out[0]


def _class_mask(where, logits, axis):
    if where is not None and jnp.ndim(where) != logits.ndim:  # a mask of whole rows, as optax
        where = jnp.expand_dims(where, axis)
    return where


def binary_cross_entropy(p, labels):
    labels = jnp.asarray(labels, p.dtype)
    return -(labels * jnp.log(p) + (1 - labels) * jnp.log1p(-p))


def sigmoid_binary_cross_entropy(logits, labels):
    labels = jnp.asarray(labels, logits.dtype)
    return -labels * jax.nn.log_sigmoid(logits) - (1 - labels) * jax.nn.log_sigmoid(-logits)


def softmax_cross_entropy(logits, labels, axis=-1, where=None):
    labels, where = jnp.asarray(labels, logits.dtype), _class_mask(where, logits, axis)
    log_p = log_softmax(logits, axis, where)
    # a masked-out class takes no part: log p = -inf there becomes 0, so its label's gradient is 0, not NaN
    return -(labels * (log_p if where is None else jnp.where(where, log_p, 0))).sum(axis)


def softmax_cross_entropy_with_integer_labels(logits, labels, axis=-1, where=None):
    where = _class_mask(where, logits, axis)
    if not isinstance(axis, int):  # several class axes: moved last and flattened, labels index them row-major
        axes = tuple(a % logits.ndim for a in axis)
        batch = tuple(d for d in range(logits.ndim) if d not in axes)
        flat = lambda a: jnp.transpose(jnp.broadcast_to(a, logits.shape), batch + axes).reshape(labels.shape + (-1,))
        logits, where, axis = flat(logits), None if where is None else flat(where), -1
    # −log p_y from the shifted log-sum-exp, not logsumexp(z) − z_y, which cancels to the ulp of m.
    classes, labels = logits.shape[axis], jnp.asarray(labels)
    # Labels in [-classes, classes), compared in their own dtype, leaving out bounds it cannot hold; a
    # row with any other label is multiplied by NaN, so its loss and its gradient are NaN.
    info = jnp.iinfo(labels.dtype)
    valid = ((labels < classes) if classes <= info.max else True) & ((labels >= -classes) if -classes >= info.min else True)
    poison = jnp.expand_dims(jnp.where(valid, 1.0, jnp.nan).astype(logits.dtype), axis)
    index = jnp.expand_dims(jnp.where(valid, labels, 0).astype(jnp.int32) % classes, axis)
    m = jax.lax.stop_gradient(jnp.max(logits, axis, keepdims=True, where=where, initial=-jnp.inf))
    shifted = logits * poison - m
    # the label's own logit, masked out or not, as optax takes it
    loss = (logsumexp(shifted, axis, keepdims=True, where=where) - jnp.take_along_axis(shifted, index, axis)).squeeze(axis)
    return loss if where is None else jnp.where(jnp.any(where, axis), loss, 0)


def squared_error(predictions, targets=None):
    errors = predictions if targets is None else predictions - jnp.asarray(targets, predictions.dtype)
    return errors**2


def l2_loss(predictions, targets=None):
    errors = predictions if targets is None else predictions - jnp.asarray(targets, predictions.dtype)
    return (0.5 * errors) * errors  # halved first: ½e² is finite where e² overflows


def dense(x, w, b=None):
    y = x @ w
    return y if b is None else y + b


_ACTIVATIONS = {"sigmoid": sigmoid, "tanh": tanh, "relu": relu, "identity": lambda z: z}


def mlp(params, x, *, activation="sigmoid", output_activation="identity"):
    for layer in params[:-1]:
        x = _ACTIVATIONS[activation](dense(x, layer["w"], layer["b"]))
    return _ACTIVATIONS[output_activation](dense(x, params[-1]["w"], params[-1]["b"]))


# Convolutions, padding and pooling: lax itself, with the int / (lo, hi) forms of purebp's
# arguments spelled out for it.

def _per_dim(value, num_spatial):
    return (value,) * num_spatial if isinstance(value, int) else tuple(value)


def _padding(padding, num_spatial):
    if isinstance(padding, str):
        return padding.upper()
    if isinstance(padding, int):
        return ((padding, padding),) * num_spatial
    return tuple(tuple(pair) for pair in padding)


def _conv_layout(num_spatial):
    spatial = "DHW"[-num_spatial:]  # channels-last: ('NHWC', 'HWIO', 'NHWC') for 2 spatial dims
    return "N" + spatial + "C", spatial + "IO", "N" + spatial + "C"


def conv(x, w, b=None, *, stride=1, padding="VALID", dilation=1, groups=1):
    n = x.ndim - 2
    y = jax.lax.conv_general_dilated(
        x, w, _per_dim(stride, n), _padding(padding, n),
        rhs_dilation=_per_dim(dilation, n), dimension_numbers=_conv_layout(n),
        feature_group_count=groups)
    return y if b is None else y + b


def conv_transpose(x, w, b=None, *, stride=1, padding="VALID", dilation=1):
    n = x.ndim - 2
    y = jax.lax.conv_transpose(
        x, w, _per_dim(stride, n), _padding(padding, n),
        rhs_dilation=_per_dim(dilation, n), dimension_numbers=_conv_layout(n),
        transpose_kernel=False)
    return y if b is None else y + b


# Padding and pooling: jnp.pad and lax.reduce_window as flax calls it. Autodiff of the max window
# reduction (select_and_scatter_add) routes each window's cotangent to its first maximum.

def zero_pad(x, padding):
    return jnp.pad(x, ((0, 0), *_padding(padding, x.ndim - 2), (0, 0)))


def _pool(x, init, op, window, stride, padding):
    n = x.ndim - 2
    window = _per_dim(window, n)
    stride = window if stride is None else _per_dim(stride, n)
    padding = _padding(padding, n)
    padding = padding if isinstance(padding, str) else ((0, 0), *padding, (0, 0))
    return jax.lax.reduce_window(x, init, op, (1, *window, 1), (1, *stride, 1), padding)


def max_pool(x, window, stride=None, padding="VALID"):
    return _pool(x, -jnp.inf, jax.lax.max, window, stride, padding)


def avg_pool(x, window, stride=None, padding="VALID", count_include_pad=True):
    sums = _pool(x, 0.0, jax.lax.add, window, stride, padding)
    if count_include_pad:
        size = 1
        for w in _per_dim(window, x.ndim - 2):
            size *= w
        return sums / size
    return sums / _pool(jnp.ones_like(x), 0.0, jax.lax.add, window, stride, padding)  # non-pad counts
