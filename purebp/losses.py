r"""Losses: binary and softmax cross entropy, fused with their activations, and squared error.

All losses are elementwise (or per row, for the softmax family) and unreduced, as in optax; take
the mean yourself. The fused rules are the point of this module: the backward pass of
``sigmoid_binary_cross_entropy`` is σ(z) − y and that of ``softmax_cross_entropy`` is p − y,
computed from stable log-sigmoid and log-sum-exp forms, never by chaining the separate rules.
Derivations: ``docs/derivations/losses.md``.
"""
from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from purebp import _static, _types
from purebp.activations import masked, row_max, shift, stable_log_softmax


def binary_cross_entropy(p, labels):
    r"""Binary cross entropy of probabilities: J = −y ln p − (1 − y) ln(1 − p), elementwise.

    Backward: p̄ = J̄ · ((1 − y)/(1 − p) − y/p), ȳ = J̄ · ln((1 − p)/p). A term whose label weight
    is 0 contributes 0, so ``p = 0`` with ``y = 0`` (and ``p = 1`` with ``y = 1``) gives a loss of 0
    and a finite gradient. Prefer ``sigmoid_binary_cross_entropy`` on logits: it never forms ``p``.

    Args:
      p: floating array of probabilities in ``[0, 1]``.
      labels: array of ``p``'s shape, targets in ``[0, 1]`` (cast to ``p``'s dtype).

    Returns:
      The loss, of ``p``'s shape and dtype.

    Raises:
      TypeError: if ``p`` is not floating.
      ValueError: if ``labels`` has another shape.

    Derivation: docs/derivations/losses.md#binary-cross-entropy.
    """
    _static.check_floating(p, "p")
    _static.check_same_shape(p, "p", labels, "labels")
    return _binary_cross_entropy(p, jnp.asarray(labels).astype(jnp.result_type(p)))


binary_cross_entropy = jax.jit(binary_cross_entropy)  # one program per call (purebp/__init__.py)


@jax.custom_vjp
def _binary_cross_entropy(p, y):
    return _binary_cross_entropy_fwd(p, y)[0]


def _binary_cross_entropy_fwd(p, y):
    # A term whose label weight is 0 is 0, even where its log is -inf (the 0 · ln 0 = 0 convention).
    return -(_weighted(y, jnp.log(p)) + _weighted(1 - y, jnp.log1p(-p))), (p, y)


def _binary_cross_entropy_bwd(res, g):  # ((p, y), ct J) -> (ct p, ct y)
    p, y = res
    # ∂J/∂p = (1 − y)/(1 − p) − y/p = (p − y) / (p(1 − p)), each term 0 where its weight is 0.
    dp = _weighted(1 - y, 1 / (1 - p)) - _weighted(y, 1 / p)
    dy = jnp.log1p(-p) - jnp.log(p)  # ∂J/∂y = ln(1 − p) − ln p
    return _types.like(g * dp, _types.of(p)), _types.like(g * dy, _types.of(y))  # replicated labels: summed


_binary_cross_entropy.defvjp(_binary_cross_entropy_fwd, _binary_cross_entropy_bwd)


def _weighted(weight, value):
    """weight · value, and 0 where the weight is 0 even if the value is infinite (0 · ∞ = 0 here).

    The where sits inside the product, so the derivative in the weight stays ``value`` at a weight of
    0 (a hard label) wherever ``value`` is finite: grad of grad through the rule (∂²J/∂p∂y) is exact.
    """
    return weight * jnp.where((weight == 0) & ~jnp.isfinite(value), 0, value)


