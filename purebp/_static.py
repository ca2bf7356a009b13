"""Validation and normalisation of arguments, done once, at trace time, for every op and layer.

Every check here raises a ``ValueError`` (shapes, options) or a ``TypeError`` (dtypes) whose
message names the argument in backticks, shows what it got and says what was expected. Static
options (axis, stride, window, dilation, padding) come back as hashable ints and tuples, ready to
be passed through ``jax.custom_vjp``'s ``nondiff_argnums``.
"""
from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
from jax import lax

Padding = str | tuple[tuple[int, int], ...]
# The dtypes whose rounding a rule (sigmoid's) and check_vjp treat apart: 8 and 11 significant bits.
LOW_PRECISION = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def wide_dtype(dtype) -> jnp.dtype:
    """The dtype a rule computes in: float32 for bfloat16 and float16, so that it rounds once at the
    end (flax's force_float32_reductions); float32 and float64 as they are."""
    return jnp.promote_types(dtype, jnp.float32)


def check_floating(x, name: str) -> None:
    """Raises TypeError unless ``x`` is an array (or scalar) with a floating-point dtype.

    A list or tuple is refused, as ``jax.numpy``'s functions refuse it, by name: its dtype and shape
    are ambiguous until converted."""
    _check_not_a_sequence(x, name)
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
        raise TypeError(f"`{name}` must have a floating-point dtype, got {jnp.result_type(x)}.")


def check_integer(x, name: str) -> None:
    """Raises TypeError unless ``x`` is an array (or scalar) with an integer dtype; lists as ``check_floating``."""
    _check_not_a_sequence(x, name)
    if not jnp.issubdtype(jnp.result_type(x), jnp.integer):
        raise TypeError(f"`{name}` must have an integer dtype, got {jnp.result_type(x)}.")


def _check_not_a_sequence(x, name: str) -> None:
    if isinstance(x, (list, tuple)):
        raise TypeError(f"`{name}` must be an array, got a {type(x).__name__}; convert it with jnp.asarray first.")


def check_dtype_of(a, a_name: str, like, like_name: str) -> None:
    """Raises TypeError unless ``a`` has ``like``'s dtype: weights in their input's, as lax's convolution
    demands, rather than a silent promotion of one operand."""
    if jnp.result_type(a) != jnp.result_type(like):
        raise TypeError(f"`{a_name}` must have the dtype of `{like_name}` ({jnp.result_type(like)}), got "
                        f"{jnp.result_type(a)}.")


def check_same_shape(a, a_name: str, b, b_name: str) -> None:
    """Raises ValueError unless ``a`` and ``b`` have equal shapes (no broadcasting)."""
    if jnp.shape(a) != jnp.shape(b):
        raise ValueError(
            f"`{b_name}` must have the shape of `{a_name}` {jnp.shape(a)}, got {jnp.shape(b)}.")


def check_ndim(x, name: str, expected: str, allowed: Sequence[int]) -> None:
    """Raises ValueError unless ``x.ndim`` is one of ``allowed``; ``expected`` describes the layout."""
    if jnp.ndim(x) not in allowed:
        raise ValueError(
            f"`{name}` must be {expected}, got shape {jnp.shape(x)} ({jnp.ndim(x)} dims).")


def normalize_axis(axis, ndim: int, name: str = "axis") -> int:
    """Returns ``axis`` as a non-negative int in ``[0, ndim)``."""
    try:
        axis = operator.index(axis)
    except TypeError:
        raise TypeError(f"`{name}` must be an int, got {axis!r}.") from None
    if ndim == 0:
        raise ValueError(f"`{name}` (={axis}) needs an input with at least one dim, got a scalar.")
    if not -ndim <= axis < ndim:
        raise ValueError(f"`{name}` must be in [{-ndim}, {ndim}) for an input of {ndim} dims, got {axis}.")
    return axis % ndim


def normalize_axes(axis, ndim: int, name: str = "axis") -> tuple[int, ...]:
    """Returns ``axis`` (an int, a tuple of ints, or None for every dim) as sorted non-negative ints, as
    ``jax.nn.softmax`` reads it."""
    if axis is None:
        return tuple(range(ndim))
    axes = axis if isinstance(axis, tuple) else (axis,)
    axes = tuple(sorted(normalize_axis(a, ndim, name) for a in axes))
    if len(set(axes)) != len(axes):
        raise ValueError(f"`{name}` names a dim twice: {axis!r}.")
    return axes


def mask(where, shape, name: str = "where"):
    """``where`` as a boolean array that broadcasts to ``shape`` (None stays None), as ``jax.nn``'s
    ``where=``: nonzero entries are True. A mask that would broadcast the output to a bigger shape
    is refused."""
    if where is None:
        return None
    _check_not_a_sequence(where, name)
    where = jnp.asarray(where)
    try:
        broadcast = jnp.broadcast_shapes(where.shape, tuple(shape))
    except ValueError:
        broadcast = None
    if broadcast != tuple(shape):
        raise ValueError(f"`{name}` must broadcast to the input's shape {tuple(shape)}, got shape {where.shape}.")
    return where.astype(bool)


