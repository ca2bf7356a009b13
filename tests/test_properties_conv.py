"""Property-based tests (hypothesis) for conv, conv_transpose, zero_pad, max_pool and avg_pool.

Each property draws one valid configuration (1 to 3 spatial dims, sizes up to 7, channels up to 4,
every stride / padding / dilation / group / window form the contract accepts) and asserts:

* value and VJP against the twin in ``purebp.reference``, with ``purebp.testing.check_vjp`` (a
  random cotangent from a drawn seed, with and without jit);
* value against the library that defines the semantics: ``lax.conv_general_dilated`` and
  ``lax.conv_transpose`` for the convolutions, ``jnp.pad`` for ``zero_pad``, ``flax.linen.max_pool``
  and ``avg_pool`` (stride passed explicitly) for the pools.

Configurations are built valid (each input is drawn at least as large as its padded window needs)
rather than filtered. One property per op breaks a valid configuration in one way and asserts a
``ValueError`` at trace time (under ``jax.eval_shape``) naming the argument.

Example counts come from the loaded hypothesis profile (``tests/conftest.py``); every example is a
new shape and so a new compilation, hence no deadline and a fraction of the profile's count for the
costliest properties.
"""
from __future__ import annotations

import re
from functools import partial
from typing import NamedTuple

import flax.linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from jax import lax

import purebp
from purebp import reference
from op_examples import check_first_order

LAYOUT = {1: ("NWC", "WIO", "NWC"), 2: ("NHWC", "HWIO", "NHWC"), 3: ("NDHWC", "DHWIO", "NDHWC")}
MAX_SIZE = 7  # spatial extent of an input
MAX_CHANNELS = 4


def budget(fraction=1.0):
    """The loaded profile's settings (no deadline there: every example compiles) with ``fraction`` of its examples."""
    base = settings()
    return settings(base, max_examples=max(1, round(base.max_examples * fraction)))


# ---- strategies -------------------------------------------------------------------------------

def per_dim(draw, values):
    """An int when every spatial dim has the same value (sometimes), else a tuple with one per dim."""
    if len(set(values)) == 1 and draw(st.booleans()):
        return values[0]
    return tuple(values)


def spelled(draw, padding):
    """A string padding in a drawn case (purebp accepts any case; the outside libraries get upper)."""
    return draw(st.sampled_from([padding, padding.lower()])) if isinstance(padding, str) else padding


def padding_form(draw, n, max_pad):
    """"VALID", "SAME", an int p, or one (lo, hi) pair per dim (asymmetric, up to ``max_pad``)."""
    kind = draw(st.sampled_from(["VALID", "SAME", "int", "pairs"]))
    if kind == "int":
        return draw(st.integers(0, max_pad))
    if kind == "pairs":
        return tuple((draw(st.integers(0, max_pad)), draw(st.integers(0, max_pad))) for _ in range(n))
    return kind


def explicit_pairs(padding, n):
    """int p or pairs -> ((lo, hi), ...); strings stay strings (upper case)."""
    if isinstance(padding, str):
        return padding.upper()
    if isinstance(padding, int):
        return ((padding, padding),) * n
    return tuple(tuple(pair) for pair in padding)


def padding_kind(padding):
    return padding.upper() if isinstance(padding, str) else type(padding).__name__


def as_tuple(value, n):
    return (value,) * n if isinstance(value, int) else tuple(value)


def extent(size, dilation):
    return (size - 1) * dilation + 1


class ConvCase(NamedTuple):
    x_shape: tuple
    w_shape: tuple
    bias: bool
    kwargs: dict
    dtype: type
    scale: float
    seed: int


dtypes = st.sampled_from([np.float32, np.float64])
scales = st.sampled_from([1e-2, 1.0, 30.0, 1e3])  # standard deviations of the normal draws
seeds = st.integers(0, 2**32 - 1)