def sigmoid_binary_cross_entropy(logits, labels):
    r"""Binary cross entropy of σ(z), fused and stable: equals ``optax.sigmoid_binary_cross_entropy``.

    Forward: J = y · softplus(−z) + (1 − y) · softplus(z), elementwise.
    Backward: z̄ = J̄ · (σ(z) − y), ȳ = −J̄ · z.

    Args:
      logits: floating array ``z``.
      labels: array of ``logits``' shape, targets in ``[0, 1]`` (cast to ``logits``' dtype).

    Returns:
      The loss, of ``logits``' shape and dtype; finite for every finite ``z``.

    Raises:
      TypeError: if ``logits`` is not floating.
      ValueError: if ``labels`` has another shape.

    >>> float(sigmoid_binary_cross_entropy(0.0, 1.0))  # ln 2
    0.6931471824645996

    Derivation: docs/derivations/losses.md#sigmoid-binary-cross-entropy.
    """
    _static.check_floating(logits, "logits")
    _static.check_same_shape(logits, "logits", labels, "labels")
    return _sigmoid_binary_cross_entropy(logits, jnp.asarray(labels).astype(jnp.result_type(logits)))


sigmoid_binary_cross_entropy = jax.jit(sigmoid_binary_cross_entropy)  # one program per call (purebp/__init__.py)


@jax.custom_vjp
def _sigmoid_binary_cross_entropy(z, y):
    return _sigmoid_binary_cross_entropy_fwd(z, y)[0]


def _sigmoid_binary_cross_entropy_fwd(z, y):
    # softplus(±z) = max(±z, 0) + log1p(e^{-|z|}): e^{-|z|} ≤ 1 never overflows, and the weighted
    # sum (not softplus(z) − y·z) keeps a well-classified example's tiny loss exact, as optax does.
    # A term whose label weight is 0 is 0, even where its softplus is inf (z = ±inf).
    tail = jnp.log1p(jnp.exp(-jnp.abs(z)))
    return _weighted(y, jnp.maximum(-z, 0) + tail) + _weighted(1 - y, jnp.maximum(z, 0) + tail), (z, y)


def _sigmoid_binary_cross_entropy_bwd(res, g):  # ((z, y), ct J) -> (ct z, ct y)
    z, y = res
    # σ(z) − y, written as (1 − y)σ(z) − yσ(−z): no 1 − σ(z) cancellation when σ(z) rounds to 1.
    dz = (1 - y) * lax.logistic(z) - y * lax.logistic(-z)
    dy = -g * z  # ∂J/∂y = softplus(−z) − softplus(z) = −z
    return _types.like(g * dz, _types.of(z)), _types.like(dy, _types.of(y))


_sigmoid_binary_cross_entropy.defvjp(_sigmoid_binary_cross_entropy_fwd, _sigmoid_binary_cross_entropy_bwd)


def softmax_cross_entropy(logits, labels, axis=-1, where=None):
    r"""Cross entropy J = −∑_i y_i log p_i of p = softmax(logits) against label probabilities y, fused.

    Equals ``optax.softmax_cross_entropy``. Forward: log p = z − m − log ∑_j e^(z_j − m), m = max_j z_j.
    Backward: z̄ = J̄ · (p ∑_i y_i − y), which is J̄ · (p − y) when the labels sum to one;
    ȳ = −J̄ · log p. Masked-out classes take no part in either.

    Args:
      logits: floating array ``z`` with the classes along ``axis``.
      labels: array of ``logits``' shape, probabilities along ``axis`` (cast to ``logits``' dtype).
      axis: the class axis, or a tuple of class axes (as optax).
      where: optional mask, as optax's: of ``logits``' shape (the classes to include) or of the loss's
        shape (the rows to include); a row with no class included has loss 0.

    Returns:
      The loss, of ``logits``' shape without ``axis``, and ``logits``' dtype. A label of 0 on a
      logit of -inf contributes 0, and a masked-out class's label gets cotangent 0 (optax gives NaN
      for both).

    Raises:
      TypeError: if ``logits`` is not floating.
      ValueError: if ``labels`` has another shape, ``axis`` is out of range or ``where`` does not fit.

    Derivation: docs/derivations/losses.md#softmax-cross-entropy.
    """
    _static.check_floating(logits, "logits")
    _static.check_same_shape(logits, "logits", labels, "labels")
    return _softmax_cross_entropy_program(_static.normalize_axes(axis, jnp.ndim(logits)), logits, labels, where)