def spatial_tuple(value, num_spatial: int, name: str) -> tuple[int, ...]:
    """Returns a positive int, or one per spatial dim, as a tuple of ``num_spatial`` ints."""
    values = (value,) * num_spatial if _is_int(value) else value
    if (not isinstance(values, Sequence) or len(values) != num_spatial
            or not all(_is_int(v) for v in values)):
        raise ValueError(
            f"`{name}` must be an int or a tuple of {num_spatial} ints (one per spatial dim), "
            f"got {value!r}.")
    values = tuple(operator.index(v) for v in values)
    if any(v < 1 for v in values):
        raise ValueError(f"`{name}` must be positive, got {value!r}.")
    return values


def normalize_padding(padding, num_spatial: int, name: str = "padding") -> Padding:
    """Returns "VALID", "SAME", or a tuple of one ``(lo, hi)`` pair of ints per spatial dim.

    Accepts the string forms (any case), an int ``p`` meaning ``(p, p)`` on every spatial dim, or
    a sequence of ``num_spatial`` pairs.
    """
    if isinstance(padding, str):
        if padding.upper() not in ("VALID", "SAME"):
            raise ValueError(f'`{name}` must be "VALID", "SAME", an int or (lo, hi) pairs, got {padding!r}.')
        return padding.upper()
    if _is_int(padding):
        pairs = ((padding, padding),) * num_spatial
    else:
        pairs = padding
    if (not isinstance(pairs, Sequence) or len(pairs) != num_spatial
            or not all(isinstance(p, Sequence) and len(p) == 2 and all(map(_is_int, p)) for p in pairs)):
        raise ValueError(
            f'`{name}` must be "VALID", "SAME", an int or a sequence of {num_spatial} (lo, hi) pairs '
            f"of ints (one per spatial dim), got {padding!r}.")
    pairs = tuple((operator.index(lo), operator.index(hi)) for lo, hi in pairs)
    if any(lo < 0 or hi < 0 for lo, hi in pairs):
        raise ValueError(f"`{name}` must be non-negative, got {padding!r}.")
    return pairs


def _is_int(value) -> bool:
    try:
        operator.index(value)
    except TypeError:
        return False
    return not isinstance(value, bool)


def positive_int(value, name: str) -> int:
    """Returns ``value`` as an int; raises ValueError unless it is a positive int (not a bool)."""
    if not _is_int(value) or operator.index(value) < 1:
        raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
    return operator.index(value)


def check_bool(value, name: str) -> None:
    """Raises TypeError unless ``value`` is a Python or NumPy bool (a static switch, not an array)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"`{name}` must be a bool, got {value!r}.")


def finite_real(value, name: str) -> float:
    """Returns ``value`` as a float: a static hyperparameter, a real Python or NumPy number (not a
    bool, not an array) that is finite."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"`{name}` must be a real number, got {value!r}.")
    if not math.isfinite(value):
        raise ValueError(f"`{name}` must be finite, got {value!r}.")
    return float(value)


def dilate_shape(sizes, dilation) -> tuple[int, ...]:
    """Extent of each dim after inserting ``dilation - 1`` gaps between neighbours: ``(n - 1) d + 1``.

    A kernel of ``k`` taps with ``rhs_dilation`` ``d`` spans ``(k - 1) d + 1`` positions (its
    effective window); an input of ``n`` positions with ``lhs_dilation`` ``s`` spans ``(n - 1) s + 1``.
    An empty dim stays empty.
    """
    return tuple((n - 1) * d + 1 if n > 0 else 0 for n, d in zip(sizes, dilation))


def num_spatial_dims(x, name: str = "x") -> int:
    """Checks the channels-last layout ``(N, *spatial, C)`` with 1 to 3 spatial dims; returns their count."""
    check_ndim(x, name, "(N, *spatial, C) with 1, 2 or 3 spatial dims", (3, 4, 5))
    return jnp.ndim(x) - 2


def padding_pairs(padding: Padding, in_spatial, window, stride) -> tuple[tuple[int, int], ...]:
    """Explicit ``(lo, hi)`` pairs for a normalised padding; ``window`` is the effective (dilated) one.

    "SAME" pads so the output has ``ceil(in / stride)`` positions, the extra pixel at the end, as
    ``lax.padtype_to_pads`` (and so XLA, flax and TensorFlow) does.
    """
    if isinstance(padding, str):
        return tuple(tuple(pair) for pair in lax.padtype_to_pads(in_spatial, window, stride, padding))
    return padding


def check_window_fits(in_spatial, pairs, window, name: str) -> None:
    """Raises ValueError if a window (kernel or pool) is larger than the padded input."""
    padded = tuple(n + lo + hi for n, (lo, hi) in zip(in_spatial, pairs))
    if any(k > n for k, n in zip(window, padded)):
        raise ValueError(
            f"`{name}` spans {tuple(window)} spatial positions, larger than the padded input "
            f"{padded} (input {tuple(in_spatial)}, padding {pairs}).")


def explicit_padding(padding, num_spatial: int, name: str = "padding") -> tuple[tuple[int, int], ...]:
    """``normalize_padding`` for ops with no window (zero_pad): an int or ``(lo, hi)`` pairs, no strings.

    "SAME" and "VALID" are defined by a window and a stride, so a string raises ValueError here.
    """
    if isinstance(padding, str):
        raise ValueError(
            f"`{name}` must be an int or a sequence of {num_spatial} (lo, hi) pairs of ints (one per "
            f'spatial dim), got {padding!r}: "SAME" and "VALID" need a window and a stride.')
    return normalize_padding(padding, num_spatial, name)