@st.composite
def conv_cases(draw, transpose=False):
    """A valid conv (or conv_transpose) configuration: the dilated kernel fits the padded input."""
    n = draw(st.integers(1, 3))
    if transpose:
        groups = 1
        c_in, c_out = draw(st.integers(1, MAX_CHANNELS)), draw(st.integers(1, MAX_CHANNELS))
    else:  # groups 1-4, depthwise (one input channel per group) included
        groups = draw(st.integers(1, MAX_CHANNELS))
        c_in = groups * draw(st.integers(1, MAX_CHANNELS // groups))
        c_out = groups * draw(st.integers(1, MAX_CHANNELS // groups))
    kernel = [draw(st.integers(1, 3)) for _ in range(n)]
    dilation = [draw(st.integers(1, 2)) for _ in range(n)]
    stride = [draw(st.integers(1, 3)) for _ in range(n)]
    window = [extent(k, d) for k, d in zip(kernel, dilation)]
    padding = padding_form(draw, n, max_pad=max(window) + 1)  # up to past the kernel span
    pairs = explicit_pairs(padding, n)
    spatial = []
    for i in range(n):
        if pairs == "SAME" or (transpose and pairs == "VALID"):
            smallest = 1  # these paddings always fit
        else:
            lo, hi = (0, 0) if pairs == "VALID" else pairs[i]
            # conv: in + lo + hi >= window; conv_transpose: (in - 1) stride + 1 + lo + hi >= window
            need = window[i] - lo - hi
            smallest = max(1, -(-(need - 1) // stride[i]) + 1 if transpose else need)
        spatial.append(draw(st.integers(smallest, MAX_SIZE)))
    kwargs = dict(stride=per_dim(draw, stride), padding=spelled(draw, padding), dilation=per_dim(draw, dilation))
    if not transpose:
        kwargs["groups"] = groups
    x_shape = (draw(st.integers(1, 2)), *spatial, c_in)
    w_shape = (*kernel, c_in // groups, c_out)
    return ConvCase(x_shape, w_shape, draw(st.booleans()), kwargs, draw(dtypes), draw(scales), draw(seeds))


def normal(rng, shape, scale, dtype):
    return jnp.asarray(scale * rng.standard_normal(shape), dtype)


def conv_operands(case):
    rng = np.random.default_rng(case.seed)
    x = normal(rng, case.x_shape, case.scale, case.dtype)
    w = normal(rng, case.w_shape, 1.0, case.dtype)
    b = normal(rng, case.w_shape[-1:], case.scale, case.dtype) if case.bias else None
    return x, w, b


def assert_close(got, want, dtype):
    """Elementwise within rtol of the value, or rtol of the output's largest magnitude."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    finite = np.isfinite(want)
    scale = np.max(np.abs(want[finite]), initial=0.0)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale)


# ---- conv, conv_transpose ---------------------------------------------------------------------

@budget(0.8)
@given(conv_cases())
def test_conv_property(case):
    n = len(case.x_shape) - 2
    with jax.enable_x64(case.dtype == np.float64):
        x, w, b = conv_operands(case)
        kw = case.kwargs
        event(f"{n}-d, padding {padding_kind(kw['padding'])}")
        event("depthwise" if kw["groups"] == case.x_shape[-1] > 1 else f"groups {kw['groups']}")
        want = lax.conv_general_dilated(
            x, w, as_tuple(kw["stride"], n), explicit_pairs(kw["padding"], n),
            rhs_dilation=as_tuple(kw["dilation"], n), dimension_numbers=LAYOUT[n],
            feature_group_count=kw["groups"])
        want = want if b is None else want + b
        got = purebp.conv(x, w, b, **kw)
        assert got.dtype == x.dtype
        assert_close(got, want, case.dtype)
        check_first_order(partial(purebp.conv, **kw), partial(reference.conv, **kw), x, w, b,
                          seed=case.seed)


@budget(0.8)
@given(conv_cases(transpose=True))
def test_conv_transpose_property(case):
    n = len(case.x_shape) - 2
    with jax.enable_x64(case.dtype == np.float64):
        x, w, b = conv_operands(case)
        kw = case.kwargs
        event(f"{n}-d, padding {padding_kind(kw['padding'])}")
        want = lax.conv_transpose(
            x, w, as_tuple(kw["stride"], n), explicit_pairs(kw["padding"], n),
            rhs_dilation=as_tuple(kw["dilation"], n), dimension_numbers=LAYOUT[n], transpose_kernel=False)
        want = want if b is None else want + b
        got = purebp.conv_transpose(x, w, b, **kw)
        assert got.dtype == x.dtype
        assert_close(got, want, case.dtype)
        check_first_order(partial(purebp.conv_transpose, **kw), partial(reference.conv_transpose, **kw),
                          x, w, b, seed=case.seed)


# ---- zero_pad ---------------------------------------------------------------------------------

@st.composite
def zero_pad_cases(draw):
    n = draw(st.integers(1, 3))
    shape = (draw(st.integers(1, 2)), *(draw(st.integers(1, MAX_SIZE)) for _ in range(n)),
             draw(st.integers(1, MAX_CHANNELS)))
    if draw(st.booleans()):
        padding = draw(st.integers(0, 4))
    else:
        padding = tuple((draw(st.integers(0, 4)), draw(st.integers(0, 4))) for _ in range(n))
    return shape, padding, draw(dtypes), draw(scales), draw(seeds)


@budget()
@given(zero_pad_cases())
def test_zero_pad_property(case):
    shape, padding, dtype, scale, seed = case
    with jax.enable_x64(dtype == np.float64):
        x = normal(np.random.default_rng(seed), shape, scale, dtype)
        want = jnp.pad(x, ((0, 0), *explicit_pairs(padding, len(shape) - 2), (0, 0)))
        got = purebp.zero_pad(x, padding)
        assert got.dtype == x.dtype
        np.testing.assert_array_equal(got, want)
        check_first_order(partial(purebp.zero_pad, padding=padding), partial(reference.zero_pad, padding=padding),
                          x, seed=seed)


# ---- max_pool, avg_pool -----------------------------------------------------------------------

class PoolCase(NamedTuple):
    x_shape: tuple
    window: object
    stride: object  # None: stride = window
    padding: object
    values: str  # "normal", "relu" (half zeros) or "integers" (small integers: many ties)
    dtype: type
    scale: float
    seed: int


@st.composite
def pool_cases(draw, values=("normal",)):
    """A valid pool: the window fits the padded input; strides overlap, tile or leave gaps."""
    n = draw(st.integers(1, 3))
    window = [draw(st.integers(1, 3)) for _ in range(n)]
    stride = None if draw(st.booleans()) else [draw(st.integers(1, 3)) for _ in range(n)]
    padding = padding_form(draw, n, max_pad=max(window) + 1)  # past the window: windows of padding alone
    pairs = explicit_pairs(padding, n)
    spatial = []
    for i in range(n):
        if pairs == "SAME":
            smallest = 1
        else:
            lo, hi = (0, 0) if pairs == "VALID" else pairs[i]
            smallest = max(1, window[i] - lo - hi)
        spatial.append(draw(st.integers(smallest, MAX_SIZE)))
    x_shape = (draw(st.integers(1, 2)), *spatial, draw(st.integers(1, MAX_CHANNELS)))
    return PoolCase(x_shape, per_dim(draw, window), None if stride is None else per_dim(draw, stride),
                    spelled(draw, padding), draw(st.sampled_from(values)), draw(dtypes), draw(scales),
                    draw(seeds))


def pool_events(case):
    n = len(case.x_shape) - 2
    event(f"{n}-d, padding {padding_kind(case.padding)}")
    window = as_tuple(case.window, n)
    stride = window if case.stride is None else as_tuple(case.stride, n)
    event("stride None" if case.stride is None else "overlapping" if any(s < w for s, w in zip(stride, window))
          else "stride >= window")


def pool_input(case):
    rng = np.random.default_rng(case.seed)
    if case.values == "integers":  # e.g. [0, 2, 2, -1, 0, 2]: ties in most windows
        return jnp.asarray(rng.integers(-2, 3, case.x_shape), case.dtype)
    x = normal(rng, case.x_shape, case.scale, case.dtype)
    return jnp.maximum(x, 0) if case.values == "relu" else x


def flax_arguments(case):
    """window, strides (explicit: stride None is the window) and padding spelled out for flax."""
    n = len(case.x_shape) - 2
    window = as_tuple(case.window, n)
    return window, window if case.stride is None else as_tuple(case.stride, n), explicit_pairs(case.padding, n)


@budget()
@given(pool_cases(values=("normal", "relu", "integers")))
def test_max_pool_property(case):
    event(f"values {case.values}")
    pool_events(case)
    with jax.enable_x64(case.dtype == np.float64):
        x = pool_input(case)
        window, strides, padding = flax_arguments(case)
        got = purebp.max_pool(x, case.window, case.stride, case.padding)
        assert got.dtype == x.dtype
        np.testing.assert_array_equal(got, flax.linen.max_pool(x, window, strides=strides, padding=padding))
        # ties: each window's cotangent to its first maximum, as jax.grad of lax.reduce_window
        check_first_order(partial(purebp.max_pool, window=case.window, stride=case.stride, padding=case.padding),
                          partial(reference.max_pool, window=case.window, stride=case.stride,
                                  padding=case.padding), x, seed=case.seed)


@budget()
@given(pool_cases(), st.booleans())
def test_avg_pool_property(case, count_include_pad):
    pool_events(case)
    with jax.enable_x64(case.dtype == np.float64):
        x = pool_input(case)
        window, strides, padding = flax_arguments(case)
        got = purebp.avg_pool(x, case.window, case.stride, case.padding, count_include_pad)
        assert got.dtype == x.dtype
        want = flax.linen.avg_pool(x, window, strides=strides, padding=padding, count_include_pad=count_include_pad)
        assert_close(got, want, case.dtype)  # NaN (0 / 0: a window of padding alone) compares equal
        kw = dict(window=case.window, stride=case.stride, padding=case.padding, count_include_pad=count_include_pad)
        check_first_order(partial(purebp.avg_pool, **kw), partial(reference.avg_pool, **kw), x, seed=case.seed)


# ---- bad configurations: ValueError at trace time, naming the argument -------------------------

def raises_at_trace_time(fn, *shapes, name):
    """``fn`` on abstract arguments (nothing runs) raises a ValueError whose message names ``name``."""
    with pytest.raises(ValueError, match=re.escape(f"`{name}`")):
        jax.eval_shape(fn, *(jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes))


def replace(values, n, i, value):
    """``values`` (an int or one per dim) with dim ``i`` set to ``value``, as a tuple."""
    values = list(as_tuple(values, n))
    values[i] = value
    return tuple(values)


def bad_padding_string(draw):
    return draw(st.sampled_from(["FULL", "same_lower", "CAUSAL", "", "VALID "]))


@st.composite
def bad_conv_cases(draw, transpose=False):
    """A valid conv configuration broken in one drawn way; returns (x shape, w shape, kwargs, name)."""
    case = draw(conv_cases(transpose=transpose))
    x_shape, w_shape, kw = case.x_shape, case.w_shape, dict(case.kwargs)
    n = len(x_shape) - 2
    i = draw(st.integers(0, n - 1))
    fault = draw(st.sampled_from(["stride", "dilation", "kernel too large", "channels", "padding string"]))
    if fault in ("stride", "dilation"):
        kw[fault] = replace(kw[fault], n, i, draw(st.integers(-1, 0)))
        return x_shape, w_shape, kw, fault
    if fault == "channels":  # w's input channels do not match x's (per group)
        wrong = draw(st.integers(1, MAX_CHANNELS + 1).filter(lambda c: c != w_shape[-2]))
        return x_shape, (*w_shape[:-2], wrong, w_shape[-1]), kw, "w"
    if fault == "padding string":
        kw["padding"] = bad_padding_string(draw)
        return x_shape, w_shape, kw, "padding"
    # the dilated kernel one position larger than the padded (for conv_transpose: spread) input
    pairs = explicit_pairs(kw["padding"], n)
    pairs = ((0, 0),) * n if isinstance(pairs, str) else pairs
    kw["padding"] = pairs
    lo, hi = pairs[i]
    stride, dilation = as_tuple(kw["stride"], n)[i], as_tuple(kw["dilation"], n)[i]
    size = (x_shape[1 + i] - 1) * stride + 1 if transpose else x_shape[1 + i]
    needed = size + lo + hi + 1  # kernel extent that no longer fits
    taps = -(-(needed - 1) // dilation) + 1  # smallest k with (k - 1) d + 1 >= needed
    return x_shape, (*w_shape[:i], taps, *w_shape[i + 1:]), kw, "w"


@budget()
@given(bad_conv_cases())
def test_conv_bad_configuration_raises(case):
    x_shape, w_shape, kw, name = case
    raises_at_trace_time(partial(purebp.conv, **kw), x_shape, w_shape, name=name)


@budget()
@given(bad_conv_cases(transpose=True))
def test_conv_transpose_bad_configuration_raises(case):
    x_shape, w_shape, kw, name = case
    raises_at_trace_time(partial(purebp.conv_transpose, **kw), x_shape, w_shape, name=name)


@budget()
@given(zero_pad_cases(), st.data())
def test_zero_pad_bad_configuration_raises(case, data):
    shape, padding, *_ = case
    n = len(shape) - 2
    fault = data.draw(st.sampled_from(["negative", "string", "count"]))
    pairs = list(explicit_pairs(padding, n))
    if fault == "negative":
        i = data.draw(st.integers(0, n - 1))
        lo, hi = pairs[i]
        pairs[i] = data.draw(st.sampled_from([(-1 - lo, hi), (lo, -1 - hi)]))
        padding = tuple(pairs) if data.draw(st.booleans()) else -1 - lo
    elif fault == "string":  # no string has a meaning without a window, "SAME" and "VALID" included
        padding = data.draw(st.sampled_from(["SAME", "VALID", "same", "FULL"]))
    else:  # one (lo, hi) pair too many or too few
        padding = tuple(pairs[:-1]) if data.draw(st.booleans()) else (*pairs, (0, 0))
    raises_at_trace_time(partial(purebp.zero_pad, padding=padding), shape, name="padding")


@st.composite
def bad_pool_cases(draw):
    """A valid pool configuration broken in one drawn way; returns (x shape, arguments, name)."""
    case = draw(pool_cases())
    n = len(case.x_shape) - 2
    window, stride, padding = case.window, case.stride, case.padding
    i = draw(st.integers(0, n - 1))
    fault = draw(st.sampled_from(["stride", "window", "window too large", "padding string"]))
    if fault == "stride":
        stride = replace(window if stride is None else stride, n, i, draw(st.integers(-1, 0)))
    elif fault == "window":
        window = replace(window, n, i, draw(st.integers(-1, 0)))
    elif fault == "padding string":
        padding, fault = bad_padding_string(draw), "padding"
    else:  # one position larger than the padded input
        pairs = explicit_pairs(padding, n)
        padding = ((0, 0),) * n if isinstance(pairs, str) else pairs
        lo, hi = padding[i]
        window = replace(window, n, i, case.x_shape[1 + i] + lo + hi + draw(st.integers(1, 2)))
        stride = as_tuple(case.window, n) if stride is None else stride  # stride stays what it was
        fault = "window"
    return case.x_shape, (window, stride, padding), fault


@budget()
@given(bad_pool_cases())
def test_max_pool_bad_configuration_raises(case):
    x_shape, (window, stride, padding), name = case
    raises_at_trace_time(partial(purebp.max_pool, window=window, stride=stride, padding=padding), x_shape,
                         name=name)


@budget()
@given(bad_pool_cases(), st.booleans())
def test_avg_pool_bad_configuration_raises(case, count_include_pad):
    x_shape, (window, stride, padding), name = case
    raises_at_trace_time(partial(purebp.avg_pool, window=window, stride=stride, padding=padding,
                                 count_include_pad=count_include_pad), x_shape, name=name)