@partial(jax.jit, static_argnums=0)  # one program per call (purebp/__init__.py)
def _softmax_cross_entropy_program(axis, logits, labels, where):
    labels = jnp.asarray(labels).astype(jnp.result_type(logits))
    return _softmax_cross_entropy(axis, logits, labels, _class_mask(where, logits, axis))


def _class_mask(where, logits, axis):
    """optax's ``where=`` as a mask broadcastable to ``logits``: one of the loss's shape masks whole rows."""
    if where is not None and not isinstance(where, (list, tuple)) and jnp.ndim(where) != jnp.ndim(logits):
        where = jnp.expand_dims(where, axis)
    return _static.mask(where, jnp.shape(logits))


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _softmax_cross_entropy(axis, z, y, where):
    return _softmax_cross_entropy_fwd(axis, z, y, where)[0]


def _softmax_cross_entropy_fwd(axis, z, y, where):
    log_p = stable_log_softmax(z, axis, where)  # -inf where masked
    return -_weighted(masked(y, where, 0), log_p).sum(axis), (log_p, y, where)


def _softmax_cross_entropy_bwd(axis, res, g):  # ((log p, y, where), ct J) -> (ct z, ct y, ct where)
    log_p, y, where = res
    g, y = jnp.expand_dims(g, axis), masked(y, where, 0)
    dz = jnp.exp(log_p) * y.sum(axis, keepdims=True) - y  # p Σy − y, = p − y for normalised labels
    dy = -g * masked(log_p, where, 0)
    return _types.like(g * dz, _types.of(log_p)), _types.like(dy, _types.of(y)), None  # log p is typed as z


_softmax_cross_entropy.defvjp(_softmax_cross_entropy_fwd, _softmax_cross_entropy_bwd)


def softmax_cross_entropy_with_integer_labels(logits, labels, axis=-1, where=None):
    r"""Cross entropy J = logsumexp(z) − z_y of p = softmax(logits) against class indices y, fused.

    Equals the optax function of that name. Forward: J = log ∑_j e^(z_j − m) − (z_y − m), m = max_j z_j.
    Backward: z̄ = J̄ · (p − onehot(y)); integer labels get no cotangent. A masked-out class has
    p = 0; a row with no class included becomes label −1, with loss 0 and z̄ = 0.

    Args:
      logits: floating array with the classes along ``axis``.
      labels: integer array of any integer dtype, of ``logits``' shape without ``axis``, each in
        ``[-num_classes, num_classes)`` (negative ones count from the end, as in indexing, as optax);
        a label out of that range gives a NaN loss and a NaN cotangent row (values cannot be checked
        at trace time).
      axis: the class axis, or a tuple of them, whose positions a label then indexes in row-major
        order (as optax).
      where: optional mask, as optax's: of ``logits``' shape (the classes the log-sum-exp includes)
        or of ``labels``' shape (the rows to include); a row with no class included has loss 0.

    Returns:
      The loss, of ``labels``' shape and ``logits``' dtype.

    Raises:
      TypeError: if ``logits`` is not floating or ``labels`` is not integer.
      ValueError: if ``labels`` has the wrong shape, ``axis`` is out of range or ``where`` does not fit.

    Derivation: docs/derivations/losses.md#integer-labels.
    """
    _static.check_floating(logits, "logits")
    _static.check_integer(labels, "labels")
    axes = _static.normalize_axes(axis, jnp.ndim(logits))
    batch_shape = tuple(n for d, n in enumerate(jnp.shape(logits)) if d not in axes)
    if jnp.shape(labels) != batch_shape:
        without = f"axis {axes[0]}" if len(axes) == 1 else f"axes {axes}"
        raise ValueError(f"`labels` must have the shape of `logits` {jnp.shape(logits)} without {without}, "
                         f"{batch_shape}, got {jnp.shape(labels)}.")
    return _integer_labels_program(axes, logits, labels, where)


@partial(jax.jit, static_argnums=0)  # one program per call (purebp/__init__.py)
def _integer_labels_program(axes, logits, labels, where):
    where = _class_mask(where, logits, axes)
    if len(axes) == 1:
        axis = axes[0]
    else:  # several class axes (or none): flattened into one, last, as optax does
        logits, where = _classes_last(logits, where, axes)
        axis = jnp.ndim(logits) - 1
    rows = None if where is None else jnp.broadcast_to(where, jnp.shape(logits)).any(axis)
    return _softmax_cross_entropy_with_integer_labels(
        axis, logits, _class_index(labels, jnp.shape(logits)[axis], rows), where)


def _classes_last(logits, where, axes):
    """``logits`` (and ``where``) with the class axes moved last and flattened into one, in row-major order."""
    batch = tuple(d for d in range(jnp.ndim(logits)) if d not in axes)
    shape = tuple(jnp.shape(logits)[d] for d in batch) + (math.prod(jnp.shape(logits)[d] for d in axes),)
    if where is not None:
        where = jnp.transpose(jnp.broadcast_to(where, jnp.shape(logits)), batch + axes).reshape(shape)
    return jnp.transpose(logits, batch + axes).reshape(shape), where


def _class_index(labels, classes, rows=None):
    """int32 class indices: labels in ``[-classes, classes)`` counted from the end where negative, as
    indexing does, once; any other label becomes ``classes``, which the rule turns into NaN, and a row
    ``rows`` masks out becomes -1, which the rule turns into a loss of 0 and no cotangent.

    The range is checked in the labels' own dtype, with bounds the dtype cannot hold left out (int8
    labels and 200 classes), before any cast could wrap a label into range (uint32 above 2³¹).
    """
    labels = jnp.asarray(labels)
    info = jnp.iinfo(labels.dtype)
    valid = jnp.ones(labels.shape, bool)
    if classes <= info.max:
        valid = valid & (labels < classes)
    if -classes >= info.min:
        valid = valid & (labels >= -classes)
    index = labels.astype(jnp.int32)
    index = jnp.where(valid, jnp.where(index < 0, index + classes, index), classes)
    return index if rows is None else jnp.where(rows, index, -1)


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _softmax_cross_entropy_with_integer_labels(axis, z, labels, where):
    return _softmax_cross_entropy_with_integer_labels_fwd(axis, z, labels, where)[0]


def _softmax_cross_entropy_with_integer_labels_fwd(axis, z, labels, where):
    z_included = masked(z, where, -jnp.inf)
    m = row_max(z_included, axis)
    unnormalized = jnp.exp(shift(z_included, m))
    normalizer = unnormalized.sum(axis, keepdims=True)
    classes = z.shape[axis]
    # The label's own logit, masked out or not, as optax takes it.
    label_logit = shift(jnp.take_along_axis(z, jnp.expand_dims(labels % max(classes, 1), axis), axis), m)
    # log Σe^{z−m} − (z_y − m), not logsumexp(z) − z_y as optax: when z_y is the max the loss is
    # log Σe^{z−m} exactly, with no rounding of m + log Σ … against z_y (optax differs by ulps of m).
    loss = (jnp.log(normalizer) - label_logit).squeeze(axis)
    loss = jnp.where(labels < 0, 0, jnp.where(labels < classes, loss, jnp.nan))  # masked row: 0; bad label: NaN
    # p is 0 where masked, and the masked rows' labels (-1) drop from the one-hot: the rule needs no mask.
    return loss, (masked(unnormalized / normalizer, where, 0), labels)


def _softmax_cross_entropy_with_integer_labels_bwd(axis, res, g):  # ((p, labels), ct J) -> (ct z, -, -)
    p, labels = res
    dz = jnp.expand_dims(g, axis) * (p - _one_hot(labels, p, axis))  # ∂J/∂z = p − onehot(y)
    dz = jnp.where(jnp.expand_dims(labels < p.shape[axis], axis), dz, jnp.nan)  # a bad label's row: NaN
    return _types.like(dz, _types.of(p)), None, None  # p is typed as z


_softmax_cross_entropy_with_integer_labels.defvjp(
    _softmax_cross_entropy_with_integer_labels_fwd, _softmax_cross_entropy_with_integer_labels_bwd)


def _one_hot(labels, like, axis):
    """onehot(labels) along ``axis``, in ``like``'s shape, dtype and sharding; out-of-range labels (``classes``,
    and -1) drop.

    Ones scattered at the labels: the transpose of the forward's ``take_along_axis`` gather, with
    every other dim a batching dim, as that gather has, so each example's row is its own (and
    sharded batches stay sharded). A compare against an iota gives the same array, but in a
    training step XLA:CPU then ran the big matmuls around it on one thread in ~40% of the steps
    (MLP 784-1024-1024-10, batch 256: p90 22.3 ms against a median of 17.1; scattered: p90 17.4).
    ``jnp.put_along_axis`` builds the same scatter from an unsharded iota, which Explicit mesh
    axes refuse.
    """
    batch = tuple(d for d in range(like.ndim) if d != axis)
    numbers = lax.ScatterDimensionNumbers(
        update_window_dims=(), inserted_window_dims=(axis,), scatter_dims_to_operand_dims=(axis,),
        operand_batching_dims=batch, scatter_indices_batching_dims=tuple(range(labels.ndim)))
    return lax.scatter(jnp.zeros_like(like), labels[..., None], jnp.ones_like(labels, like.dtype), numbers,
                       mode=lax.GatherScatterMode.FILL_OR_DROP)


def squared_error(predictions, targets=None):
    r"""Squared error J = (p − t)², elementwise, as ``optax.squared_error``.

    Backward: p̄ = 2 J̄ · (p − t), t̄ = −p̄; the difference p − t is the only residual.

    Args:
      predictions: floating array ``p``.
      targets: array of ``predictions``' shape, or None for zeros. No broadcasting.

    Returns:
      The loss, of ``predictions``' shape and dtype.

    Raises:
      TypeError: if ``predictions`` is not floating.
      ValueError: if ``targets`` has another shape.

    Derivation: docs/derivations/losses.md#squared-error.
    """
    return _squared_error_family(2.0, predictions, targets)


def l2_loss(predictions, targets=None):
    r"""Half the squared error J = ½ (p − t)², elementwise, as ``optax.l2_loss``.

    Backward: p̄ = J̄ · (p − t), t̄ = −p̄.

    Args, Returns and Raises as ``squared_error``.

    Derivation: docs/derivations/losses.md#squared-error.
    """
    return _squared_error_family(1.0, predictions, targets)


@partial(jax.jit, static_argnums=0)  # one program per call (purebp/__init__.py)
def _squared_error_family(slope, predictions, targets):
    _static.check_floating(predictions, "predictions")
    if targets is None:
        targets = jnp.zeros_like(predictions)  # its cotangent is dead code that jit removes
    _static.check_same_shape(predictions, "predictions", targets, "targets")
    targets = jnp.asarray(targets).astype(jnp.result_type(predictions))
    return _scaled_squared_error(slope, (_types.of(predictions), _types.of(targets)), predictions, targets)


# `types`: p's and t's types, static, as the only residual p − t is typed as both together.
@partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _scaled_squared_error(slope, types, p, t):
    return _scaled_squared_error_fwd(slope, types, p, t)[0]


def _scaled_squared_error_fwd(slope, types, p, t):
    error = p - t
    # slope 2: (p − t)²; slope 1: ½(p − t)², halved before the square, which would overflow where
    # the half does not (p − t = 300 in float16, 2e19 in float32); halving is exact, so nothing else changes.
    return ((slope / 2) * error) * error, error


def _scaled_squared_error_bwd(slope, types, error, g):  # (p − t, ct J) -> (ct p, ct t)
    dp = g * (slope * error)  # ∂J/∂p = slope · (p − t)
    return _types.like(dp, types[0]), _types.like(-dp, types[1])


_scaled_squared_error.defvjp(_scaled_squared_error_fwd, _scaled_squared_error_bwd)
